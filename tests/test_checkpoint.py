"""Checkpoints are written atomically: a crash mid-write leaves the last good one in place."""

from __future__ import annotations

from pathlib import Path

from rl_div.checkpoint import commit_checkpoint, latest_checkpoint, new_checkpoint_dir
from rl_div.tracking import read_metrics


def make(out: Path, step: int, keep: int = 2) -> Path:
    tmp, final = new_checkpoint_dir(out, step)
    (tmp / "payload").write_text(str(step))
    return commit_checkpoint(tmp, final, keep)


def test_latest_and_pruning(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        make(tmp_path, step)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_000002", "step_000003"]
    assert latest_checkpoint(tmp_path) == root / "step_000003"


def test_crash_mid_write_keeps_last_good(tmp_path: Path) -> None:
    make(tmp_path, 1)
    tmp, _ = new_checkpoint_dir(tmp_path, 2)  # a crash here: tmp dir half written, never committed
    (tmp / "payload").write_text("partial")
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and (latest / "payload").read_text() == "1"
    # the next attempt at the same step clears the leftover and succeeds
    assert (make(tmp_path, 2) / "payload").read_text() == "2"


def test_torn_metrics_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "kind": "train", "x": 1}\n{"step": 2, "kind": "tr')
    assert read_metrics(path) == [{"step": 1, "kind": "train", "x": 1}]
