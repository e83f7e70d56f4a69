"""vLLM worker extension: the receiving end of weight sync, one method per transport step.

vLLM mixes this class into its worker class when the engine is built with
``worker_extension_cls="rl_div.rollout.vllm_extension.WeightSyncExtension"``; the rollout actor
then calls these methods on every worker (one per tensor-parallel rank) with
``LLM.collective_rpc("rl_div_...", args=...)``. That is vLLM's public hook for RL weight updates:
nothing here reaches into the engine from outside. Method names carry an ``rl_div_`` prefix
because vLLM refuses an extension whose attribute names clash with the worker's own.

Every update runs inside vLLM's layer-wise reload lifecycle (``initialize_layerwise_reload`` ->
``model.load_weights`` -> ``finalize_layerwise_reload``), the one its own weight-transfer engines
use. A plain ``load_weights`` on a running engine is not enough: backends post-process weights
after loading (vLLM's CPU backend, for one, packs every linear weight for oneDNN and empties the
original parameter), and only the reload lifecycle re-runs that processing on the new values.

This module imports vllm lazily: the main environment (no vllm) can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class WeightSyncExtension:
    """Methods vLLM's worker gains for weight sync (object store, CUDA IPC and NCCL)."""

    # ``self`` is vLLM's worker: these attributes are its own (annotated here for type checkers).
    model_runner: Any
    device: torch.device
    model_config: Any

    # ---- lifecycle shared by every transport -------------------------------------------------
    def rl_div_begin_update(self) -> None:
        """Put the model into reload mode: from here until rl_div_finish_update it cannot run."""
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        if getattr(self, "_rl_div_updating", False):  # an earlier update died without its abort
            self.rl_div_abort_update()
        self._rl_div_loaded = 0
        self._rl_div_params: set[str] = set()  # vLLM parameter names load_weights reported
        self._rl_div_updating = True
        initialize_layerwise_reload(self.model_runner.model)

    def rl_div_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """Load one chunk of (checkpoint name, tensor) pairs; returns tensors received so far.

        Names are Hugging Face checkpoint names (``model.layers.0.self_attn.q_proj.weight``);
        the model's own load_weights maps them onto vLLM's fused parameters (qkv_proj, ...).
        """
        device = self.device
        loaded = self.model_runner.model.load_weights(weights=[(name, t.to(device)) for name, t in weights])
        self._rl_div_params.update(loaded or ())
        self._rl_div_loaded += len(weights)
        return self._rl_div_loaded

    def rl_div_finish_update(self) -> int:
        """Re-run weight post-processing on the loaded values; returns tensors received.

        Strict like vLLM's own checkpoint loader: a parameter no tensor was loaded into is an
        error (finalize would otherwise quietly keep its old value).
        """
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        model = self.model_runner.model
        missing = {name for name, _ in model.named_parameters()} - self._rl_div_params
        if missing:
            raise ValueError(f"weight update left parameters without new values: {sorted(missing)}")
        finalize_layerwise_reload(model, self.model_config)
        self._rl_div_updating = False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return int(getattr(self, "_rl_div_loaded", 0))

    def rl_div_abort_update(self) -> None:
        """Leave reload mode after a failed update, so that the next update starts clean.

        Weights buffered for layers not yet complete are dropped, and those layers get their
        pre-update tensors back (finalize's fallback for layers that loaded nothing); layers
        completed before the failure keep their new values. The model is whole again but mixes
        two versions: the rollout worker refuses to sample until a full update succeeds.
        """
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload
        from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info

        model = self.model_runner.model
        for layer in model.modules():
            info = get_layerwise_info(layer)
            if info.can_load():
                info.loaded_weights.clear()
                info.load_numel = 0
        finalize_layerwise_reload(model, self.model_config)
        self._rl_div_updating = False

    # ---- CUDA IPC: learner and engine share a GPU --------------------------------------------
    def rl_div_device_uuid(self) -> str:
        """This worker's GPU, as the learner names it (see rl_div.sync.payloads.device_uuid)."""
        return str(torch.cuda.get_device_properties(self.device).uuid)

    def rl_div_load_ipc(self, handles: dict[str, list[tuple[str, Any]]], chunk_size: int = 64) -> int:
        """Map the learner's GPU tensors into this process by their IPC handles and load them.

        handles: device uuid -> [(name, torch.multiprocessing.reductions.reduce_tensor(t))]; each
        worker takes the entry of its own GPU. No copy is made before load_weights: the learner's
        parameters stay alive (and unchanged) until this call returns.
        """
        mine = handles[self.rl_div_device_uuid()]
        for start in range(0, len(mine), chunk_size):
            chunk = [(name, _rebuild_ipc(handle, self.device.index)) for name, handle in mine[start:start + chunk_size]]
            self.rl_div_load_weights(chunk)
            del chunk
        torch.cuda.synchronize(self.device)
        return int(self._rl_div_loaded)

    # ---- NCCL: learner on other GPUs / nodes broadcasts every tensor --------------------------
    def rl_div_init_nccl(self, master_address: str, master_port: int, rank_offset: int, world_size: int,
                         timeout_s: float = 300.0) -> None:
        """Join the learner's weight-broadcast group (learner = rank 0, this worker = rank_offset + its
        rank in the engine). Blocks until every member has joined, at most timeout_s."""
        from vllm.distributed.parallel_state import get_world_group

        from rl_div.sync.payloads import stateless_nccl_group

        rank = get_world_group().rank + rank_offset
        self._rl_div_nccl = stateless_nccl_group(master_address, master_port, rank, world_size, self.device, timeout_s)

    def rl_div_receive_nccl(self, metas: list[tuple[str, str, list[int]]], timeout_s: float = 300.0,
                            chunk_size: int = 64) -> int:
        """Receive (name, dtype name, shape) tensors broadcast by rank 0, in this order, and load them.
        Every wait on the broadcast ends within timeout_s: past it the communicator is aborted and
        dropped (rl_div.sync.nccl_wait), and the error names this engine rank."""
        import time

        from rl_div.sync.nccl_wait import finish_on_stream

        group = getattr(self, "_rl_div_nccl", None)
        if group is None:
            raise RuntimeError("NCCL weight sync used before rl_div_init_nccl joined the group")
        deadline = time.monotonic() + timeout_s
        stage = f"engine worker on {self.device} (NCCL receive)"
        chunk: list[tuple[str, torch.Tensor]] = []
        try:
            for name, dtype_name, shape in metas:
                buf = torch.empty(shape, dtype=getattr(torch, dtype_name), device=self.device)
                group.broadcast(buf, src=0, stream=torch.cuda.current_stream())
                chunk.append((name, buf))
                if len(chunk) == chunk_size:
                    finish_on_stream(group, deadline, stage)
                    self.rl_div_load_weights(chunk)
                    chunk = []
            if chunk:
                finish_on_stream(group, deadline, stage)
                self.rl_div_load_weights(chunk)
        except Exception:
            self._rl_div_nccl = None  # aborted or half-received: the next sync joins a new group
            raise
        return int(self._rl_div_loaded)

    def rl_div_reseed(self, seed: int) -> None:
        """Reset this worker's torch RNG (CPU and every CUDA device) to seed: rollout.seed_mode per_batch,
        whose unseeded requests draw from it (rl_div.rollout.seed_plan)."""
        torch.manual_seed(seed)

    # ---- inspection (tests) ------------------------------------------------------------------
    def rl_div_param_checksum(self) -> float:
        """Sum of every parameter of the running model, float64 (cheap evidence that weights moved)."""
        total = 0.0
        for _, p in self.model_runner.model.named_parameters():
            total += float(p.detach().double().sum())
        return total


def _rebuild_ipc(handle: tuple[Callable[..., torch.Tensor], tuple[Any, ...]], device_index: int) -> torch.Tensor:
    """Open a CUDA IPC handle from reduce_tensor on this process's device.

    Argument 6 of the rebuild call is the device index in the sender's numbering; the two
    processes may see different CUDA_VISIBLE_DEVICES, so it is replaced by ours (the same GPU,
    checked through the device uuid the handles are keyed by).
    """
    func, args = handle
    fixed = list(args)
    fixed[6] = device_index
    return func(*fixed)
