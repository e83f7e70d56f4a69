"""Weight sync from the learner to vLLM rollout engines: one interface, three transports.

    object_store  CPU tensors through the Ray object store in size-capped buckets
                  (rl_div.rollout.weight_buckets), loaded one bucket at a time. Works on any
                  machine and with a sharded (FSDP2) learner; the only transport exercised on CPU.
    cuda_ipc      learner and engine share a GPU: the engine maps the learner's own tensors by
                  CUDA IPC handle (no copy); vLLM sleep mode frees the GPU for the learner between
                  rollouts. Written against vLLM's rlhf_colocate example; untested here.
    nccl          learner on other GPUs or nodes: NCCL broadcast from the learner (rank 0) over a
                  stateless process group (vLLM's StatelessProcessGroup + PyNcclCommunicator, as
                  in vLLM's rlhf example). Untested here.

The interface is the rollout worker's ``set_weights(payload, version)``. The payload is what the
learner side built for the transport: a :class:`BucketPayload` (or a plain state dict), a
:class:`CudaIpcPayload` or an :class:`NcclPayload`. Inside the rollout actor,
:class:`EngineWeightSync` applies it through the worker extension (rl_div.rollout.vllm_extension)
with ``LLM.collective_rpc``; on the driver, :func:`push_weights` builds payloads on the learner
actor and ships them, under one timeout.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from rl_div.rollout.weight_buckets import (
    BucketPayload,
    NamedTensors,
    WeightSyncError,
    chunk_named_tensors,
    distinct_state,
    fetch_bucket,
    load_buckets,
    with_aliases,
)

Transport = Literal["object_store", "cuda_ipc", "nccl"]
TRANSPORTS: tuple[str, ...] = get_args(Transport)
EXTENSION_CLS = "rl_div.rollout.vllm_extension.WeightSyncExtension"


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


class EngineWeightSync:
    """Rollout side: applies payloads to a ``vllm.LLM`` built with worker_extension_cls=EXTENSION_CLS.

    Every apply() is one reload (begin, load, finish) within timeout_s; any failure raises
    WeightSyncError, and the engine is then unusable until an apply() succeeds (its model may be
    half-reloaded). After every successful load the engine's prefix cache is reset: vLLM keys cached
    prompt KV blocks by token ids only, so without the reset a prompt seen before (a training prompt
    in its second epoch, the evaluation set, any shared system prompt) would be sampled with KV
    computed by the old weights. ``reset_prefix_cache=False`` exists for the test that shows this.
    """

    def __init__(self, llm: Any, transport: Transport, *, chunk_bytes: int, timeout_s: float,
                 reset_prefix_cache: bool = True) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown weight sync transport {transport!r} (valid: {', '.join(TRANSPORTS)})")
        self.llm = llm
        self.transport = transport
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        self.reset_prefix_cache = reset_prefix_cache
        self.nccl_group: NcclGroup | None = None
        self._deadline = 0.0

    def apply(self, payload: Any) -> int:
        """Load every tensor of payload into every engine rank; returns tensors per rank."""
        expected = {"object_store": (Mapping, BucketPayload), "cuda_ipc": CudaIpcPayload,
                    "nccl": NcclPayload}[self.transport]
        if not isinstance(payload, expected):
            raise WeightSyncError(f"{self.transport} weight sync got a {type(payload).__name__} payload")
        self._deadline = time.monotonic() + self.timeout_s
        if isinstance(payload, NcclPayload) and payload.group != self.nccl_group:
            # Joining blocks until the learner joins too (push_weights starts both sides together).
            g = payload.group
            self._rpc("rl_div_init_nccl", g.master_address, g.master_port, g.rank_offset, g.world_size, g.timeout_s)
            self.nccl_group = g
        self._rpc("rl_div_begin_update")
        try:
            if isinstance(payload, CudaIpcPayload):
                self._rpc("rl_div_load_ipc", payload.handles)
            elif isinstance(payload, NcclPayload):
                self._rpc("rl_div_receive_nccl", payload.metas)
            elif isinstance(payload, BucketPayload):
                # copies: vLLM's loaders may keep or modify what they get, and a fetched bucket is
                # read-only shared memory
                load_buckets(payload, lambda bucket: self._load_chunks(with_aliases(bucket, payload.aliases)),
                             fetch=lambda ref: fetch_bucket(ref, copy=True))
            else:
                self._load_chunks(payload)
            loaded = self._rpc("rl_div_finish_update")
        except WeightSyncError:
            # Leave the engine's reload mode (no deadline: this is the cleanup of a failure).
            self.llm.collective_rpc("rl_div_abort_update")
            raise
        want = payload_size(payload)
        if any(n != want for n in loaded):
            raise WeightSyncError(f"engine ranks loaded {loaded} tensors, expected {want} each")
        if self.reset_prefix_cache:
            self.forget_cached_prompts()
        return want

    def _load_chunks(self, weights: NamedTensors) -> None:
        for chunk in chunk_named_tensors(weights, self.chunk_bytes):
            self._rpc("rl_div_load_weights", chunk)

    def forget_cached_prompts(self) -> None:
        """Drop every cached prompt KV block (computed by the old weights).

        vLLM's reset refuses (returns False) while requests hold blocks; between rollouts none run,
        so a refusal means the engine is not in the state a sync expects, and the sync fails.
        """
        if self.llm.reset_prefix_cache() is False:
            raise WeightSyncError("vLLM refused to reset its prefix cache after the weight load (requests "
                                  "still running): prompts seen before would use KV of the old weights")

    def _rpc(self, method: str, *args: Any) -> list[Any]:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise WeightSyncError(f"weight sync ran past its {self.timeout_s:.0f} s timeout before {method}")
        try:
            # The timeout binds when the engine runs its workers in other processes (GPU default);
            # an in-process engine (CPU) is bounded by the deadline checks between calls and by the
            # driver's own timeout in push_weights.
            return list(self.llm.collective_rpc(method, timeout=remaining, args=args))
        except TimeoutError as err:
            raise WeightSyncError(f"{method} timed out (weight sync timeout {self.timeout_s:.0f} s)") from err
        except Exception as err:
            raise WeightSyncError(f"{method} failed: {err}") from err


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
    in the engines' dtype (cast one tensor at a time: the extra memory is one tensor)."""
    comm = getattr(holder, "_rl_div_nccl", None)
    if comm is None or getattr(holder, "_rl_div_nccl_group", None) != group:
        device = next(model.parameters()).device
        comm = stateless_nccl_group(group.master_address, group.master_port, 0, group.world_size, device,
                                    group.timeout_s)
        holder._rl_div_nccl, holder._rl_div_nccl_group = comm, group
    count = 0
    for _, tensor in engine_tensors(model, dtype):
        comm.broadcast(tensor.contiguous(), src=0, stream=torch.cuda.current_stream())
        count += 1
    torch.cuda.current_stream().synchronize()
    return count


