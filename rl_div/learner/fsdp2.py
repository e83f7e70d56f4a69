"""The FSDP2 learner rank: a Learner whose model, gradients and optimizer state are sharded.

Every rank holds the whole scored batch and the driver's plan (rl_div.learner.plan) and runs the
update loop the single learner runs (rl_div.learner.update_loop) with a GroupReducer: its own rows'
micro-batches, every loss divided by the GLOBAL token / sequence counts, gradients summed (not
averaged) by FSDP2, metrics and the non-finite flag reduced over the ranks, so the update and its
metrics are one process's at any world size. ``run_plans`` is re-exported here for its callers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rl_div.data import RolloutBatch
from rl_div.learner.forward import batch_temperature
from rl_div.learner.plan import MiniBatchPlan
from rl_div.learner.reducers import LOCAL, GroupReducer, LocalReducer
from rl_div.learner.reference import sharded_reference
from rl_div.learner.shard_load import is_meta, load_into_shards, meta_policy
from rl_div.learner.sharding import PolicyModule, free_address, mixed_precision, new_mesh, shard_policy
from rl_div.learner.single import LORA_STATE_KEY, Learner
from rl_div.learner.update_loop import run_plans
from rl_div.models.loading import DTYPES
from rl_div.sync.buckets import distinct_state
from rl_div.sync.payloads import cpu_engine_tensors

if TYPE_CHECKING:
    from rl_div.config import Config


class ShardedLearner(Learner):
    """A Learner whose model, gradients and AdamW state are sharded across `world_size` ranks.

    Built in two steps: the constructor builds the model on the meta device (no memory; with LoRA
    every rank loads it, PEFT's adapters need real weights); setup() joins the process group, shards
    the model, fills the shards from rank 0's load (rl_div.learner.shard_load) and rebuilds the optimizer.

    Mixed precision (model.dtype bfloat16, without LoRA): FSDP2's MixedPrecisionPolicy instead of
    autocast: float32 sharded master weights and optimizer state, bf16 all-gathers and compute, and
    gradients reduced in float32 (rl_div.learner.sharding.mixed_precision). With LoRA: autocast, as
    the single learner.
    """

    def __init__(self, cfg: Config, model_path: str, rank: int, world_size: int) -> None:
        super().__init__(cfg, model_path)
        self.rank, self.world_size, self.model_path = rank, world_size, model_path
        self.reducer: LocalReducer = LOCAL

    def load_model(self, model_path: str) -> tuple[torch.nn.Module, Any]:
        """The policy on the meta device (setup() loads it into the shards), or with LoRA every rank's own load."""
        if self.cfg.train.lora.enabled:
            return super().load_model(model_path)
        return meta_policy(model_path, self.cfg.model.trust_remote_code)

    def mixed_precision(self) -> dict[str, Any]:
        """fully_shard's mp_policy for model.dtype (none for float32, and with LoRA, which runs under autocast)."""
        return {} if self.lora is not None else mixed_precision(self.compute_dtype)

    def autocast(self) -> Any:
        """Autocast only where FSDP2's MixedPrecisionPolicy does not set the compute dtype (LoRA)."""
        return contextlib.nullcontext() if self.mixed_precision() else super().autocast()

    def reference_model(self) -> torch.nn.Module | None:
        """None until setup() builds the sharded reference (rl_div.learner.reference), not a
        full copy on every rank."""
        return None

    def address(self) -> tuple[str, int]:
        return free_address()

    def setup(self, address: tuple[str, int]) -> int:
        """Join the process group at rank 0's (host, port) (within train.dist_init_timeout_s), shard."""
        host, port = address
        import torch.distributed as dist
        device = self.device
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://{host}:{port}",
                                rank=self.rank, world_size=self.world_size,
                                timeout=timedelta(seconds=self.cfg.train.dist_init_timeout_s))
        mesh = new_mesh(device.type, self.world_size)
        self.root = PolicyModule(self.model, self.cfg.train.logit_chunk_rows, self.packing)
        shard_policy(self.root, self.model, mesh, **self.mixed_precision())
        if is_meta(self.model):
            load_into_shards(self.model, self.model_path, self.rank, device, self.cfg.model.trust_remote_code)
        if self.cfg.train.use_ref_model and self.lora is None:  # LoRA: the policy with its adapters disabled
            self.ref_model = sharded_reference(self.cfg, self.model_path, mesh, device, self.rank,
                                               self.mixed_precision())
        self.reducer = GroupReducer(self.world_size, device)
        self.build_optimizer()
        return self.rank

    def policy_forward(self, micro: RolloutBatch, with_prompt: bool = False, temperature: float | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        with self.autocast():
            return self.root(micro, with_prompt, batch_temperature(micro, temperature, self.cfg.rollout.temperature))

    @torch.no_grad()
    def _ref_logprobs(self, micro: RolloutBatch, temperature: float | None) -> torch.Tensor:
        """The sharded reference's log-probs [B, T]: a collective, which every rank's policy_stats runs
        once per micro-batch (padding ones included). With LoRA: the sharded policy, adapters disabled."""
        temps = batch_temperature(micro, temperature, self.cfg.rollout.temperature)
        if self.lora is not None:
            with self.autocast(), self.lora.reference():
                return self.root(micro, False, temps)[0]
        assert self.ref_model is not None
        with self.autocast():
            return self.ref_model(micro, False, temps)[0]

    def run_plans(self, batch: RolloutBatch, plans: list[MiniBatchPlan],
                  loss_overrides: dict[str, Any] | None = None) -> dict[str, float]:
        """This rank's part of the update the driver planned (rl_div.learner.update_loop.run_plans)."""
        return run_plans(self, batch, plans, self.rank, self.reducer, loss_overrides)

    def policy_stats_of_rows(self, batch: RolloutBatch, rows: list[list[int]], with_prompt: bool = False,
                             temperature: float | None = None) -> dict[str, torch.Tensor]:
        """policy_stats of this rank's micro-batches (rows[k]; [] = a padding pass, dropped)."""
        parts: dict[str, list[torch.Tensor]] = {}
        self.model.eval()
        with torch.no_grad():
            for chunk in rows:
                got = Learner.policy_stats(self, batch.select(chunk or [0]), with_prompt, temperature)
                for k, v in got.items():
                    if chunk:
                        parts.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in parts.items()}

    def get_weights(self) -> dict[str, torch.Tensor]:
        """Every rank joins the gather; rank 0 returns the full state dict in the engines' dtype (held
        twice on every rank; weight sync streams buckets instead, see sync_tensors)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.lora is not None:  # the adapters, or the merged weights, as sync_tensors ships them
            full = dict(self.lora.sync_tensors(full.items()))
        return {k: v.to(self.sync_dtype) for k, v in full.items()} if self.rank == 0 else {}

    def sync_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every rank gathers each sharded tensor in the same (state dict) order, one all-gather per
        tensor, so a rank holds one full tensor at a time; rank 0 yields them (CPU, engines' dtype),
        the other ranks yield nothing. get_weight_buckets on every rank: rank 0's payload ships."""
        gathered = self._full_tensors()
        if self.lora is not None:  # the adapters, or the merged weights (rl_div.learner.lora)
            gathered = self.lora.sync_tensors(gathered)
        if self.rank == 0:
            yield from cpu_engine_tensors(gathered, self.sync_dtype)
        else:
            for _ in gathered:  # the other ranks join every gather
                pass

    def _full_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) of every distinct tensor, one all-gather each, in state dict order (every
        rank the same)."""
        from torch.distributed.tensor import DTensor

        for name, t in distinct_state(self.model):
            yield name, t.full_tensor() if isinstance(t, DTensor) else t



    # ---- checkpoints: reshardable DCP for model + optimizer, the HF policy/ folder from rank 0 ----
    def _dcp_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def save(self, ckpt_dir: str) -> None:
        """Every rank writes its shards to ckpt_dir/dcp (loadable at any world size); rank 0 writes the
        scheduler / generator / RNG state and, with checkpoint.export_policy, policy/ (HF safetensors,
        the full weights in model.dtype, for evaluation and from_pretrained); with LoRA, what
        train.lora.save asks for (adapter/, the merged policy/) and the adapters in learner_state.pt.
        The trainer saves into a temporary folder and renames it, so the checkpoint appears atomically.

        No collective follows rank 0's own writes: the export of a 7B model is minutes on shared
        storage, and a barrier there would wait inside train.dist_init_timeout_s and kill every rank.
        The driver's ray.get over every rank's save is the join (no rank starts its next collective
        before the driver's next call)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        export = self.cfg.checkpoint.export_policy
        # a collective (every rank joins the all-gathers); with cpu_offload only rank 0 keeps the values
        full = (get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
                if export or self.lora is not None else {})
        dcp.save(self._dcp_state(), checkpoint_id=str(Path(ckpt_dir) / "dcp"))  # collective, all ranks write
        if self.rank == 0:
            extra: dict[str, Any] = {}
            if self.lora is not None:  # adapter/ and/or the merged policy/, and the adapters in learner_state.pt
                self.lora.save(Path(ckpt_dir), self.tokenizer, full)
                extra[LORA_STATE_KEY] = self.lora.adapter_state(full)
            elif export:
                # tied weights once, under the name save_pretrained of the unsharded model uses
                names = {n for n, _ in self.model.named_parameters()} | {n for n, _ in self.model.named_buffers()}
                export_dtype = DTYPES[self.cfg.model.dtype]
                full = {k: v.to(export_dtype) for k, v in full.items() if k in names}
                self.model.save_pretrained(Path(ckpt_dir) / "policy", state_dict=full, safe_serialization=True)
                self.tokenizer.save_pretrained(Path(ckpt_dir) / "policy")
            torch.save({"scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
                        "torch_rng": torch.get_rng_state(), "version": self.version,
                        "world_size": self.world_size, **extra}, Path(ckpt_dir) / "learner_state.pt")

    def load(self, ckpt_dir: str) -> None:
        """Resume from a checkpoint that save() wrote with any number of ranks (DCP reshards), or that
        a single learner wrote."""
        from torch.distributed.checkpoint.state_dict import set_state_dict

        from rl_div.learner.safe_dcp import safe_dcp_load

        dcp_dir = Path(ckpt_dir) / "dcp"
        if dcp_dir.is_dir():
            state = self._dcp_state()
            safe_dcp_load(state, dcp_dir)  # a folder from elsewhere cannot run code on load
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
        else:  # written by train.strategy 'single'
            from rl_div.learner.checkpoint_io import load_single_into_sharded

            load_single_into_sharded(self.model, self.optimizer, Path(ckpt_dir), lora=self.lora is not None)
        saved = torch.load(Path(ckpt_dir) / "learner_state.pt", weights_only=True)
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        self.version = saved["version"]
