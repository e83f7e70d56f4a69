"""Weight-sync payloads, built on the learner's side: one interface, three transports.

    object_store  CPU tensors through the Ray object store in size-capped buckets
                  (rl_div.sync.buckets), loaded one bucket at a time. Works on any
                  machine and with a sharded (FSDP2) learner; the only transport exercised on CPU.
    cuda_ipc      learner and engine share a GPU: the engine maps the learner's own tensors by
                  CUDA IPC handle (no copy); vLLM sleep mode frees the GPU for the learner between
                  rollouts. Written against vLLM's rlhf_colocate example; untested here.
    nccl          learner on other GPUs or nodes: NCCL broadcast from the learner (rank 0) over a
                  stateless process group (vLLM's StatelessProcessGroup + PyNcclCommunicator, as
                  in vLLM's rlhf example). Untested here.

The interface is the rollout worker's ``set_weights(payload, version)``. The payload is what the
learner side built for the transport: a :class:`BucketPayload` (or a plain state dict), a
:class:`CudaIpcPayload` or an :class:`NcclPayload`; this module builds them on the learner's side.
Inside the rollout actor, rl_div.rollout.engine_sync.EngineWeightSync applies them through the worker
extension (rl_div.rollout.vllm_extension) with ``LLM.collective_rpc``; on the driver,
rl_div.sync.push.push_weights builds payloads on the learner actor and ships them, under one timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from rl_div.sync.buckets import (
    BucketPayload,
    WeightSyncError,
    distinct_state,
)
from rl_div.sync.nccl_wait import finish_on_stream

Transport = Literal["object_store", "cuda_ipc", "nccl"]
TRANSPORTS: tuple[str, ...] = get_args(Transport)


@dataclass(frozen=True)
class CudaIpcPayload:
    """Device uuid -> [(name, reduce_tensor(tensor))] for every tensor of the learner's model."""

    handles: dict[str, list[tuple[str, Any]]]


@dataclass(frozen=True)
class NcclGroup:
    """Where the weight-broadcast group meets. world_size = 1 learner + every engine rank;
    rank_offset = the first rank of the engine this is sent to."""

    master_address: str
    master_port: int
    world_size: int
    rank_offset: int = 1
    timeout_s: float = 300.0  # joining the group (TCP store) waits at most this long


@dataclass(frozen=True)
class NcclPayload:
    """The group to join and the (name, dtype name, shape) of each tensor, in broadcast order."""

    group: NcclGroup
    metas: list[tuple[str, str, list[int]]]


def payload_size(payload: Any) -> int:
    """Tensors a payload carries, as each engine rank receives them."""
    if isinstance(payload, CudaIpcPayload):
        return len(next(iter(payload.handles.values()), []))
    if isinstance(payload, NcclPayload):
        return len(payload.metas)
    if isinstance(payload, BucketPayload):
        return len(payload) + len(payload.aliases)  # tied names are loaded again (with_aliases)
    return len(payload)


