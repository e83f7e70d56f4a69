"""The update loop that the single learner and every FSDP2 rank run: one place for the counting
(optimizer steps, skipped mini-batches, non-finite steps), the skip rule, the non-finite rule and
the metric reduction (rl_div.learner.metric_sums).

An update is a sequence of MiniBatchPlans (rl_div.learner.plan): the driver's plans for FSDP2, the
single learner's own (Learner.mini_batch_plans) otherwise. Each rank runs its own rows'
micro-batches, divides every loss by the mini-batch's GLOBAL token / sequence counts, and FSDP2
sums (not averages) the gradients, so the update is one process's at any world size.

- Skip rule: a plan marked skip (no advantage signal and no term acting without one, decided on
  the global mini-batch), or a fused row-local advantage that finished all zero
  (ShapingLeftNoSignal), takes no step; counted in train/skipped_zero_signal.
- Non-finite rule: a non-finite micro-batch loss on any rank (a MAX-reduced flag) or a non-finite
  global gradient norm takes no step on any rank; counted in faults/nonfinite_loss. With several
  ranks every rank runs all its passes first, so no rank waits in a collective the others never
  join; one process stops at the first non-finite loss.
- Metrics: each micro-batch's metric weighted by its share of what the metric averages over,
  summed over ranks (reducer.sum_dict), then the mean over the update's optimizer steps. Metrics that
  arrive as device tensors are summed on the device and read once, at the end of the update (one
  process) or of the step (several ranks, before their sum is exchanged) (metric_sums.resolve).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from rl_div.algos import LOSSES
from rl_div.learner.fused_advantage import ShapingLeftNoSignal
from rl_div.learner.metric_sums import TOKEN_AGG, Metric, Units, add_metric, add_micro_metrics, mean_over_steps, resolve
from rl_div.learner.plan import MiniBatchPlan, loss_mask, token_weights_over_mini_batch
from rl_div.learner.reducers import LOCAL, LocalReducer, mini_batch_token_weights
from rl_div.metrics.entropy import masked_mean

if TYPE_CHECKING:
    from rl_div.data import RolloutBatch
    from rl_div.learner.single import Learner


def mask_units(mask: torch.Tensor) -> Units:
    """Valid tokens and responses (rows with a valid token) of a [b, T] response mask."""
    valid = mask.bool()
    return Units(tokens=float(valid.sum()), responses=float(valid.any(dim=1).sum()))


def loss_param(learner: Learner, name: str, default: Any) -> Any:
    """The loss's parameter `name` as the update uses it: loss_params, else the loss function's
    own default (else `default`), so the metric rule reads the mode the loss aggregated with."""
    if name in learner.loss_params:
        return learner.loss_params[name]
    param = inspect.signature(LOSSES[learner.cfg.algo.loss]).parameters.get(name)
    return default if param is None or param.default is inspect.Parameter.empty else param.default


def planned_step(learner: Learner, batch: RolloutBatch, plan: MiniBatchPlan, rank: int = 0,
                 reducer: LocalReducer = LOCAL) -> dict[str, Metric] | None:
    """One optimizer step of a planned mini-batch on `rank`; None (and no step, on every rank) if a
    loss or the gradient norm was not finite anywhere; raises ShapingLeftNoSignal (no step) when a
    fused row-local advantage finished all zero. Returns the step's metrics, combined over the
    micro-batches and ranks by the rule of rl_div.learner.metric_sums.

    Token weights (train.token_weight_scope): "micro" computes them per micro-batch (STEER's
    max|Omega| is per micro-batch as its definition says; for high_entropy_mask, clip_cov and
    kl_cov the "top fraction" is then of the micro-batch); "mini" computes them once over the
    mini-batch (rl_div.learner.reducers, one extra no-grad forward)."""
    cfg = learner.cfg
    mini = batch.select(plan.rows)
    where = {row: i for i, row in enumerate(plan.rows)}
    positions = [[[where[r] for r in m] for m in micros] for micros in plan.micro]
    whole = Units(tokens=plan.token_total, responses=plan.seq_total)
    agg, tis = loss_param(learner, "agg", TOKEN_AGG), loss_param(learner, "tis", "token")
    learner.optimizer.zero_grad(set_to_none=True)
    mini_token_weights = None
    sums: dict[str, Metric] = {}
    if token_weights_over_mini_batch(cfg):
        mini_token_weights = mini_batch_token_weights(learner, mini, positions, rank, reducer)
    bad = 0.0
    for pos in positions[rank]:
        micro = mini.select(pos or [0])  # padding: a pass on row 0 whose loss is multiplied by 0
        given = None if mini_token_weights is None else mini_token_weights.at(pos or [0])
        out, token_weight_out, entropy, mask = learner.micro_loss(micro, plan.token_total, plan.seq_total, given)
        if pos and not torch.isfinite(out.loss):
            bad = 1.0
            if reducer.world_size == 1:
                break  # nothing waits in a collective: stop at the first one (no more generator draws)
        # FSDP2 averages gradients over ranks; the loss already divides by the global counts
        (out.loss * reducer.world_size if pos else out.loss * 0.0).backward()
        if not pos:
            continue
        parts = {**out.metrics, **(token_weight_out.metrics if given is None else {})}
        parts["policy/entropy_train"] = masked_mean(entropy.detach(), mask)  # read at the end (resolve)
        # units from the CPU copy of the loss mask (the same values): no device read per micro-batch
        add_micro_metrics(sums, parts, mask_units(loss_mask(micro, cfg)), whole, agg, tis)
    sums = reducer.sum_dict(resolve(sums)) if reducer.world_size > 1 else sums
    if mini_token_weights is not None:
        sums.update(mini_token_weights.metrics)
    any_bad = float(reducer.max(torch.tensor(bad))) > 0
    norm = torch.nn.utils.clip_grad_norm_(learner.model.parameters(), cfg.train.max_grad_norm)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if any_bad:
        learner.optimizer.zero_grad(set_to_none=True)
        return None
    learner.check_shaped_signal()
    if not torch.isfinite(torch.tensor(grad_norm)):
        learner.optimizer.zero_grad(set_to_none=True)
        return None
    before = parameter_norm(learner.model, reducer)
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)  # gradients would otherwise live until the next step
    learner.scheduler.step()
    learner.version += 1
    sums["train/grad_norm"] = grad_norm
    # how much one step moved the weights' scale: ~1 in healthy training, huge or non-finite when an
    # update blew the policy up (the driver stops the run on it: rl_div.train.blowup)
    sums["train/param_norm_ratio_max"] = parameter_norm(learner.model, reducer) / max(before, 1e-30)
    return sums


def parameter_norm(model: torch.nn.Module, reducer: LocalReducer) -> float:
    """The L2 norm of all of the model's parameters (every rank's shards): each tensor's norm on its
    device (no copy), their squares summed in float64; a blown-up parameter shows as a huge or
    non-finite norm."""
    tensors = [(p.to_local() if hasattr(p, "to_local") else p).detach() for p in model.parameters()]
    norms = [torch.linalg.vector_norm(t).float() for t in tensors if t.numel()]  # a rank may hold no shard
    local = float(torch.stack(norms).double().pow(2).sum()) if norms else 0.0
    return math.sqrt(reducer.sum_dict({"sq": local})["sq"])


def run_plans(learner: Learner, batch: RolloutBatch, plans: Iterable[MiniBatchPlan], rank: int = 0,
              reducer: LocalReducer = LOCAL, loss_overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """An update: planned_step for each plan in turn, counted and reduced to the update's metrics.

    plans may be lazy (the single learner's are made as the loop asks for them, after the previous
    step); loss_overrides: loss parameters merged over algo.loss_params for this update (the
    collapse guard's entropy_coef)."""
    learner.loss_params = {**learner.cfg.algo.loss_params, **(loss_overrides or {})}
    learner.model.train()
    learner.claim_memory()
    sums: dict[str, Metric] = {}
    counts = {"train/optimizer_steps": 0, "train/skipped_zero_signal": int(batch.size == 0),
              "faults/nonfinite_loss": 0}
    for plan in plans:
        if plan.skip:
            counts["train/skipped_zero_signal"] += 1
            continue
        try:
            step = planned_step(learner, batch, plan, rank, reducer)
        except ShapingLeftNoSignal:
            counts["train/skipped_zero_signal"] += 1
            continue
        if step is None:
            counts["faults/nonfinite_loss"] += 1
            continue
        counts["train/optimizer_steps"] += 1
        for k, v in step.items():
            add_metric(sums, k, v)
    learner.release_memory()
    metrics = mean_over_steps(resolve(sums), counts["train/optimizer_steps"])  # the update's one metric read
    metrics.update({k: float(v) for k, v in counts.items()})
    metrics["train/lr"] = learner.scheduler.get_last_lr()[0]
    return metrics
