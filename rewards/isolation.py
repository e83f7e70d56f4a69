"""A persistent, killable worker process that runs registered rewards with a real timeout.

Why a process: a verifier can hang (sympy on ``9^{9^{9^{9}}}`` never returns) and Python cannot
interrupt a thread, while signal.alarm (math-verify's own timeout) only works on the main thread
of the main interpreter. So sample rewards run in a child process; the parent waits on the pipe
with ``Connection.poll(timeout)`` (plain select: safe from any thread, a threaded or async Ray
actor, or a process of its own) and on timeout kills the child (terminate, then kill) and starts
a fresh one at once, so the next call finds it warm.

The child is a plain ``python -c`` subprocess joined to the parent by a socket pair, not a
multiprocessing "spawn" child: spawn re-imports the parent's ``__main__``, which runs a user's
unguarded training script again (or a Ray worker's entry script). It gets the parent's
``sys.path``, imports ``rewards`` (built-in rewards) and the plugin modules (user rewards), and
then serves ``(name, [pickled args, ...], kwargs)`` requests until its pipe closes, answering
item by item (several items per round trip: the pipe costs ~1 ms per round trip, about what
math-verify takes on a GSM8K answer). :class:`IsolatedPool` runs several such workers in parallel. Start cost
(~1-2 s: torch via rl_div.data, sympy) is paid once and again only after a kill.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.reduction import ForkingPickler
from typing import Any

# Runs in the child (rewards.isolated_child): adopt the parent's import path, then serve requests.
_CHILD_CODE = (
    "import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
    "from rewards.isolated_child import serve; serve(int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]))"
)


@dataclass(frozen=True)
class Outcome:
    """The result of one isolated call: a value, or an error ("Type: message"), or a timeout."""

    value: Any = None
    error: str | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


class WorkerStartError(RuntimeError):
    """The worker process could not start (e.g. a plugin module failed to import)."""


class _Child:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, plugins: list[str]) -> None:
        self.conn, child_end = Pipe(duplex=True)
        path = [p or os.getcwd() for p in sys.path]  # "" means the parent's working directory
        argv = [json.dumps(path), str(child_end.fileno()), json.dumps(plugins), str(os.getpid())]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE, *argv],
            pass_fds=(child_end.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        child_end.close()
        self.ready = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 1.0) -> None:
        """Terminate, then kill if it does not exit within ``grace_s``; always reaps the process."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.conn.close()


