"""A learner rank that dies (or raises) fails the run at once, naming the rank and where to resume.

FSDP2 ranks meet in collectives: when one rank's process is gone, the others block in their next
all-gather until train.dist_init_timeout_s (300 s by default), and a plain ``ray.get`` of every
rank's result waits as long. The group therefore waits on its ranks with :func:`gather_ranks`,
which returns as soon as any one of them has failed, stops the survivors (they could only hang
or time out) and raises :class:`LearnerFailed`, whose one line says which rank failed and which
checkpoint ``rl-div train CONFIG --resume`` continues from.

Each rank's call has two returns (:func:`call_ranked`): its value, and a tiny "done" marker that
the driver waits on and reads, so failures are seen without fetching a value into the driver
(rank 0's get_weights is the whole model).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rl_div.run.stops import RunStopped


class StartupError(RuntimeError):
    """An actor did not start (crashed or ran past cluster.startup_timeout_s)."""


class LearnerFailed(RunStopped):
    """A learner rank died or failed; the other ranks were stopped. str() is the one line to show."""


class RankFailed(Exception):
    """gather_ranks: rank `rank`'s call failed with `error` (a Ray error: actor died, task raised)."""

    def __init__(self, rank: int, error: BaseException) -> None:
        super().__init__(f"rank {rank}: {error}")
        self.rank, self.error = rank, error


def call_ranked(actor: Any, method: str | Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, None]:
    """Run on a rank's actor through ``__ray_call__`` with num_returns=2: the value of its method
    named `method` (or of ``method(actor, ...)``, a function) and a "done" marker (None) for
    :func:`gather_ranks`."""
    value = getattr(actor, method)(*args, **kwargs) if isinstance(method, str) else method(actor, *args, **kwargs)
    return value, None


# After a rank raised, how long the others' results may take to show that one of them had died:
# when a rank's process is gone, a survivor's collective can fail (connection closed) before Ray
# reports the death, and the dead rank, not the survivor's error, is the cause to name.
DEATH_GRACE_S = 5.0


def gather_ranks(refs: list[Any], timeout_s: float | None = None) -> list[Any]:
    """The values of refs (refs[r]: rank r's call) once every one has finished. Raises RankFailed
    as soon as one failed, whatever the others are doing (a rank whose actor died is named before
    one that raised), and TimeoutError naming the ranks still running after timeout_s (None: no
    limit)."""
    import ray

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            raise TimeoutError(f"ranks {', '.join(str(refs.index(p)) for p in pending)} still running")
        failed = _failures(refs, ready)
        if failed:
            if not isinstance(failed[0].error, ray.exceptions.RayActorError) and pending:
                more, _ = ray.wait(pending, num_returns=len(pending), timeout=DEATH_GRACE_S)
                failed += _failures(refs, more)
            failed.sort(key=lambda f: not isinstance(f.error, ray.exceptions.RayActorError))
            raise failed[0] from failed[0].error
    return list(ray.get(refs))


def _failures(refs: list[Any], ready: list[Any]) -> list[RankFailed]:
    """RankFailed of every ready ref whose call failed."""
    import ray

    failed = []
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayError as err:
            failed.append(RankFailed(refs.index(ref), err))
    return failed


def where_to_resume(output_dir: str | Path) -> str:
    """'<latest checkpoint> (step N)', or 'none yet' (rl_div.run.checkpoint's resume logic)."""
    from rl_div.run.checkpoint import latest_checkpoint, load_trainer_state

    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is None:
        return "none yet"
    return f"{checkpoint} (step {load_trainer_state(checkpoint)['step']})"


def failure_line(failed: RankFailed, method: str, output_dir: str | Path) -> str:
    """The one line of LearnerFailed: which rank, what happened, where the run resumes."""
    import ray

    what = "died" if isinstance(failed.error, ray.exceptions.RayActorError) else "failed"
    # a task's error: its exception; a dead actor: Ray's first line ("The actor died unexpectedly ...")
    error = failed.error.cause if isinstance(failed.error, ray.exceptions.RayTaskError) else failed.error
    lines = str(error).strip().splitlines()
    detail = lines[0][:200] if lines else type(failed.error).__name__
    return (f"learner rank {failed.rank} {what} in {method}() ({detail}); the other ranks were stopped. "
            f"Last checkpoint: {where_to_resume(output_dir)}; rerun `rl-div train CONFIG --resume` to continue "
            "from it")


def log_to_run_file(logger: logging.Logger, message: str) -> None:
    """An ERROR record in the run's log file(s) (train.log) only, not on the console, where the CLI
    prints the failure's one line itself."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, (), None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def stop_ranks(actors: list[Any]) -> None:
    """Kill every rank's actor (survivors would block in a collective with the dead one)."""
    import ray

    for actor in actors:
        with contextlib.suppress(Exception):  # the dead one is gone already
            ray.kill(actor)
