"""train.packing on 2 FSDP2 ranks over gloo (real torch.distributed, spawned processes): the packed
update equals the padded one at the same world size, and the one-process padded update, for every
token weight and every loss aggregation (tests/test_dist_fsdp.py's processes, fixtures and batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dist_jobs
import pytest
import torch
from test_dist_fsdp import COMMON, batch, model_path, off_policy_batch, on_two_ranks, one_process, pool  # noqa: F401
from test_packing import AGGS, WEIGHT_PARAMS

# every token weight once, the aggregations in turn (test_packing.py crosses them all in one process)
CASES = [(weight, AGGS[i % len(AGGS)]) for i, weight in enumerate(WEIGHT_PARAMS)]


@pytest.mark.parametrize(("weight", "agg"), CASES)
def test_packed_two_ranks_equal_padded(pool: Any, model_path: str, batch: Any, tmp_path: Path,  # noqa: F811
                                       weight: str, agg: str) -> None:
    data = off_policy_batch(batch)
    extra = [*COMMON, f"algo.loss_params={{agg: {agg}}}", f"algo.token_weight={weight}", *WEIGHT_PARAMS[weight]]
    runs = {packed: on_two_ranks(pool, dist_jobs.train_job, model_path, str(tmp_path),
                                 [*extra, f"train.packing={packed}"], data, 2) for packed in (False, True)}
    _, reference = one_process(model_path, str(tmp_path), extra, data, 2)
    assert runs[True][0]["metrics"] == runs[True][1]["metrics"]
    for got, want, one in zip(runs[True][0]["metrics"], runs[False][0]["metrics"], reference, strict=True):
        assert want["train/optimizer_steps"] == 2
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6, nan_ok=True)
        assert got == pytest.approx(one, rel=1e-4, abs=1e-6, nan_ok=True)
    padded = runs[False][0]["params"]
    for name, p in runs[True][0]["params"].items():
        assert torch.allclose(p, padded[name], atol=1e-5, rtol=0), name
