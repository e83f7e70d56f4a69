"""Engine side of weight sync: a vLLM engine applies the payload a learner built (rl_div.sync.payloads)
through the worker extension (rl_div.rollout.vllm_extension) with ``LLM.collective_rpc``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rl_div.sync.buckets import (
    BucketPayload,
    NamedTensors,
    WeightSyncError,
    chunk_named_tensors,
    fetch_bucket,
    load_buckets,
    with_aliases,
)
from rl_div.sync.payloads import TRANSPORTS, CudaIpcPayload, NcclGroup, NcclPayload, Transport, payload_size

EXTENSION_CLS = "rl_div.rollout.vllm_extension.WeightSyncExtension"


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
                self._rpc("rl_div_receive_nccl", payload.metas, max(self._deadline - time.monotonic(), 0.0))
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
            self.nccl_group = None  # an aborted communicator is gone: the next NCCL payload joins again
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
