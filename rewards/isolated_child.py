"""The child's side of rewards.isolation: import the rewards and plugins, report ready, then answer
``(name, [pickled args, ...], kwargs)`` requests item by item until the pipe closes. Started only as
``python -c`` by rewards.isolation (never imported by the parent), so it may import the whole package."""

from __future__ import annotations

import importlib
import os
import pickle
import threading
import time
from multiprocessing.connection import Connection
from typing import Any


def serve(fd: int, plugins: list[str], parent_pid: int) -> None:
    """Child main loop: import rewards and plugins, report ready, then answer requests."""
    conn = Connection(fd)
    _exit_with_parent(parent_pid)
    try:
        from rl_div.registry import import_plugins

        import_plugins(plugins)  # first: a missing module fails in milliseconds, not after torch
        import rewards  # noqa: F401  (registers the built-in rewards)
        import rl_div.data  # noqa: F401  (records unpickle without paying the torch import per call)
    except BaseException as err:  # report any start-up failure to the parent, then exit
        conn.send(("init_error", _describe(err)))
        return
    conn.send(("ready", os.getpid()))
    _serve_requests(conn)


def _callable(name: str) -> Any:
    """A registered reward by name, or ``module:function`` (the runner's batched group call)."""
    from rewards.registry import REWARDS

    if ":" in name:
        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)
    return REWARDS.get(name)


def _serve_requests(conn: Connection) -> None:

    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent closed the pipe or exited
        try:
            name, items, kwargs = pickle.loads(data)
        except Exception as err:  # cannot happen with our parent; answer rather than hang it
            conn.send(("error", _describe(err)))
            continue
        for item in items:  # one answer per item, as soon as it is computed
            try:
                reply: tuple[str, Any] = ("ok", _callable(name)(*pickle.loads(item), **kwargs))
            except Exception as err:  # every failure (unpickling included) goes back to the parent
                reply = ("error", _describe(err))
            try:
                conn.send(reply)
            except Exception as err:  # e.g. an unpicklable return value
                conn.send(("error", f"reward {name!r} returned an unsendable value: {_describe(err)}"))


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _exit_with_parent(parent_pid: int, period_s: float = 1.0) -> None:
    """Exit when the parent process is gone, even while a reward is stuck.

    A watchdog thread rather than prctl(PR_SET_PDEATHSIG): that fires when the parent *thread*
    that started us exits, which would kill a worker started from a short-lived thread.
    """

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(period_s)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
