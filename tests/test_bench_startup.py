"""The startup bench section reads its phases from a run's own train.log (timings are reported, never asserted)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from rl_div.bench.startup import log_times


def test_phases_come_from_the_log_lines_timestamps(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("2026-12-07 20:00:01,250 INFO connected\n"
                   "a traceback line without a stamp\n"
                   "2026-12-07 20:00:03,500 INFO learner started after 2.2 s\n"
                   "2026-12-07 20:00:04,000 INFO rollout worker 0 started after 2.7 s\n")
    first, actors = log_times(log)

    def stamp(text: str) -> float:
        return dt.datetime(2026, 12, 7, 20, 0, int(text[:2]), int(text[3:]) * 1000).timestamp()

    assert first == stamp("01.250")
    assert actors == {"learner": stamp("03.500"), "rollout worker 0": stamp("04.000")}
