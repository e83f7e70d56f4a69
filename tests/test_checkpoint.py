"""Checkpoints are written atomically: a crash mid-write leaves the last good one in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl_div.run.checkpoint import commit_checkpoint, latest_checkpoint, new_checkpoint_dir
from rl_div.run.tracking import read_metrics


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


def test_resume_trim_drops_rows_past_the_checkpoint_and_a_torn_line(tmp_path: Path) -> None:
    """Issue 8 item 12: a torn last line and the rows past the checkpoint made a resumed run's
    metrics.jsonl unparseable and log steps twice."""
    from rl_div.run.checkpoint import trim_to_step

    rows = [{"step": 0, "kind": "eval"}, {"step": 1, "kind": "train"}, {"step": 2, "kind": "train"},
            {"step": 2, "kind": "eval"}, {"step": 3, "kind": "train"}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "kind": "tr'
    (tmp_path / "metrics.jsonl").write_text(text)
    (tmp_path / "eval").mkdir()
    for step in (0, 2, 4):
        (tmp_path / "eval" / f"step_{step:06d}.json").write_text("{}")
    assert trim_to_step(tmp_path, 2) == 2  # step 3 and the torn step-4 line
    assert read_metrics(tmp_path / "metrics.jsonl") == rows[:4]
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step_000000.json", "step_000002.json"]
    # what the resumed run appends next reads back as one clean run
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "kind": "train"}) + "\n")
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2, 2, 3]
    assert trim_to_step(tmp_path, -1) == 5 and (tmp_path / "metrics.jsonl").read_text() == ""


def test_a_new_run_into_an_existing_run_folder_is_refused_without_resume_or_overwrite(tmp_path: Path) -> None:
    """Issue 13 item 3: a second run appended a second steps 0..N to the first one's metrics.jsonl."""
    from rl_div.config import ConfigError
    from rl_div.run.checkpoint import claim_output_dir, existing_run

    claim_output_dir(tmp_path / "fresh", resume=False, overwrite=False)  # nothing there: fine
    (tmp_path / "config.yaml").write_text("x: 1")
    (tmp_path / "train.log").write_text("a failed start")
    assert existing_run(tmp_path) == []  # a start that never logged a step is not a run
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    make(tmp_path, 1)
    assert existing_run(tmp_path) == ["metrics.jsonl", "checkpoints/"]
    with pytest.raises(ConfigError, match="already holds a run .*--resume .*--overwrite"):
        claim_output_dir(tmp_path, resume=False, overwrite=False)
    claim_output_dir(tmp_path, resume=True, overwrite=False)  # resuming keeps everything
    assert (tmp_path / "metrics.jsonl").exists()
    claim_output_dir(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


class _RunsCodeOnLoad:
    """Unpickling this calls open(path, "w"): a stand-in for any code a foreign pickle could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_learner_state_loads_without_running_code(tmp_path: Path) -> None:
    """Issue 8 item 14: learner_state.pt was loaded with weights_only=False, so a checkpoint someone
    else wrote could run code. The real state (AdamW after a step, scheduler, RNGs) still loads."""
    import pickle

    import torch

    from rl_div.config import load_config
    from rl_div.learner.single import Learner
    from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy

    tokenizer = build_char_tokenizer("0123456789 ")
    save_policy(make_tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                tokenizer, tmp_path / "base")
    learner = Learner(load_config(None, ["train.warmup_steps=3"]), str(tmp_path / "base"))
    for p in learner.model.parameters():
        p.grad = torch.ones_like(p)
    learner.optimizer.step()
    learner.scheduler.step()
    learner.version = 1
    ckpt = tmp_path / "ckpt"
    learner.save(str(ckpt))
    other = Learner(load_config(None, ["train.warmup_steps=3"]), str(tmp_path / "base"))
    other.load(str(ckpt))
    assert other.version == 1 and other.scheduler.get_last_lr() == learner.scheduler.get_last_lr()
    moments = [s["exp_avg"] for s in other.optimizer.state.values()]
    assert len(moments) == len(list(learner.model.parameters())) and all(torch.all(m == 0.1) for m in moments)

    marker = tmp_path / "code_ran"
    state = torch.load(ckpt / "learner_state.pt", weights_only=True)
    state["optimizer"] = _RunsCodeOnLoad(marker)
    torch.save(state, ckpt / "learner_state.pt")
    with pytest.raises(pickle.UnpicklingError):
        other.load(str(ckpt))
    assert not marker.exists()
