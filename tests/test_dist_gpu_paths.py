"""GPU-path defects that 2 gloo ranks can show on CPU: FSDP2's offloaded AdamW state (DTensors) and
a checkpoint whose rank-0 write outlasts the process group's collective timeout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dist_gpu_jobs
import pytest
import torch
from safetensors.torch import load_file
from test_dist_fsdp import COMMON, RankPools, free_port, on_two_ranks, one_process
from test_dist_fsdp import batch as batch  # noqa: F401 (fixtures)
from test_dist_fsdp import model_path as model_path  # noqa: F401

from rl_div.learner.fsdp2 import run_plans
from rl_div.learner.plan import plan_batch


@pytest.fixture(scope="module")
def pool() -> Iterator[RankPools]:
    pools = RankPools()
    yield pools
    pools.close()


def test_fsdp2_offloaded_optimizer_state_moves_local_shards_and_trains_identically(
        pool: RankPools, model_path: str, batch: Any, tmp_path: Path) -> None:  # noqa: F811
    """train.offload_optimizer on 2 FSDP2 ranks: every release copies each rank's local shard and
    keeps the DTensor (mesh, placements, global shape); 2 updates equal one process without offload."""
    extra = [*COMMON, "train.offload_optimizer=true"]
    ranks = on_two_ranks(pool, dist_gpu_jobs.offload_job, model_path, str(tmp_path), extra, batch, 2)
    for r in ranks:
        for check in r["checks"]:
            assert check["tensors"] > 0
            assert check["all_dtensor"] and check["all_copied"], check
    ref, _ = one_process(model_path, str(tmp_path), COMMON, batch, 2)
    for name, p in ref.model.state_dict().items():
        assert torch.allclose(ranks[0]["params"][name], p, atol=1e-5, rtol=0), name


def save_then_update(pool: RankPools, model_path: str, out: Path, extra: list[str], batch: Any,
                     delay_s: float) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """2 ranks: one update, a checkpoint into out/ckpt (rank 0's writes delayed by delay_s), then,
    once every rank's save returned (the driver's join), one more update. Returns each rank's save
    result and rank 0's parameters after the second update."""
    port = free_port()
    saves = [pool.processes[r].submit(dist_gpu_jobs.save_job, r, 2, port, model_path, str(out), extra, batch,
                                      str(out / "ckpt"), delay_s) for r in range(2)]
    results = [f.result(timeout=600) for f in saves]
    after = [pool.processes[r].submit(dist_gpu_jobs.after_save_job, 2, batch) for r in range(2)]
    return results, [f.result(timeout=600) for f in after][0]


def exported(ckpt: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in (ckpt / "policy").glob("*.safetensors") for k, v in load_file(str(f)).items()}


def test_slow_rank0_checkpoint_write_outlasts_the_collective_timeout(
        pool: RankPools, model_path: str, batch: Any, tmp_path: Path) -> None:  # noqa: F811
    """Rank 0's policy/ export takes longer than train.dist_init_timeout_s (the collective timeout):
    no rank waits for it in a collective, the next update runs on both ranks and equals one process's."""
    timeout_s, delay_s = 6.0, 10.0
    extra = [*COMMON, f"train.dist_init_timeout_s={timeout_s}"]
    saves, params = save_then_update(pool, model_path, tmp_path, extra, batch, delay_s)
    assert saves[0]["seconds"] >= delay_s > timeout_s > saves[1]["seconds"]  # rank 1 did not wait for rank 0
    ref, _ = one_process(model_path, str(tmp_path), extra, batch, 1)
    at_save = {k: v.clone() for k, v in ref.model.state_dict().items()}
    run_plans(ref, batch, plan_batch(batch, ref.cfg, 1, ref.version))
    for name, p in ref.model.state_dict().items():
        assert torch.allclose(params[name], p, atol=1e-5, rtol=0), name
    for name, v in exported(tmp_path / "ckpt").items():
        assert torch.allclose(v, at_save[name], atol=1e-5, rtol=0), name


def test_policy_export_is_in_model_dtype(pool: RankPools, model_path: str, batch: Any,  # noqa: F811
                                         tmp_path: Path) -> None:
    saves, _ = save_then_update(pool, model_path, tmp_path, [*COMMON, "model.dtype=bfloat16"], batch, 0.0)
    weights = exported(tmp_path / "ckpt")
    assert weights and all(v.dtype == torch.bfloat16 for v in weights.values())
    for name, v in weights.items():  # the float32 masters at the save, cast once
        assert torch.equal(v, saves[0]["params"][name].to(torch.bfloat16)), name


def test_export_policy_false_writes_no_policy_folder(pool: RankPools, model_path: str, batch: Any,  # noqa: F811
                                                     tmp_path: Path) -> None:
    save_then_update(pool, model_path, tmp_path, [*COMMON, "checkpoint.export_policy=false"], batch, 0.0)
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "dcp").is_dir() and (ckpt / "learner_state.pt").exists()
    assert not (ckpt / "policy").exists()
