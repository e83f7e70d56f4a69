"""The FSDP2 learner rank, and the planned optimizer step that one process and N ranks share.

Every rank holds the whole scored batch and the driver's plan (rl_div.learner.plan); it runs
its own rows' micro-batches, divides every loss by the GLOBAL token / sequence counts, and lets
FSDP2 sum (not average) the gradients, so the update is one process's at any world size.
Statistics go through a reducer (rl_div.learner.reducers): metrics are sums of token-weighted
parts (never a mean of rank means), and a non-finite loss or gradient on any rank skips the step
on every rank (a MAX-reduced flag and the global gradient norm), after every rank has run all
its passes, so no rank waits in a collective the others never join.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from rl_div.config import Config
from rl_div.data import RolloutBatch
from rl_div.learner.metric_sums import add_metric, mean_over_steps
from rl_div.learner.plan import MiniBatchPlan, token_weights_over_mini_batch
from rl_div.learner.reducers import LOCAL, GroupReducer, LocalReducer, mini_batch_token_weights
from rl_div.learner.reference import sharded_reference
from rl_div.learner.sharding import PolicyModule, free_address, new_mesh, shard_policy
from rl_div.learner.single import Learner
from rl_div.metrics.entropy import masked_mean
from rl_div.sync.buckets import distinct_state
from rl_div.sync.payloads import cpu_engine_tensors


def planned_step(learner: Learner, batch: RolloutBatch, plan: MiniBatchPlan, rank: int,
                 reducer: LocalReducer) -> dict[str, float] | None:
    """One optimizer step of a planned mini-batch on `rank`; None (and no step, on every rank) if a
    loss or the gradient norm was not finite anywhere. Returns the step's metrics, combined over
    ranks: each micro-batch's metric weighted by its share of the mini-batch's valid tokens."""
    cfg = learner.cfg
    mini = batch.select(plan.rows)
    where = {row: i for i, row in enumerate(plan.rows)}
    positions = [[[where[r] for r in m] for m in micros] for micros in plan.micro]
    learner.optimizer.zero_grad(set_to_none=True)
    mini_weights = None
    sums: dict[str, float] = {}
    if token_weights_over_mini_batch(cfg):
        mini_weights = mini_batch_token_weights(learner, mini, positions, rank, reducer)
    bad = 0.0
    for pos in positions[rank]:
        micro = mini.select(pos or [0])  # padding: a pass on row 0 whose loss is multiplied by 0
        given = None if mini_weights is None else mini_weights.at(pos or [0])
        out, weights, entropy, mask = learner.micro_loss(micro, plan.token_total, plan.seq_total, given)
        if pos and not torch.isfinite(out.loss):
            bad = 1.0
        # FSDP2 averages gradients over ranks; the loss already divides by the global counts
        (out.loss * reducer.world_size if pos else out.loss * 0.0).backward()
        if not pos:
            continue
        share = float(mask.sum()) / max(plan.token_total, 1.0)
        parts = {**out.metrics, **(weights.metrics if given is None else {})}
        parts["policy/entropy_train"] = float(masked_mean(entropy.detach(), mask))
        for k, v in parts.items():
            add_metric(sums, k, v, 1.0 if k == "loss/total" else share)
    sums = reducer.sum_dict(sums)
    if mini_weights is not None:
        sums.update(mini_weights.metrics)
    norm = torch.nn.utils.clip_grad_norm_(learner.model.parameters(), cfg.train.max_grad_norm)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if float(reducer.max(torch.tensor(bad))) > 0 or not torch.isfinite(torch.tensor(grad_norm)):
        learner.optimizer.zero_grad(set_to_none=True)
        return None
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scheduler.step()
    learner.version += 1
    sums["train/grad_norm"] = grad_norm
    return sums


def run_plans(learner: Learner, batch: RolloutBatch, plans: list[MiniBatchPlan], rank: int = 0,
              reducer: LocalReducer = LOCAL, loss_overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """An update as Learner.update does it, but following the driver's plans (same metrics);
    loss_overrides as in Learner.update (the collapse guard's entropy_coef)."""
    learner.loss_params = {**learner.cfg.algo.loss_params, **(loss_overrides or {})}
    learner.model.train()
    sums: dict[str, float] = {}
    counts = {"train/optimizer_steps": 0, "train/skipped_zero_signal": int(batch.size == 0),
              "faults/nonfinite_loss": 0}
    for plan in plans:
        if plan.skip:
            counts["train/skipped_zero_signal"] += 1
            continue
        step = planned_step(learner, batch, plan, rank, reducer)
        if step is None:
            counts["faults/nonfinite_loss"] += 1
            continue
        counts["train/optimizer_steps"] += 1
        for k, v in step.items():
            add_metric(sums, k, v)
    learner.release_memory()
    metrics = mean_over_steps(sums, counts["train/optimizer_steps"])
    metrics.update({k: float(v) for k, v in counts.items()})
    metrics["train/lr"] = learner.scheduler.get_last_lr()[0]
    return metrics


class ShardedLearner(Learner):
    """A Learner whose model, gradients and AdamW state are sharded across `world_size` ranks.

    Built in two steps: the constructor loads the model (every rank the same weights, seed and
    generator); setup() joins the process group, shards the model and rebuilds the optimizer.
    """

    def __init__(self, cfg: Config, model_path: str, rank: int, world_size: int) -> None:
        super().__init__(cfg, model_path)
        self.rank, self.world_size, self.model_path = rank, world_size, model_path
        self.reducer: LocalReducer = LOCAL

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
        device = next(self.model.parameters()).device
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://{host}:{port}",
                                rank=self.rank, world_size=self.world_size,
                                timeout=timedelta(seconds=self.cfg.train.dist_init_timeout_s))
        mesh = new_mesh(device.type, self.world_size)
        self.root = PolicyModule(self.model, self.cfg.train.logit_chunk_rows)
        shard_policy(self.root, self.model, mesh)
        if self.cfg.train.use_ref_model:
            self.ref_model = sharded_reference(self.cfg, self.model_path, mesh, device)
        self.reducer = GroupReducer(self.world_size, device)
        self.build_optimizer()
        return self.rank

    def policy_forward(self, micro: RolloutBatch, with_prompt: bool = False, temperature: float | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        temperature = self.cfg.rollout.temperature if temperature is None else temperature
        with self.autocast():
            return self.root(micro, with_prompt, temperature)

    @torch.no_grad()
    def _ref_logprobs(self, micro: RolloutBatch, temperature: float) -> torch.Tensor:
        """The sharded reference's log-probs [B, T]: a collective, which every rank's scoring runs
        once per micro-batch (padding ones included)."""
        assert self.ref_model is not None
        with self.autocast():
            return self.ref_model(micro, False, temperature)[0]

    def run_plans(self, batch: RolloutBatch, plans: list[MiniBatchPlan],
                  loss_overrides: dict[str, Any] | None = None) -> dict[str, float]:
        if self.cfg.train.offload_optimizer:
            from rl_div.learner.single import move_optimizer_state

            move_optimizer_state(self.optimizer, to_cpu=False)
        return run_plans(self, batch, plans, self.rank, self.reducer, loss_overrides)

    def score_rows(self, batch: RolloutBatch, rows: list[list[int]], with_prompt: bool = False,
                   temperature: float | None = None) -> dict[str, torch.Tensor]:
        """score_policy of this rank's micro-batches (rows[k]; [] = a padding pass, dropped)."""
        parts: dict[str, list[torch.Tensor]] = {}
        self.model.eval()
        with torch.no_grad():
            for chunk in rows:
                got = Learner.score_policy(self, batch.select(chunk or [0]), with_prompt, temperature)
                for k, v in got.items():
                    if chunk:
                        parts.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in parts.items()}

    def get_weights(self) -> dict[str, torch.Tensor]:
        """Every rank joins the gather; rank 0 returns the full state dict in the engines' dtype (held
        twice on every rank; weight sync streams buckets instead, see sync_tensors)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.to(self.sync_dtype) for k, v in full.items()} if self.rank == 0 else {}

    def sync_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every rank gathers each sharded tensor in the same (state dict) order, one all-gather per
        tensor, so a rank holds one full tensor at a time; rank 0 yields them (CPU, engines' dtype),
        the other ranks yield nothing. get_weight_buckets on every rank: rank 0's payload ships."""
        from torch.distributed.tensor import DTensor

        for name, t in distinct_state(self.model):
            full = t.full_tensor() if isinstance(t, DTensor) else t
            if self.rank == 0:
                yield from cpu_engine_tensors([(name, full)], self.sync_dtype)



    # ---- checkpoints: reshardable DCP for model + optimizer, the HF policy/ folder from rank 0 ----
    def _dcp_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def save(self, ckpt_dir: str) -> None:
        """Every rank writes its shards to ckpt_dir/dcp (loadable at any world size); rank 0 writes
        policy/ (HF safetensors, the full weights) and the scheduler / generator / RNG state. The
        trainer saves into a temporary folder and renames it, so the checkpoint appears atomically."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        dcp.save(self._dcp_state(), checkpoint_id=str(Path(ckpt_dir) / "dcp"))
        if self.rank == 0:
            # tied weights once, under the name save_pretrained of the unsharded model uses
            names = {n for n, _ in self.model.named_parameters()} | {n for n, _ in self.model.named_buffers()}
            full = {k: v for k, v in full.items() if k in names}
            self.model.save_pretrained(Path(ckpt_dir) / "policy", state_dict=full, safe_serialization=True)
            self.tokenizer.save_pretrained(Path(ckpt_dir) / "policy")
            torch.save({"scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
                        "torch_rng": torch.get_rng_state(), "version": self.version,
                        "world_size": self.world_size}, Path(ckpt_dir) / "learner_state.pt")
        dist.barrier()

    def load(self, ckpt_dir: str) -> None:
        """Resume from a checkpoint that save() wrote with any number of ranks (DCP reshards), or that
        a single learner wrote."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        dcp_dir = Path(ckpt_dir) / "dcp"
        if dcp_dir.is_dir():
            state = self._dcp_state()
            dcp.load(state, checkpoint_id=str(dcp_dir))
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
        else:  # written by train.strategy 'single'
            from rl_div.learner.checkpoint_io import load_single_into_sharded

            load_single_into_sharded(self.model, self.optimizer, Path(ckpt_dir))
        saved = torch.load(Path(ckpt_dir) / "learner_state.pt", weights_only=True)
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        self.version = saved["version"]
