"""Driver side of weight sync: one call per sync, whatever the transport, under one timeout."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol

from rl_div.sync.buckets import WeightSyncError
from rl_div.sync.payloads import (
    TRANSPORTS,
    NcclGroup,
    NcclPayload,
    Transport,
    cuda_ipc_payload,
    nccl_broadcast,
    nccl_metas,
    release_ipc_copies,
    sync_dtype_of,
)


class WeightSource(Protocol):
    """What weight sync needs of the learner (rl_div.cluster.learner_group.LearnerGroup): a ref of its
    object_store payload, and functions run inside its actors (``fn(learner, *args)``), on every rank
    or on rank 0 alone; each returns one ObjectRef."""

    def get_weight_buckets(self) -> Any: ...

    def on_every_rank(self, method: Any, *args: Any) -> Any: ...

    def on_rank_zero(self, method: Any, *args: Any) -> Any: ...


def nccl_group_on(learner: WeightSource, num_engines: int, ranks_per_engine: int = 1) -> NcclGroup:
    """A fresh weight-broadcast group hosted on the learner's rank-0 node (its IP, a free port).

    A new group (new port) makes the learner and every engine re-join on the next push: that is
    also how a restarted rollout actor gets back into the group.
    """
    import ray

    def address(_: Any) -> tuple[str, int]:
        import socket

        with socket.socket() as sock:
            sock.bind(("", 0))
            return ray.util.get_node_ip_address(), int(sock.getsockname()[1])

    host, port = ray.get(learner.on_rank_zero(address))
    return NcclGroup(host, port, world_size=1 + num_engines * ranks_per_engine)


def push_weights(learner: WeightSource, workers: list[Any], transport: Transport, version: int, *, timeout_s: float,
                 nccl_group: NcclGroup | None = None, ranks_per_engine: int = 1) -> Any:
    """Ship the learner's weights to every rollout actor (Ray handles) within timeout_s.

    object_store uses the learner's get_weight_buckets (every rank of a sharded learner joins;
    rank 0's BucketPayload is what ships, and each worker fetches its buckets itself); cuda_ipc
    and nccl build their payloads inside the learner actor with ``on_every_rank`` (a function run
    with the actor instance, whose model is ``.model`` and whose engines hold ``.sync_dtype``;
    these two transports take a single learner, rl_div.config refuses them for fsdp2). nccl_group
    (see nccl_group_on) gives address/port/world_size; each engine gets its own rank_offset
    (1 + i * ranks_per_engine), and joining the group times out with the sync. Returns what was
    shipped (for object_store, the object ref of the BucketPayload, which can be re-sent to a
    restarted actor). A sync past timeout_s raises WeightSyncError naming the stages still running
    (the learner building or sending the payload, or which rollout workers were still loading).
    """
    import ray

    deadline = time.monotonic() + timeout_s

    def wait(stages: dict[str, Any]) -> list[Any]:
        """ray.get of every stage's future by the deadline; the error names those still running."""
        refs = list(stages.values())
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=max(deadline - time.monotonic(), 0.0))
        if pending:
            hung = [name for name, ref in stages.items() if ref in pending]
            raise WeightSyncError(f"{transport} weight sync to {len(workers)} rollout workers took longer than "
                                  f"{timeout_s:.0f} s; still running: {', '.join(hung)}")
        return list(ray.get(refs))

    def loads(payloads: list[Any]) -> dict[str, Any]:
        return {f"rollout worker {i} (loading)": w.set_weights.remote(p, version)
                for i, (w, p) in enumerate(zip(workers, payloads, strict=True))}

    if transport == "object_store":
        # a sharded group's call returns rank 0's ref once every rank has joined the gathers; a top-level
        # ref: each worker gets the BucketPayload itself and fetches the buckets
        shipped = learner.get_weight_buckets()
        wait({"learner (putting its weights into the object store)": shipped, **loads([shipped] * len(workers))})
        return shipped
    if transport == "cuda_ipc":
        [payload] = wait({"learner (building CUDA IPC handles)": learner.on_every_rank(
            lambda actor: cuda_ipc_payload(actor.model, actor, sync_dtype_of(actor)))})
        wait(loads([payload] * len(workers)))
        wait({"learner (releasing the IPC copies)": learner.on_every_rank(release_ipc_copies)})
        return None
    if transport == "nccl":
        if nccl_group is None:
            raise ValueError("nccl weight sync needs nccl_group (address, port, world size)")
        group = dataclasses.replace(nccl_group, timeout_s=timeout_s)
        [metas] = wait({"learner (listing tensors)": learner.on_every_rank(
            lambda actor: nccl_metas(actor.model, sync_dtype_of(actor)))})
        payloads = [NcclPayload(dataclasses.replace(group, rank_offset=1 + i * ranks_per_engine), metas)
                    for i in range(len(workers))]
        receivers = loads(payloads)  # the engines wait in their receive loop for the sender
        sender = learner.on_every_rank(lambda actor: nccl_broadcast(actor.model, group, actor, sync_dtype_of(actor)))
        wait({**receivers, "learner (NCCL broadcast)": sender})
        return None
    raise ValueError(f"unknown weight sync transport {transport!r} (valid: {', '.join(TRANSPORTS)})")
