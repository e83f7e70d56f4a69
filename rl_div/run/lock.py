"""One run per output folder (issue 29 item 9): a run holds ``run.output_dir/.rl_div.lock`` (its host,
pid and start time, created atomically with O_EXCL) from the moment it claims the folder until it
closes. A second run into the folder is refused in one line naming the holder; a lock whose process
is gone (same host, pid not alive) is stale and taken over. A lock from another host cannot be
checked from here: it is honoured until deleted by hand.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from rl_div.config import ConfigError

LOCK_NAME = ".rl_div.lock"


class OutputDirLocked(ConfigError):
    """Another live run holds this output folder."""


def lock_path(output_dir: str | Path) -> Path:
    return Path(output_dir).expanduser().absolute() / LOCK_NAME


def read_holder(output_dir: str | Path) -> dict[str, Any] | None:
    """The lock's holder ({host, pid, started}), or None when there is no readable lock."""
    try:
        holder = json.loads(lock_path(output_dir).read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def is_mine(holder: dict[str, Any]) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


def is_alive(holder: dict[str, Any]) -> bool:
    """Whether the holding process may still run: False only when it is on this host and its pid is gone."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:  # garbled: nobody can hold it
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def check_unlocked(output_dir: str | Path) -> None:
    """OutputDirLocked unless the folder is free, stale-locked, or locked by this process."""
    holder = read_holder(output_dir)
    if holder is not None and not is_mine(holder) and is_alive(holder):
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
        raise OutputDirLocked(f"run.output_dir {lock_path(output_dir).parent} is in use by another run (pid "
                              f"{holder.get('pid')} on {holder.get('host')}, started {started}): wait for it to end or "
                              f"choose another folder; if that run is gone, delete {lock_path(output_dir)}")


def acquire(output_dir: str | Path) -> None:
    """Take the folder's lock (it must exist); OutputDirLocked when a live run holds it."""
    path = lock_path(output_dir)
    mine = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            check_unlocked(output_dir)
            holder = read_holder(output_dir)
            if holder is not None and is_mine(holder):
                return
            path.unlink(missing_ok=True)  # stale (its process is gone) or unreadable: taken over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(mine)
        return
    check_unlocked(output_dir)  # lost three races in a row: say who won


def release(output_dir: str | Path) -> None:
    """Drop the lock if this process holds it."""
    holder = read_holder(output_dir)
    if holder is not None and is_mine(holder):
        lock_path(output_dir).unlink(missing_ok=True)
