"""A demo run with train.packing against the same run padded, same seed (real Ray actors, the
bootstrapped model): every logged training metric equal up to float summation order, the same final
weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_e2e import base_model, final_weights, make_cfg, train_rows  # noqa: F401  (module fixture)

from rl_div.train.loop import train

pytestmark = pytest.mark.slow


def test_demo_run_packed_equals_padded(tmp_path: Path, base_model: str) -> None:  # noqa: F811
    common = ("train.steps=3", "train.lr=0.01", "train.micro_batch_size=5", "rollout.max_new_tokens=12",
              "checkpoint.every=3", "algo.token_weight=steer")
    outs = {packed: train(make_cfg(tmp_path / str(packed), base_model, *common, f"train.packing={packed}"))
            for packed in (False, True)}

    def comparable(rows: list[dict]) -> dict[int, dict]:
        return {r["step"]: {k: v for k, v in r.items() if not k.startswith("time") and k != "kind"} for r in rows}

    padded, packed = comparable(train_rows(outs[False])), comparable(train_rows(outs[True]))
    assert padded.keys() == packed.keys() == {1, 2, 3}
    assert padded[3]["policy/version"] > 0, "the run must actually have updated the policy"
    assert padded[1]["rollout/response_len"] < 12  # rows that end early: padding for packing to remove
    for step in padded:
        assert packed[step] == pytest.approx(padded[step], rel=1e-4, abs=1e-6, nan_ok=True), step
    a, b = final_weights(outs[False]), final_weights(outs[True])
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)
