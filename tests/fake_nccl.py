"""Stand-ins for the CUDA stream/event and vLLM PyNcclCommunicator calls the NCCL weight sync makes,
for CPU tests of a broadcast whose peers never come. They honour the real contracts:

* ``PyNcclCommunicator.broadcast(tensor, src, stream)`` enqueues an NCCL kernel on ``stream`` and
  returns at once; the kernel finishes only when every rank of the communicator has joined.
* ``torch.cuda.Stream.synchronize()`` blocks until all work enqueued on the stream has finished (with
  no timeout); ``torch.cuda.Event.record(stream)`` marks the work enqueued so far and ``query()``
  says, without blocking, whether it has finished.
* ``ncclCommAbort(comm)`` (reached through ``PyNcclCommunicator.nccl.lib``, the loaded CDLL, with
  ``.comm`` the ncclComm_t) ends the communicator's outstanding operations.

``Blocked`` is a communicator whose peers never join: its kernels finish only on abort.
"""

from __future__ import annotations

import threading
import types
from typing import Any


class CFunction:
    """A ctypes foreign function: callable, with settable restype / argtypes."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.restype, self.argtypes = fn, None, None

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class Stream:
    def __init__(self) -> None:
        self.work: list[threading.Event] = []

    def synchronize(self) -> None:
        for done in self.work:
            done.wait()


class Event:
    def __init__(self) -> None:
        self.marked: list[threading.Event] = []

    def record(self, stream: Stream | None = None) -> None:
        self.marked = list((stream or STREAM).work)

    def query(self) -> bool:
        return all(done.is_set() for done in self.marked)


STREAM = Stream()


class Blocked:
    """A PyNcclCommunicator whose peers never join the broadcast."""

    def __init__(self) -> None:
        self.comm = object()  # the ncclComm_t handle
        self.aborted = threading.Event()
        self.broadcasts = 0
        self.nccl = types.SimpleNamespace(lib=types.SimpleNamespace(ncclCommAbort=CFunction(self._abort)))

    def _abort(self, handle: Any) -> int:
        assert handle is self.comm
        self.aborted.set()
        return 0

    def broadcast(self, tensor: Any, src: int, stream: Stream) -> None:
        self.broadcasts += 1
        stream.work.append(self.aborted)  # finishes when (and only when) the communicator is aborted