# ---- driver side: one call per sync, whatever the transport ----------------------------------
def nccl_group_on(learner: Any, num_engines: int, ranks_per_engine: int = 1) -> NcclGroup:
    """A fresh weight-broadcast group hosted on the learner actor's node (its IP, a free port).

    A new group (new port) makes the learner and every engine re-join on the next push: that is
    also how a restarted rollout actor gets back into the group.
    """
    import ray

    def address(_: Any) -> tuple[str, int]:
        import socket

        with socket.socket() as sock:
            sock.bind(("", 0))
            return ray.util.get_node_ip_address(), int(sock.getsockname()[1])

    host, port = ray.get(learner.__ray_call__.remote(address))
    return NcclGroup(host, port, world_size=1 + num_engines * ranks_per_engine)


def push_weights(learner: Any, workers: list[Any], transport: Transport, version: int, *, timeout_s: float,
                 nccl_group: NcclGroup | None = None, ranks_per_engine: int = 1) -> Any:
    """Ship the learner actor's weights to every rollout actor (Ray handles) within timeout_s.

    object_store uses the learner's get_weight_buckets (every rank of a sharded learner joins;
    rank 0's BucketPayload is what ships, and each worker fetches its buckets itself); cuda_ipc
    and nccl build their payloads on the learner actor through Ray's ``__ray_call__`` (a function
    run with the actor instance, whose model is ``.model`` and whose engines hold
    ``.sync_dtype``). nccl_group (see nccl_group_on) gives address/port/world_size; each engine
    gets its own rank_offset (1 + i * ranks_per_engine), and joining the group times out with the
    sync. Returns what was shipped (for object_store, the object ref of the BucketPayload, which
    can be re-sent to a restarted actor). A sync past timeout_s raises WeightSyncError naming the
    stages still running (the learner building or sending the payload, or which rollout workers
    were still loading).
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
        shipped = learner.get_weight_buckets.remote()
        wait({"learner (putting its weights into the object store)": shipped, **loads([shipped] * len(workers))})
        return shipped
    if transport == "cuda_ipc":
        [payload] = wait({"learner (building CUDA IPC handles)": learner.__ray_call__.remote(
            lambda actor: cuda_ipc_payload(actor.model, actor, sync_dtype_of(actor)))})
        wait(loads([payload] * len(workers)))
        wait({"learner (releasing the IPC copies)": learner.__ray_call__.remote(release_ipc_copies)})
        return None
    if transport == "nccl":
        if nccl_group is None:
            raise ValueError("nccl weight sync needs nccl_group (address, port, world size)")
        group = dataclasses.replace(nccl_group, timeout_s=timeout_s)
        [metas] = wait({"learner (listing tensors)": learner.__ray_call__.remote(
            lambda actor: nccl_metas(actor.model, sync_dtype_of(actor)))})
        payloads = [NcclPayload(dataclasses.replace(group, rank_offset=1 + i * ranks_per_engine), metas)
                    for i in range(len(workers))]
        receivers = loads(payloads)  # the engines wait in their receive loop for the sender
        sender = learner.__ray_call__.remote(lambda actor: nccl_broadcast(actor.model, group, actor,
                                                                         sync_dtype_of(actor)))
        wait({**receivers, "learner (NCCL broadcast)": sender})
        return None
    raise ValueError(f"unknown weight sync transport {transport!r} (valid: {', '.join(TRANSPORTS)})")
