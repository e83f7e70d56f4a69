"""Metric reads deferred to the end of the update (rl_div.learner.metric_sums.resolve): the learner's
update loop sums metrics that arrive as device tensors on the device and reads them once, and the
metrics are exactly those of reading every value at once (the rule as it was, transcribed below)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import tiny_prime_gap_llama

import rl_div.learner.metric_sums as metric_sums
import rl_div.learner.update_loop as update_loop
from rl_div.config import load_config
from rl_div.learner.single import Learner
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.tasks import TASKS


def eager_add_metric(sums: dict[str, float], key: str, value: float, weight: float = 1.0) -> None:
    """add_metric before the deferral: every value read into a Python float at once."""
    value = float(value)
    if key.endswith("_max"):
        sums[key] = max(sums.get(key, value), value)
    else:
        sums[key] = sums.get(key, 0.0) + (value * weight if weight else 0.0)


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("key", ["loss/pg", "loss/ratio_max"])
def test_tensor_values_sum_and_max_exactly_as_floats(key: str) -> None:
    values = [0.1234567, float("nan"), -2.5, 7.0000001, 3.0, float("nan")]
    weights = [0.3, 0.0, 1.0 / 3.0, 0.25, 0.0, 0.0]
    for order in (values, values[::-1], values[1:]):  # a NaN first, last and in the middle
        eager: dict[str, float] = {}
        deferred: dict[str, metric_sums.Metric] = {}
        for v, w in zip(order, weights, strict=False):
            eager_add_metric(eager, key, torch.tensor(v, dtype=torch.float32), w)
            metric_sums.add_metric(deferred, key, torch.tensor(v, dtype=torch.float32), w)
            metric_sums.add_metric(deferred, "plain/" + key, v, w)  # floats stay floats
            eager_add_metric(eager, "plain/" + key, v, w)
        assert isinstance(deferred[key], torch.Tensor)
        got = metric_sums.resolve(deferred)
        assert list(got) == list(deferred)
        assert all(same(got[k], eager[k]) for k in eager), (got, eager)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_prime_gap_llama(tmp_path_factory.mktemp("m"), seed=4)


def update_metrics(model_path: str, out: Path) -> dict[str, float]:
    """Two real updates (3 micro-batches per step, PPO clip, KL) of a fresh learner; the second's metrics."""
    cfg = load_config(None, [f"model.path={model_path}", f"run.output_dir={out}", "train.lr=1e-2",
                             "train.micro_batch_size=3", "train.mini_batch_size=8", "train.use_ref_model=true",
                             "algo.loss_params={kl_coef: 0.01}"])
    learner = Learner(cfg, model_path)
    batch = HFRolloutWorker(model_path, device="cpu").generate(TASKS["prime_gap"].make_prompts("train", 4, seed=0),
                                                               SamplingSpec(n=4, max_new_tokens=8, seed=0))
    batch.advantages = torch.linspace(-1.0, 1.0, batch.size)
    for _ in range(2):
        stats = learner.policy_stats(batch)
        batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
        batch.ref_logprobs = stats["ref_logprobs"]
        metrics = learner.update(batch)
    return metrics


def test_update_metrics_are_those_of_reading_every_value_at_once(model_path: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real_resolve = metric_sums.resolve

    def counted(sums: dict[str, metric_sums.Metric]) -> dict[str, float]:
        reads.append(sum(isinstance(v, torch.Tensor) for v in sums.values()))
        return real_resolve(sums)

    monkeypatch.setattr(update_loop, "resolve", counted)
    deferred = update_metrics(model_path, tmp_path / "deferred")
    # one process: the step sums stay on the device; the update reads them once (2 updates)
    assert len(reads) == 2 and all(n > 0 for n in reads)
    monkeypatch.setattr(metric_sums, "add_metric", eager_add_metric)
    monkeypatch.setattr(update_loop, "add_metric", eager_add_metric)
    real_masked_mean = update_loop.masked_mean
    monkeypatch.setattr(update_loop, "masked_mean", lambda x, m: float(real_masked_mean(x, m)))
    eager = update_metrics(model_path, tmp_path / "eager")
    assert deferred["train/optimizer_steps"] == 2
    assert set(deferred) == set(eager)
    assert all(same(deferred[k], eager[k]) for k in eager), {k: (deferred[k], eager[k]) for k in eager}
