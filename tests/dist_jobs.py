"""Jobs that the 2-rank gloo tests run in spawned processes (importable by name in the children).

Each job joins a fresh process group (rank, world, port), builds a ShardedLearner from a config,
runs, returns plain tensors / numbers, and leaves the process group, so one spawned pool serves
every test of a module.
"""

from __future__ import annotations

from typing import Any

import torch
from helpers import rank_job_config

from rl_div.data import RolloutBatch
from rl_div.learner.plan import plan_batch


def full_params(learner: Any) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(learner.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _join(rank: int, world: int, port: int, cfg: Any, model_path: str) -> Any:
    from rl_div.learner.fsdp2 import ShardedLearner

    learner = ShardedLearner(cfg, model_path, rank, world)
    learner.setup(("127.0.0.1", port))
    return learner


def _leave() -> None:
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def train_job(rank: int, world: int, port: int, model_path: str, out: str, extra: list[str],
              batch: RolloutBatch, updates: int, nan_rank: int | None = None, load: str | None = None,
              save_after: int | None = None, save: str | None = None) -> dict[str, Any]:
    """`updates` planned updates on the same batch; returns rank's metrics and the full parameters.
    nan_rank: that rank's rows of the first mini-batch get NaN old log-probs (a rank-local fault);
    load: a checkpoint to resume from first; save: where to checkpoint after `save_after` updates."""
    cfg = rank_job_config(model_path, out, extra)
    learner = _join(rank, world, port, cfg, model_path)
    if load:
        learner.load(load)
    metrics = []
    for i in range(updates):
        if save and i == save_after:
            learner.save(save)
        plans = plan_batch(batch, cfg, world, learner.version)
        data = batch
        if nan_rank is not None:
            data = batch.select(list(range(batch.size)))
            bad = [r for m in plans[0].micro[nan_rank] for r in m]
            assert bad, "the NaN rank must own rows"
            data.old_logprobs[bad] = float("nan")
        metrics.append(learner.run_plans(data, plans))
    params = full_params(learner)
    _leave()
    return {"metrics": metrics, "params": params}


def weights_job(rank: int, world: int, port: int, model_path: str, out: str, extra: list[str],
                batch: RolloutBatch) -> dict[str, Any]:
    """The token weights of the first planned mini-batch, computed across the ranks."""
    from rl_div.learner.reducers import mini_batch_token_weights

    cfg = rank_job_config(model_path, out, extra)
    learner = _join(rank, world, port, cfg, model_path)
    plan = plan_batch(batch, cfg, world, 0)[0]
    where = {row: i for i, row in enumerate(plan.rows)}
    positions = [[[where[r] for r in m] for m in micros] for micros in plan.micro]
    out_w = mini_batch_token_weights(learner, batch.select(plan.rows), positions, rank, learner.reducer).out
    _leave()
    return {"weights": out_w.weights, "coef": out_w.kl_penalty_coef, "metrics": out_w.metrics, "rows": plan.rows}


def with_stats(batch: RolloutBatch, stats: dict[str, torch.Tensor]) -> RolloutBatch:
    """A copy of batch holding policy_stats's old / reference log-probs and entropies."""
    data = batch.select(list(range(batch.size)))
    data.old_logprobs, data.old_entropy = stats["old_logprobs"], stats["old_entropy"]
    data.ref_logprobs = stats.get("ref_logprobs")
    return data


def ref_job(rank: int, world: int, port: int, model_path: str, out: str, extra: list[str],
            batch: RolloutBatch, updates: int) -> dict[str, Any]:
    """`updates` rounds of what the trainer does each step with a reference model: score the batch
    (each rank its chunk of rows, as LearnerGroup.policy_stats splits them, gathered in row order),
    then one planned update. Returns rank's reference log-probs and metrics of every round, the
    full parameters, and its reference parameters' (local, full) numbers of elements."""
    from rl_div.cluster.learner_group import policy_stats_chunks

    cfg = rank_job_config(model_path, out, extra)
    learner = _join(rank, world, port, cfg, model_path)
    t = cfg.train
    cost = (batch.prompt_mask.sum(dim=1) + batch.response_mask.sum(dim=1)).tolist()
    chunks = policy_stats_chunks(batch.size, cost, world, t.micro_batch_size, t.max_tokens_per_micro_batch)
    rounds = []
    for _ in range(updates):
        scored = learner.policy_stats_of_rows(batch, chunks[rank])
        data = with_stats(batch, {k: torch.cat(learner.reducer.gather(v)) for k, v in scored.items()})
        metrics = learner.run_plans(data, plan_batch(data, cfg, world, learner.version))
        rounds.append({"ref_logprobs": data.ref_logprobs, "metrics": metrics})
    sizes = {} if learner.ref_model is None else {  # LoRA: no reference model (the policy, adapters disabled)
        n: (p.to_local().numel(), p.numel()) for n, p in learner.ref_model.named_parameters()}
    params = full_params(learner)
    _leave()
    return {"rounds": rounds, "params": params, "ref_sizes": sizes}


def perturb_adapters(learner: Any) -> None:
    """lora_B away from its 0 start by the same value everywhere, on any learner (a rank: its own shards)."""
    with torch.no_grad():
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                (p.to_local() if hasattr(p, "to_local") else p).fill_(0.05)


def lora_sync_job(rank: int, world: int, port: int, model_path: str, out: str, extra: list[str]) -> dict[str, Any]:
    """What a LoRA learner's weight sync streams (every rank joins the gathers): rank's (name, tensor) list."""
    cfg = rank_job_config(model_path, out, extra)
    learner = _join(rank, world, port, cfg, model_path)
    perturb_adapters(learner)
    shipped = list(learner.sync_tensors())
    _leave()
    return {"tensors": shipped}
