"""train.lora end to end through Ray on the bootstrapped demo model: adapter sync to hf rollout actors
(object-store buckets) with the KL reference from the same module, and --resume exact (2 + 2 == 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from rl_div.config import Config, load_config
from rl_div.run.tracking import read_metrics
from rl_div.train.loop import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_model(bootstrapped_prime_gap: Path) -> str:
    yield str(bootstrapped_prime_gap)
    if ray.is_initialized():
        ray.shutdown()


def lora_cfg(out: Path, base_model: str, *overrides: str) -> Config:
    return load_config(None, [
        f"model.path={base_model}", f"run.output_dir={out}", "rollout.prompts_per_step=4", "rollout.group_size=4",
        "eval.every=0", "eval.at_start=false", "eval.at_end=false", "eval.embedding_metrics=false",
        "data.num_eval_prompts=4", "tracking.progress=false", "tracking.tensorboard=false", "cluster.num_cpus=2",
        "train.lora.enabled=true", "train.lora.rank=4", "train.use_ref_model=true",
        "algo.loss_params={kl_coef: 0.05}", "train.lr=0.02", "checkpoint.every=2",
        "rollout.weight_sync_chunk_mb=0.01", *overrides])


def test_lora_resume_2_plus_2_equals_4_with_adapter_sync(tmp_path: Path, base_model: str) -> None:
    full = train(lora_cfg(tmp_path / "a", base_model, "train.steps=4"))
    train(lora_cfg(tmp_path / "b", base_model, "train.steps=2"))
    resumed = train(lora_cfg(tmp_path / "b", base_model, "train.steps=4"), resume=True)
    ckpt_a, ckpt_b = (sorted((o / "checkpoints").glob("step_*"))[-1] for o in (full, resumed))
    for part in ("policy/model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(str(ckpt_a / part)), load_file(str(ckpt_b / part))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    rows_a = read_metrics(full / "metrics.jsonl", kind="train")
    rows_b = {r["step"]: r for r in read_metrics(resumed / "metrics.jsonl", kind="train")}
    assert rows_a[-1]["policy/version"] > 0
    for r in rows_a:
        # after every adapter sync the sampler's log-probs equal the learner's to float32 rounding
        assert r["sync/logprob_gap_max"] < 1e-5, r["sync/logprob_gap_max"]
        if r["step"] > 2:  # every logged number of the resumed steps (timings aside)
            same = {k: v for k, v in r.items() if not k.startswith("time") and k != "kind"}
            other = {k: v for k, v in rows_b[r["step"]].items() if not k.startswith("time") and k != "kind"}
            assert same == pytest.approx(other, rel=1e-6, abs=1e-7, nan_ok=True)