class IsolatedWorker:
    """Runs ``REWARDS[name](*args, **kwargs)`` in a persistent child process with a timeout.

    Thread-safe (one call at a time). ``plugins``: module names the child imports so that
    user-registered rewards exist there. ``start_timeout_s`` bounds the child's start-up (imports),
    which never counts against a call's timeout. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, plugins: Sequence[str] = (), *, start_timeout_s: float = 120.0) -> None:
        self.plugins = list(plugins)
        self.start_timeout_s = start_timeout_s
        self.restarts = 0
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._finalizer: weakref.finalize | None = None

    def start(self) -> None:
        """Start the child now (returns at once; the first call waits until it is ready)."""
        with self._lock:
            self._spawn_if_needed()

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None, *,
             timeout_s: float) -> Outcome:
        """Run reward ``name`` on ``args``; wait at most ``timeout_s`` seconds for the answer.

        On timeout the child is killed and a new one started. Raises WorkerStartError only when a
        fresh child cannot start (a configuration problem, not a property of this item).
        """
        return self.call_batch(name, [args], kwargs, timeout_s=timeout_s)[0]

    def call_batch(self, name: str, items: Sequence[tuple[Any, ...]], kwargs: dict[str, Any] | None = None, *,
                   timeout_s: float) -> list[Outcome]:
        """``REWARDS[name](*args, **kwargs)`` for every ``args`` in ``items``, in one round trip.

        The child answers item by item, and each item gets ``timeout_s`` seconds from the previous
        answer: a hung item is killed alone (timed out), the child is replaced at once and the items
        after it go to the fresh child. An item that cannot be pickled, raises, or kills the child is
        that item's error only.
        """
        with self._lock:
            outcomes: list[Outcome | None] = [None] * len(items)
            pending: list[tuple[int, bytes]] = []
            for i, args in enumerate(items):
                try:  # pickled one by one: an unpicklable item is this item's error, not the batch's
                    pending.append((i, ForkingPickler.dumps(args).tobytes()))
                except Exception as err:
                    outcomes[i] = Outcome(error=f"{type(err).__name__}: could not pickle the request: {err}")
            while pending:
                child = self._ready_child()
                try:
                    child.conn.send_bytes(ForkingPickler.dumps((name, [b for _, b in pending], kwargs or {})))
                except (BrokenPipeError, ConnectionResetError, EOFError, OSError) as err:
                    outcomes[pending[0][0]] = self._died(child, f"WorkerDied: could not send the request ({err})")
                    pending = pending[1:]
                    continue
                try:
                    done = self._await_replies(child, name, timeout_s, [i for i, _ in pending], outcomes)
                except BaseException:  # e.g. KeyboardInterrupt mid-wait: never leave a stale reply behind
                    self._replace(child)
                    raise
                pending = pending[done:]
            return [o if o is not None else Outcome(error="internal: no outcome") for o in outcomes]

    def close(self) -> None:
        """Stop the child (a closed worker starts a new child if called again)."""
        with self._lock:
            if self._child is not None:
                _shutdown(self._child)
                self._child = None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None

    def __enter__(self) -> IsolatedWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals (called with the lock held) ----------------------------------------------------
    def _await_replies(self, child: _Child, name: str, timeout_s: float, rows: list[int],
                       outcomes: list[Outcome | None]) -> int:
        """Fill ``outcomes[rows[k]]`` in order; stop after the first item that hangs or kills the
        child (the child is then replaced). Returns how many of ``rows`` got an outcome."""
        for k, row in enumerate(rows):
            if not child.conn.poll(timeout_s):
                self._replace(child)
                outcomes[row] = Outcome(error=f"Timeout: {name!r} took longer than {timeout_s:g} s", timed_out=True)
                return k + 1
            try:
                status, payload = child.conn.recv()
            except (EOFError, ConnectionResetError, OSError):
                outcomes[row] = self._died(child, "WorkerDied: the worker exited during the call")
                return k + 1
            outcomes[row] = Outcome(value=payload) if status == "ok" else Outcome(error=str(payload))
        return len(rows)

    def _spawn_if_needed(self) -> _Child:
        if self._child is None or not self._child.alive():
            if self._child is not None:  # it died between calls (OOM killer, a crash)
                self._child.stop()
            self._child = _Child(self.plugins)
            if self._finalizer is not None:
                self._finalizer.detach()
            # Kill the child if this object is garbage-collected or the interpreter exits.
            self._finalizer = weakref.finalize(self, _shutdown, self._child)
        return self._child

    def _ready_child(self) -> _Child:
        child = self._spawn_if_needed()
        if child.ready:
            return child
        if not child.conn.poll(self.start_timeout_s):
            self._discard(child)
            raise WorkerStartError(f"reward worker did not start within {self.start_timeout_s:g} s")
        try:
            status, payload = child.conn.recv()
        except (EOFError, OSError):
            self._discard(child)
            raise WorkerStartError(f"reward worker exited during start-up (code {child.proc.poll()})") from None
        if status != "ready":
            self._discard(child)
            raise WorkerStartError(f"reward worker failed to start: {payload}")
        child.ready = True
        return child

    def _replace(self, child: _Child) -> None:
        """Kill a stuck child and start its successor right away (it warms up while we return)."""
        child.stop()
        self.restarts += 1
        self._child = None
        self._spawn_if_needed()

    def _died(self, child: _Child, message: str) -> Outcome:
        try:  # the pipe closes a moment before the process can be reaped
            code: int | None = child.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            code = None
        self._replace(child)
        return Outcome(error=f"{message} (exit code {code})")

    def _discard(self, child: _Child) -> None:
        child.stop()
        self._child = None


class IsolatedPool:
    """Several :class:`IsolatedWorker` processes scoring batches in parallel.

    :meth:`map` cuts the items into calls of ``items_per_call`` (several items per round trip, so
    the pipe costs little per item) and hands them to the workers as they become free; every item
    keeps its own timeout, a hung one is killed alone and its worker is back warm at once.
    ``workers``: existing workers to use (not closed by :meth:`close` then).
    """

    def __init__(self, plugins: Sequence[str] = (), size: int = 1, *, start_timeout_s: float = 120.0,
                 workers: Sequence[IsolatedWorker] | None = None) -> None:
        if workers is None and size < 1:
            raise ValueError(f"an isolated pool needs at least one worker, got size={size}")
        self._owns = workers is None
        self.workers = list(workers) if workers is not None else [
            IsolatedWorker(plugins, start_timeout_s=start_timeout_s) for _ in range(size)]
        self._executor = ThreadPoolExecutor(len(self.workers), thread_name_prefix="reward-pool")

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None, *,
             timeout_s: float) -> Outcome:
        """One item on the first worker (see IsolatedWorker.call)."""
        return self.workers[0].call(name, args, kwargs, timeout_s=timeout_s)

    def map(self, name: str, items: Sequence[tuple[Any, ...]], kwargs: dict[str, Any] | None = None, *,
            timeout_s: float, items_per_call: int = 16) -> list[Outcome]:
        """``REWARDS[name](*args, **kwargs)`` for every ``args`` in ``items``, in order."""
        if items_per_call < 1:
            raise ValueError(f"items_per_call must be >= 1, got {items_per_call}")
        calls: queue.SimpleQueue[range] = queue.SimpleQueue()
        for start in range(0, len(items), items_per_call):
            calls.put(range(start, min(start + items_per_call, len(items))))
        outcomes: list[Outcome | None] = [None] * len(items)

        def drain(worker: IsolatedWorker) -> None:
            while True:
                try:
                    rows = calls.get_nowait()
                except queue.Empty:
                    return
                batch = worker.call_batch(name, [items[i] for i in rows], kwargs, timeout_s=timeout_s)
                for i, outcome in zip(rows, batch, strict=True):
                    outcomes[i] = outcome

        n_calls = -(-len(items) // items_per_call)
        for future in [self._executor.submit(drain, w) for w in self.workers[:n_calls]]:
            future.result()  # re-raises WorkerStartError
        return [o if o is not None else Outcome(error="internal: no outcome") for o in outcomes]

    def close(self) -> None:
        if self._owns:
            for w in self.workers:
                w.close()
        self._executor.shutdown(wait=False)

    def __enter__(self) -> IsolatedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(child: _Child) -> None:
    """Stop a child between calls. Terminated rather than asked to exit: it holds no state worth
    saving, and a clean interpreter exit with torch loaded takes most of a second."""
    child.stop()
