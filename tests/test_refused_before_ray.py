"""A run that cannot start is refused before Ray starts and leaves nothing behind (issue 29 item 8):
a placement this machine cannot hold, and an output folder this process cannot write."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy
from rl_div.run.checkpoint import claim_output_dir
from rl_div.run.writers import OutputDirError

REPO = Path(__file__).resolve().parent.parent


def test_a_placement_this_machine_cannot_hold_is_refused_before_ray(tmp_path: Path) -> None:
    tokenizer = build_char_tokenizer("0123456789 N=")
    model = save_policy(make_tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                        tokenizer, tmp_path / "model")
    out = tmp_path / "run"
    # a fresh process: a Ray already running in this one would be used as it is
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "rl_div.cli", "train", str(REPO / "configs/demo.yaml"),
                           f"model.path={model}", f"run.output_dir={out}", "cluster.num_cpus=1",
                           "train.num_cpus=2", "tracking.progress=false"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rl-div: this machine cannot hold the run: the run needs 3 CPU "
                                                   "(the cluster has 1)"), lines
    assert lines[0].endswith("(Ray not started; a local Ray would have 1 CPU)")
    assert not out.exists()  # no config.yaml, no train.log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder this process cannot write into: a read-only tmpfs where mounting is allowed, else
    permission bits (which do not stop root: then skipped)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root ignores permission bits and may not mount a read-only tmpfs here")
        folder.chmod(0o555)
    yield folder
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        folder.chmod(0o755)


@pytest.mark.parametrize("inside", ["", "new/run"])
def test_a_read_only_output_dir_is_refused_at_the_claim(read_only_dir: Path, inside: str) -> None:
    """claim_output_dir runs in the CLI before Ray starts (and again in the Trainer)."""
    out = read_only_dir / inside if inside else read_only_dir
    with pytest.raises(OutputDirError, match=f"run.output_dir {out} is not writable by the driver"):
        claim_output_dir(out, resume=False, overwrite=False)
    assert list(read_only_dir.iterdir()) == []
