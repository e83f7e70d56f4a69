"""Issue 30 item 7: a long stage shows signs of life. GSM8K's evaluation on a loaded machine printed
its stage line and then nothing for 10 minutes (until rollout.generate_timeout_s fired); an announced
stage now logs '<step>: <stage> still running (N s)' every heartbeat while it runs, and stops with it."""

from __future__ import annotations

import logging
import time

import pytest

from rl_div.train.console import StageTimer


def heartbeats(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]


def wait_for(condition, timeout_s: float = 30.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_an_announced_stage_logs_while_it_runs_and_stops_after(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rl_div")
    timer = StageTimer("evaluation at step 0", announce=True, heartbeat_s=0.05)
    with timer("eval_rollout"):
        assert wait_for(lambda: len(heartbeats(caplog)) >= 2)  # the stage is still inside its block
    seen = len(heartbeats(caplog))
    time.sleep(0.3)  # six heartbeat periods after the stage ended
    assert len(heartbeats(caplog)) == seen
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "evaluation at step 0: eval_rollout ..."
    assert all(h.startswith("evaluation at step 0: eval_rollout still running (") and h.endswith(" s)")
               for h in heartbeats(caplog))
    assert "time/eval_rollout" in timer.durations


def test_a_quiet_step_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rl_div")
    timer = StageTimer("step 2/20", announce=False, heartbeat_s=0.01)
    with timer("rollout"):
        time.sleep(0.1)
    assert caplog.records == []
