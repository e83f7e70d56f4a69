"""A blown-up update stops the run in one line (issue 29 item 7). The learner is real (a tiny Llama,
AdamW); the parameter-norm ratio it reports is checked against the norms computed here by hand
before and after its one optimizer step."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from helpers import rank_job_config

from rl_div.config import load_config
from rl_div.learner.plan import plan_batch
from rl_div.learner.single import Learner
from rl_div.learner.update_loop import run_plans
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.tasks import TASKS
from rl_div.train.blowup import UpdateBlewUp, check_update


@pytest.fixture(scope="module")
def model_and_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    path = str(save_policy(make_tiny_llama(tok, seed=3), tok, tmp_path_factory.mktemp("m") / "tiny"))
    batch = HFRolloutWorker(path, dtype="float32", device="cpu").generate(
        TASKS["prime_gap"].make_prompts("train", 2, seed=0), SamplingSpec(n=2, max_new_tokens=6, seed=0))
    batch.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    return path, batch


def norm(model: torch.nn.Module) -> float:
    return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))


@pytest.mark.parametrize("lr", [1e-3, 1e30])
def test_the_learner_reports_how_far_one_step_moved_the_weights(model_and_batch: tuple, tmp_path: Path,
                                                                lr: float) -> None:
    path, batch = model_and_batch
    cfg = rank_job_config(path, str(tmp_path), [f"train.lr={lr}", "train.mini_batch_size=4"])
    learner = Learner(cfg, path)
    stats = learner.policy_stats(batch)
    batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
    before = norm(learner.model)
    metrics = run_plans(learner, batch, plan_batch(batch, cfg, 1, learner.version))
    assert metrics["train/optimizer_steps"] == 1
    expected = norm(learner.model) / before
    reported = metrics["train/param_norm_ratio_max"]
    if lr == 1e30:
        assert expected > 1e20
        # each tensor's norm is taken in its own dtype (float32): past 3.4e38 it reads inf, never a small number
        assert reported == pytest.approx(expected, rel=1e-5) or math.isinf(reported)
        with pytest.raises(UpdateBlewUp) as caught:
            check_update(7, metrics, lr, tmp_path)
        change = "overflowed or turned NaN" if math.isinf(reported) else f"changed {expected:.3g}-fold"
        assert str(caught.value) == (
            f"the update of step 7 blew up the policy (its parameter norm {change} in one optimizer step); stopped "
            "without saving it. Last good checkpoint: none yet. Likely cause: train.lr=1e+30 is far too large")
    else:
        assert reported == pytest.approx(expected, rel=1e-5) and abs(expected - 1) < 1e-2
        check_update(7, metrics, lr, tmp_path)  # healthy: nothing raised


def test_a_non_finite_ratio_stops_and_a_missing_one_does_not(tmp_path: Path) -> None:
    with pytest.raises(UpdateBlewUp, match="Likely cause: a step too large for this model"):
        check_update(3, {"train/param_norm_ratio_max": float("nan")}, 1e-4, tmp_path)
    check_update(3, {}, 1e-4, tmp_path)  # no optimizer step took place


def test_a_learning_rate_above_the_bound_warns_at_config_load(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rl_div"):
        load_config(None, ["train.lr=1e30"])
        load_config(None, ["train.lr=0.001"])
    assert [r.getMessage() for r in caplog.records if r.name == "rl_div"] == [
        "train.lr=1e+30 is above 0.1: AdamW steps that large usually destroy the model"]
