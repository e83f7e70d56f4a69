"""What a run shows while it trains: stage timing with a line per stage on slow steps, the run's log
file, and the console (log lines through the progress bar, a bar labelled with the run and its method)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rl_div.config import Config

log = logging.getLogger("rl_div")


class StageTimer:
    """``with timer("rollout"):`` records wall seconds as ``time/rollout`` (summed over a step's rounds).

    A sign of life on long steps: with ``announce`` (the trainer sets it when the previous step took
    longer than SLOW_STEP_S, and for evaluations) each stage's start is logged, and while it runs a line
    every ``heartbeat_s`` (STAGE_HEARTBEAT_S); a stage that took longer than SLOW_STEP_S logs its
    duration when it ends. ``label`` names the step in those lines."""

    def __init__(self, label: str = "", announce: bool = False, heartbeat_s: float | None = None) -> None:
        self.durations: dict[str, float] = {}
        self.label, self.announce = label, announce
        self.heartbeat_s = STAGE_HEARTBEAT_S if heartbeat_s is None else heartbeat_s

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.announce:
            log.info("%s: %s ...", self.label, stage)
        start = time.perf_counter()
        done = threading.Event()
        if self.announce:  # a stage of many minutes (GSM8K's generation under load) still shows it is alive
            threading.Thread(target=self._heartbeat, args=(stage, start, done), daemon=True).start()
        try:
            yield
        finally:
            done.set()
            seconds = time.perf_counter() - start
            key = f"time/{stage}"
            self.durations[key] = self.durations.get(key, 0.0) + seconds
            if seconds > SLOW_STEP_S:
                log.info("%s: %s took %.1f s", self.label, stage, seconds)

    def _heartbeat(self, stage: str, start: float, done: threading.Event) -> None:
        """'<label>: <stage> still running (N s)' every heartbeat_s until the stage ends."""
        while not done.wait(self.heartbeat_s):
            log.info("%s: %s still running (%.0f s)", self.label, stage, time.perf_counter() - start)


SLOW_STEP_S = 5.0  # a step or stage longer than this gets a console line per stage
STAGE_HEARTBEAT_S = 60.0  # an announced stage still running logs a line this often


def setup_logging(path: Path) -> None:
    logger = logging.getLogger("rl_div")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve()
               for h in logger.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)


def close_logging(path: Path) -> None:
    """Detach this run's log file so a later run in the same process does not write into it."""
    logger = logging.getLogger("rl_div")
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path.resolve():
            logger.removeHandler(handler)
            handler.close()


def progress_label(cfg: Config) -> str:
    """The progress bar's label: the run's name and its method, e.g. 'demo (grpo+steer)', so a run
    whose method came from an override (``algo=steer`` on the demo config) says what it is."""
    algo = cfg.algo
    parts = [algo.advantage] + [p for p in (algo.token_weight,) if p != "none"]
    parts += [algo.loss] if algo.loss != "ppo_clip" else []
    method = "+".join(parts)
    return cfg.run.name if method == cfg.run.name else f"{cfg.run.name} ({method})"


@contextmanager
def console_logging() -> Iterator[None]:
    """Log lines printed through the progress bar (tqdm's logging redirection), not across it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.root]):
        yield
