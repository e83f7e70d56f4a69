"""Bounded waits on NCCL weight-broadcast work: nothing in a sync may wait on NCCL forever.

An NCCL collective whose peers never arrive (an engine died, timed out, or never joined) does not
fail: its kernel spins on the stream, and ``stream.synchronize()`` blocks the actor for good, so every
later call to it (the driver's retry, its ``get_version``) hangs too. Both ends of the broadcast
therefore wait on a CUDA event with a deadline, and past it abort the communicator: ``ncclCommAbort``
is the one NCCL call that ends outstanding operations whose peers are gone (NCCL's docs, "Fault
tolerance"). vLLM's NCCLLibrary binds no abort, so it is called on the library vLLM loaded
(``PyNcclCommunicator.nccl.lib``, the ctypes CDLL; ``.comm`` is the ncclComm_t). An aborted
communicator is unusable: the caller drops it, and the next sync joins a fresh group.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

from rl_div.sync.buckets import WeightSyncError


def abort_communicator(comm: Any) -> None:
    """ncclCommAbort on a vLLM PyNcclCommunicator (a no-op for one that never got a communicator)."""
    nccl, handle = getattr(comm, "nccl", None), getattr(comm, "comm", None)
    if nccl is None or handle is None:
        return
    abort = nccl.lib.ncclCommAbort
    abort.restype, abort.argtypes = ctypes.c_int, [ctypes.c_void_p]
    abort(handle)


def wait_or_abort(done: Callable[[], bool], comm: Any, deadline: float, stage: str, poll_s: float = 0.01) -> None:
    """Poll done() (a CUDA event's query(): the work enqueued before it has finished) until it is
    true or time.monotonic() passes deadline; then abort comm and raise WeightSyncError naming stage."""
    while not done():
        if time.monotonic() >= deadline:
            abort_communicator(comm)
            raise WeightSyncError(f"{stage}: NCCL work unfinished at the weight sync timeout (a peer never joined "
                                  "the broadcast); communicator aborted")
        time.sleep(poll_s)


def finish_on_stream(comm: Any, deadline: float, stage: str) -> None:
    """Wait (bounded, see wait_or_abort) for everything enqueued on the current CUDA stream."""
    import torch

    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream())
    wait_or_abort(event.query, comm, deadline, stage)
