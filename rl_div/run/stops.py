"""Why a run stopped early, in one line: the errors ``rl-div`` prints without a traceback and exits 1
on (a learner rank that failed, a full disk while checkpointing, a blown-up update), each naming the
checkpoint ``--resume`` continues from."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

# A write that fails while the disk has less than this free is taken as out of space: torch.save's
# error on a full disk ("unexpected pos ...") never says so.
NEARLY_FULL_BYTES = 64 * 2**20


class RunStopped(RuntimeError):
    """The run cannot go on; str() is the one line to show (the CLI exits with status 1)."""


class DiskFull(RunStopped):
    """No space left while writing a checkpoint; the temporary folder was removed."""


def out_of_space(err: BaseException, where: Path) -> bool:
    """Whether ``err`` (or an error it wraps: __cause__, __context__, a Ray task error's cause) is a
    full disk: ENOSPC, its message, or any failure while ``where``'s file system is nearly full."""
    todo: list[BaseException | None] = [err]
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    try:
        return shutil.disk_usage(where).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def mount_point(path: Path) -> Path:
    """The mount point holding ``path`` (what a user frees space on)."""
    path = path.resolve()
    while not path.is_mount() and path != path.parent:
        path = path.parent
    return path
