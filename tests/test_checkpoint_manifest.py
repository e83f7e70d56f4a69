"""Torn checkpoints fall back (issue 29 item 4): each checkpoint carries a manifest of its files and
their sizes, written last; --resume takes the newest complete one with one warning line naming what
the newer one lacks, and refuses (one line) when none is complete."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rl_div.config import ConfigError
from rl_div.run.checkpoint import (
    claim_output_dir,
    commit_checkpoint,
    latest_checkpoint,
    new_checkpoint_dir,
    resume_checkpoint,
)

# the files of a single learner's checkpoint (names as Learner.save and the trainer write them)
FILES = {"policy/model.safetensors": 4096, "policy/config.json": 300, "learner_state.pt": 2048,
         "trainer_state.json": 0}


def make(out: Path, step: int) -> Path:
    tmp, final = new_checkpoint_dir(out, step)
    for name, size in FILES.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(bytes([step]) * size)
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
    return commit_checkpoint(tmp, final, keep=5)


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_deleted_file_of_the_latest_checkpoint_falls_back_with_one_warning(
        tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    make(tmp_path, 2)
    torn = make(tmp_path, 4)
    (torn / name).unlink()
    with caplog.at_level(logging.WARNING, logger="rl_div"):
        assert resume_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000002"
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.getMessage() == f"--resume: step_000004 is incomplete ({name} missing); resuming from step_000002"
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000002"  # rl-div eval RUN agrees


def test_a_cut_file_and_a_missing_manifest_are_incomplete(tmp_path: Path) -> None:
    make(tmp_path, 1)
    cut = make(tmp_path, 2)
    (cut / "learner_state.pt").write_bytes(b"x" * 10)
    no_manifest = make(tmp_path, 3)
    (no_manifest / "manifest.json").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000001"
    assert latest_checkpoint(tmp_path / "elsewhere") is None


def test_every_checkpoint_torn_is_refused_before_the_run_starts(tmp_path: Path) -> None:
    for step in (1, 2):
        (make(tmp_path, step) / "trainer_state.json").unlink()
    with pytest.raises(ConfigError, match=r"no complete checkpoint in .*step_000002 is incomplete "
                                          r"\(trainer_state.json missing\); step_000001 is incomplete"):
        claim_output_dir(tmp_path, resume=True, overwrite=False)
    with pytest.raises(ConfigError, match="already holds a run"):  # still a run: no silent fresh start
        claim_output_dir(tmp_path, resume=False, overwrite=False)


# ---- a full disk while writing (issue 29 item 5) -------------------------------------------------
def fill_then_fail(error: OSError):
    def fill(tmp: Path) -> None:
        (tmp / "trainer_state.json").write_text('{"step": 4}')
        (tmp / "policy").mkdir()
        (tmp / "policy" / "model.safetensors").write_bytes(b"x" * 100)
        raise error
    return fill


def test_no_space_while_writing_is_one_line_and_leaves_no_temporary_folder(tmp_path: Path) -> None:
    import errno

    from rl_div.run.checkpoint import write_checkpoint
    from rl_div.run.stops import DiskFull, RunStopped

    make(tmp_path, 2)
    with pytest.raises(DiskFull) as caught:
        write_checkpoint(tmp_path, 4, fill_then_fail(OSError(errno.ENOSPC, "No space left on device")), keep=5)
    line = str(caught.value)
    assert "\n" not in line and isinstance(caught.value, RunStopped)  # the CLI prints it alone and exits 1
    assert line.startswith("no space left on /") and "while writing checkpoint step 4; the previous checkpoint " \
        f"step {2} ({tmp_path / 'checkpoints' / 'step_000002'}) is intact" in line
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000002"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000002"


def test_another_write_error_is_not_called_a_full_disk(tmp_path: Path) -> None:
    import errno

    from rl_div.run.checkpoint import write_checkpoint

    with pytest.raises(PermissionError):
        write_checkpoint(tmp_path, 1, fill_then_fail(PermissionError(errno.EACCES, "Permission denied")), keep=5)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == []
