"""Issue 29 end to end, with real Ray actors and the tiny bootstrapped model: a torn latest checkpoint
falls back on --resume, a full disk while checkpointing is one line (a real 4 MiB tmpfs, where the
machine lets this process mount one)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from rl_div.config import Config, load_config
from rl_div.run.checkpoint import latest_checkpoint
from rl_div.run.manifest import checkpoint_problems
from rl_div.run.stops import DiskFull
from rl_div.run.tracking import read_metrics
from rl_div.train.loop import Trainer, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_model(bootstrapped_prime_gap: Path) -> Iterator[str]:
    yield str(bootstrapped_prime_gap)
    if ray.is_initialized():
        ray.shutdown()


def make_cfg(out: Path, base_model: str, *overrides: str) -> Config:
    return load_config(None, [
        f"model.path={base_model}", f"run.output_dir={out}", "train.steps=2", "rollout.prompts_per_step=2",
        "rollout.group_size=2", "eval.every=0", "eval.at_start=false", "eval.at_end=false",
        "eval.embedding_metrics=false", "data.num_eval_prompts=2", "tracking.progress=false",
        "tracking.tensorboard=false", "cluster.num_cpus=2", "checkpoint.every=1", "checkpoint.keep=3", *overrides,
    ])


@pytest.mark.parametrize("lost", ["learner_state.pt"])  # every file: tests/test_checkpoint_manifest.py
def test_resume_after_a_file_of_the_latest_checkpoint_was_lost(tmp_path: Path, base_model: str, lost: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    out = train(make_cfg(tmp_path / "run", base_model))
    (out / "checkpoints" / "step_000002" / lost).unlink()
    with caplog.at_level(logging.WARNING, logger="rl_div"):
        train(make_cfg(tmp_path / "run", base_model, "train.steps=3"), resume=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "--resume" in r.getMessage()]
    assert warnings == [f"--resume: step_000002 is incomplete ({lost} missing); resuming from step_000001"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", kind="train")] == [1, 2, 3]
    assert latest_checkpoint(out) == out / "checkpoints" / "step_000003"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (skips where this process may not mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs privileges this process lacks")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_checkpointing_is_one_line(small_disk: Path, base_model: str) -> None:
    trainer = Trainer(make_cfg(small_disk / "run", base_model))
    try:
        trainer.train_step()
        first = trainer.save_checkpoint()
        free = shutil.disk_usage(small_disk).free
        (small_disk / "filler").write_bytes(b"\0" * (free - 64 * 1024))  # room for a metrics line, not a model
        trainer.train_step()
        with pytest.raises(DiskFull) as caught:
            trainer.save_checkpoint()
    finally:
        trainer.close()
    assert str(caught.value) == (f"no space left on {small_disk} while writing checkpoint step 2; the previous "
                                 f"checkpoint step 1 ({first}) is intact; free space and rerun with --resume")
    assert sorted(p.name for p in first.parent.iterdir()) == ["latest", "step_000001"]  # no step_000002.tmp
    assert checkpoint_problems(first) == []
    assert json.loads((first / "trainer_state.json").read_text())["step"] == 1


def test_a_prompt_longer_than_the_context_is_a_counted_skip(tmp_path: Path, base_model: str) -> None:
    """Issue 29 item 6: a 1 MB prompt made the rollout actor try to allocate its attention (1 TB)."""
    data = tmp_path / "prompts.jsonl"
    rows = [{"question": f"N={n}", "answer": "2"} for n in range(10, 18)]
    rows.insert(5, {"question": "N=" + "1" * 1_000_000, "answer": "2"})  # past the 2 held-out rows
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = train(make_cfg(tmp_path / "run", base_model, "data.source=jsonl", f"data.path={data}",
                         "reward.rewards=[{name: math_verify}]", "train.steps=1"))
    assert [r["data/skipped_rows"] for r in read_metrics(out / "metrics.jsonl", kind="train")] == [1]
    assert "skipped 1 of 7 whose templated prompt has over" in (out / "train.log").read_text()


def test_a_learning_rate_that_destroys_the_policy_stops_the_run(tmp_path: Path, base_model: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 29 item 7: train.lr=1e30 exited 0 with the model ruined and nothing counted."""
    from rl_div.cli import main
    from rl_div.config import save_config

    out = tmp_path / "run"
    # 4 prompts x 8 samples: a step with some reward signal (a zero-signal step takes no optimizer step)
    save_config(make_cfg(out, base_model, "train.lr=1e30", "train.steps=3", "rollout.prompts_per_step=4",
                         "rollout.group_size=8"), tmp_path / "run.yaml")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "run.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    match = re.fullmatch(r"rl-div: the update of step (\d) blew up the policy \(its parameter norm .+ in one optimizer "
                         r"step\); stopped without saving it\. Last good checkpoint: (.+)\. Likely cause: "
                         r"train\.lr=1e\+30 is far too large", err[-1])
    assert match is not None, err[-3:]
    step = int(match.group(1))
    saved = sorted(p.name for p in (out / "checkpoints").glob("step_*")) if (out / "checkpoints").exists() else []
    assert saved == [f"step_{s:06d}" for s in range(1, step)]  # every step before it, not the blown-up one
    assert match.group(2) == ("none yet" if step == 1 else f"{out / 'checkpoints' / saved[-1]} (step {step - 1})")
    assert not any(line.startswith("Traceback") for line in err)
