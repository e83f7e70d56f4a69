"""Jobs of tests/test_dist_fsdp_precision.py, run in spawned processes (importable by name there):
the sharded learner's load-once path and its bf16 MixedPrecisionPolicy."""

from __future__ import annotations

from typing import Any

import torch
from dist_jobs import _leave, full_params
from helpers import rank_job_config

from rl_div.data import RolloutBatch
from rl_div.learner.plan import plan_batch


def load_job(rank: int, world: int, port: int, model_path: str, out: str, extra: list[str]) -> dict[str, Any]:
    """Build a ShardedLearner, note where its parameters live before setup, set it up; return the full
    parameters, the buffers and whether the LM head is still tied to the embeddings."""
    from rl_div.learner.fsdp2 import ShardedLearner

    learner = ShardedLearner(rank_job_config(model_path, out, extra), model_path, rank, world)
    devices_before = {p.device.type for p in learner.model.parameters()}
    learner.setup(("127.0.0.1", port))
    model = learner.model
    result = {"devices_before": devices_before, "params": full_params(learner),
              "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
              "tied": model.get_output_embeddings().weight is model.get_input_embeddings().weight}
    _leave()
    return result


def stats_and_train_job(rank: int, world: int, port: int, model_path: str, out: str, extra: list[str],
                        batch: RolloutBatch, updates: int) -> dict[str, Any]:
    """policy_stats of the whole batch (every rank runs the same forwards), then `updates` planned
    updates; returns the stats, the metrics and the full parameters."""
    from rl_div.learner.fsdp2 import ShardedLearner

    cfg = rank_job_config(model_path, out, extra)
    learner = ShardedLearner(cfg, model_path, rank, world)
    learner.setup(("127.0.0.1", port))
    seen: set[str] = set()  # the dtype a layer's weight has while the layer computes (FSDP2's unsharded one)
    proj = learner.model.model.layers[0].self_attn.q_proj
    hook = proj.register_forward_pre_hook(lambda module, _: seen.add(str(module.weight.dtype)))
    stats = learner.policy_stats(batch)
    hook.remove()
    metrics = [learner.run_plans(batch, plan_batch(batch, cfg, world, learner.version)) for _ in range(updates)]
    params = full_params(learner)
    dtypes = {str(p.dtype) for p in learner.model.parameters()}  # the sharded (master) parameters
    _leave()
    return {"stats": stats, "metrics": metrics, "params": params, "dtypes": dtypes, "compute_dtypes": seen}


def plain_stats(model_path: str, out: str, extra: list[str], batch: RolloutBatch) -> dict[str, torch.Tensor]:
    """policy_stats of the plain (single) Learner under autocast: the one-process bf16 reference."""
    from rl_div.learner.single import Learner

    return Learner(rank_job_config(model_path, out, extra), model_path).policy_stats(batch)