# ---- learner side: build payloads from the learner's model -----------------------------------
# The learner keeps float32 master weights; engines hold model.dtype. Every payload carries the
# engines' dtype (the learner actor's ``sync_dtype``), cast on the learner's side.
def engine_tensor(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A floating tensor cast to dtype (the tensor itself, no copy, where it already has it; every
    tensor as is when dtype is None)."""
    tensor = tensor.detach()
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def engine_tensors(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for the model's state dict in the engines' dtype (see engine_tensor)."""
    for name, tensor in model.state_dict().items():
        yield name, engine_tensor(tensor, dtype)


def cpu_engine_tensors(named: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None,
                       ) -> Iterator[tuple[str, torch.Tensor]]:
    """object_store buckets: each tensor in the engines' dtype, on CPU (cast first: on a GPU that
    halves the copy for bf16). No copy for a CPU tensor already in dtype: put() copies it."""
    for name, tensor in named:
        yield name, engine_tensor(tensor, dtype).to("cpu")


def model_tensors(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    """A single learner's object_store stream: every distinct tensor (tied weights once) on CPU."""
    return cpu_engine_tensors(distinct_state(model), dtype)


def sync_dtype_of(actor: Any) -> torch.dtype | None:
    """The dtype a learner actor's engines hold (None: the model's own)."""
    return getattr(actor, "sync_dtype", None)


def state_dict_payload(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """object_store: a CPU copy of every tensor, in the engines' dtype."""
    return {name: t.to("cpu", copy=True) for name, t in engine_tensors(model, dtype)}


def device_uuid(device: torch.device | int) -> str:
    """A GPU's uuid as torch reports it; both sides of cuda_ipc name GPUs this way."""
    return str(torch.cuda.get_device_properties(device).uuid)


def cuda_ipc_payload(model: torch.nn.Module, holder: Any, dtype: torch.dtype | None = None) -> CudaIpcPayload:
    """cuda_ipc: IPC handles of the model's GPU tensors in the engines' dtype.

    Where no cast is needed the handles point at the model's own tensors (keep the model unchanged
    until every engine has loaded them); cast copies are kept alive on ``holder`` (the learner)
    until :func:`release_ipc_copies`, since an engine maps them after this function returns.
    """
    from torch.multiprocessing.reductions import reduce_tensor

    tensors = list(engine_tensors(model, dtype))
    devices = {t.device for _, t in tensors}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        raise WeightSyncError(f"cuda_ipc needs the whole model on one GPU, found {sorted(map(str, devices))}")
    holder._rl_div_ipc_tensors = tensors
    uuid = device_uuid(next(iter(devices)))
    return CudaIpcPayload({uuid: [(name, reduce_tensor(t)) for name, t in tensors]})


def release_ipc_copies(holder: Any) -> None:
    """After every engine loaded a cuda_ipc payload: drop the cast copies and return their memory."""
    holder._rl_div_ipc_tensors = None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def nccl_metas(model: torch.nn.Module, dtype: torch.dtype | None = None) -> list[tuple[str, str, list[int]]]:
    """nccl: (name, dtype name, shape) of each tensor as broadcast (engines' dtype), in send order."""
    return [(name, str(t.dtype).removeprefix("torch."), list(t.shape)) for name, t in engine_tensors(model, dtype)]


def stateless_nccl_group(master_address: str, master_port: int, rank: int, world_size: int,
                         device: torch.device | int, timeout_s: float = 300.0) -> Any:
    """A PyNcclCommunicator over vLLM's StatelessProcessGroup: a group outside torch.distributed,
    so neither the learner's nor vLLM's own process groups are disturbed. Joining waits at most
    timeout_s for every member (the TCP store's timeout), then raises."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    try:
        pg = StatelessProcessGroup.create(host=master_address, port=master_port, rank=rank, world_size=world_size,
                                          store_timeout=max(1, int(timeout_s)))
        comm = PyNcclCommunicator(pg, device=device)
    except Exception as err:  # the store raises a bare RuntimeError/DistStoreError on timeout
        raise WeightSyncError(f"rank {rank} could not join the NCCL weight-sync group at {master_address}:"
                              f"{master_port} (world size {world_size}) within {timeout_s:.0f} s: {err}") from err
    # A communicator that could not load NCCL (or VLLM_DISABLE_PYNCCL) turns broadcast into a no-op:
    # the engines would then "receive" uninitialised buffers, so refuse it here.
    if getattr(comm, "disabled", False):
        raise WeightSyncError("PyNcclCommunicator is disabled (NCCL not loaded or VLLM_DISABLE_PYNCCL set)")
    return comm


def nccl_broadcast(model: torch.nn.Module, group: NcclGroup, holder: Any, dtype: torch.dtype | None = None) -> int:
    """nccl, learner side (rank 0): join the group once (kept on holder), broadcast every tensor
    in the engines' dtype (cast one tensor at a time: the extra memory is one tensor). Joining and
    the broadcast end within group.timeout_s: past it the communicator is aborted and dropped
    (rl_div.sync.nccl_wait), so the actor answers the driver's next call instead of hanging."""
    deadline = time.monotonic() + group.timeout_s
    comm = getattr(holder, "_rl_div_nccl", None)
    if comm is None or getattr(holder, "_rl_div_nccl_group", None) != group:
        device = next(model.parameters()).device
        comm = stateless_nccl_group(group.master_address, group.master_port, 0, group.world_size, device,
                                    group.timeout_s)
        holder._rl_div_nccl, holder._rl_div_nccl_group = comm, group
    count = 0
    try:
        for _, tensor in engine_tensors(model, dtype):
            comm.broadcast(tensor.contiguous(), src=0, stream=torch.cuda.current_stream())
            count += 1
            if count % 64 == 0:  # bounds what is queued behind a peer that never comes
                finish_on_stream(comm, deadline, f"learner (NCCL broadcast, tensor {count})")
        finish_on_stream(comm, deadline, "learner (NCCL broadcast)")
    except WeightSyncError:
        holder._rl_div_nccl = holder._rl_div_nccl_group = None  # aborted: the next sync joins a new group
        raise
    return count


