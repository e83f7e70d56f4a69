"""2-rank gloo jobs for the GPU-path tests (tests/test_dist_gpu_paths.py), run in spawned processes.

A learner can outlive one job (``_HELD``): the test then plays the driver, waiting for every rank's
job before it submits the next, as the trainer's ``ray.get`` over every rank's verb does.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from dist_jobs import _join, _leave, full_params
from helpers import rank_job_config

from rl_div.data import RolloutBatch
from rl_div.learner.plan import plan_batch

_HELD: dict[str, Any] = {}


def offload_job(rank: int, world: int, port: int, model_path: str, out: str, extra: list[str],
                batch: RolloutBatch, updates: int) -> dict[str, Any]:
    """`updates` planned updates with train.offload_optimizer (extra says so); after each, whether
    every AdamW state tensor is still a DTensor of the parameter's global shape and whether the
    release really copied its local shard (new storage). Returns those and the full parameters."""
    from torch.distributed.tensor import DTensor

    cfg = rank_job_config(model_path, out, extra)
    learner = _join(rank, world, port, cfg, model_path)
    checks = []
    for _ in range(updates):
        learner.run_plans(batch, plan_batch(batch, cfg, world, learner.version))  # claim ... release
        learner.claim_memory()
        before = {(id(p), k): v.to_local().data_ptr() for p, s in learner.optimizer.state.items()
                  for k, v in s.items() if isinstance(v, DTensor)}
        learner.release_memory()
        state = [(p, k, v) for p, s in learner.optimizer.state.items() for k, v in s.items() if v.dim() > 0]
        checks.append({
            "tensors": len(state),
            "all_dtensor": all(isinstance(v, DTensor) and v.shape == p.shape for p, _, v in state),
            "all_copied": all(v.to_local().data_ptr() != before[(id(p), k)] for p, k, v in state),
        })
    params = full_params(learner)
    _leave()
    return {"checks": checks, "params": params}


def save_job(rank: int, world: int, port: int, model_path: str, out: str, extra: list[str],
             batch: RolloutBatch, ckpt: str, write_delay_s: float) -> dict[str, Any]:
    """Join, one update, then save a checkpoint with rank 0's own writes slowed by write_delay_s (a
    slow shared file system); the learner stays held for ``after_save_job``. Returns the seconds the
    save took on this rank and the full parameters at the save."""
    cfg = rank_job_config(model_path, out, extra)
    learner = _join(rank, world, port, cfg, model_path)
    learner.run_plans(batch, plan_batch(batch, cfg, world, learner.version))
    if rank == 0:
        write = learner.model.save_pretrained

        def slow_write(*args: Any, **kwargs: Any) -> Any:
            time.sleep(write_delay_s)
            return write(*args, **kwargs)

        learner.model.save_pretrained = slow_write
    params = full_params(learner)
    started = time.monotonic()
    learner.save(ckpt)
    _HELD["learner"], _HELD["cfg"] = learner, cfg
    return {"seconds": time.monotonic() - started, "params": params}


def after_save_job(world: int, batch: RolloutBatch) -> dict[str, torch.Tensor]:
    """The held learner's next update (collectives on every rank), then its full parameters."""
    learner, cfg = _HELD.pop("learner"), _HELD.pop("cfg")
    learner.run_plans(batch, plan_batch(batch, cfg, world, learner.version))
    params = full_params(learner)
    _leave()
    return params
