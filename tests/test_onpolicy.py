"""The on-policy path without the separate pi_old forward (rl_div.learner.onpolicy, Learner.update_on_policy):
when it applies, and that a step on it logs the same metrics and trains the same weights as a step
with policy_stats first. Real Learner, real tiny Llama, real HF sampling; no Ray (the trainer's
wiring is covered by tests/test_train_e2e.py::test_on_policy_steps_skip_the_separate_forward)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import tiny_prime_gap_llama

from rl_div.algos import ADVANTAGES
from rl_div.algos.advantage_base import AdvantageInputs
from rl_div.config import Config, load_config
from rl_div.data import RolloutBatch
from rl_div.learner.onpolicy import (
    active_dropout,
    fuses_policy_forward,
    needs_policy_logprobs,
    needs_prompt_logprobs,
    separate_forward,
)
from rl_div.learner.single import Learner
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.tasks import TASKS
from rl_div.train.advantage_stage import compute_advantages
from rl_div.train.step_stats import rollout_health, step_diversity

BASE = ["rollout.prompts_per_step=4", "rollout.group_size=4", "train.micro_batch_size=8", "train.lr=1e-2",
        "rollout.max_new_tokens=8"]


def cfg_of(*overrides: str) -> Config:
    return load_config(None, [*BASE, *overrides])


# ---- the decision -----------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "fused"), [
    ([], True),
    (["algo=steer"], True),
    (["algo.loss_params.kl_coef=0.1", "train.use_ref_model=true"], True),
    (["algo=passk"], True),
    (["algo=unlikeliness"], True),  # reads the sampler's log-probs, which the rollout brings
    (["train.mini_batch_size=16"], True),  # one mini-batch holding the whole batch
    (["algo=arm"], True),  # row-local: finished from each micro-batch's own forward
    (["algo=arm", "algo.token_weight=steer"], True),  # micro-batch token weights see the final advantages
    (["algo=arm", "algo.token_weight=steer", "train.token_weight_scope=mini"], False),
    (["algo=arm", "train.mini_batch_size=8"], False),
    (["train.ppo_epochs=2"], False),
    (["train.mini_batch_size=8"], False),  # two optimizer steps per batch of 16
    (["run.plugins=[plugins.my_algos]", "algo.advantage=test_raw_reward"], False),  # says nothing: kept
    (["run.plugins=[plugins.my_algos]", "algo.advantage=test_reward_only"], True),  # declares no log-probs
    (["run.plugins=[plugins.my_algos]", "algo.advantage=test_legacy_reward_only"], True),  # the old attribute
    (["run.plugins=[plugins.my_algos]", "algo.advantage=test_prompt_reader"], False),  # declares prompt log-probs
    (["run.plugins=[plugins.my_algos]", "algo.token_weight=test_half_weights"], True),
    # a plugin token weight declaring nothing reweights by default: over the mini-batch it reads pi_old first
    (["run.plugins=[plugins.my_algos]", "algo.token_weight=test_half_weights", "train.token_weight_scope=mini"],
     False),
    (["algo.token_weight=none", "train.token_weight_scope=mini"], True),  # none declares it does not reweight
    # token-local weights are the same over any token set: no mini-batch pass, no separate forward
    (["algo=entropy_advantage", "train.token_weight_scope=mini"], True),
    (["algo=repo"], True),  # row-local, like ARM
    (["algo=repo", "train.mini_batch_size=8"], False),
])
def test_when_the_update_forward_is_pi_old(overrides: list[str], fused: bool) -> None:
    assert fuses_policy_forward(cfg_of(*overrides), dropout=[])[0] is fused


def test_dropout_keeps_the_separate_forward() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))
    found = active_dropout(gpt2)  # GPT-2's defaults drop out 10% in three places
    assert "config.attn_pdrop" in found and "transformer.drop" in found
    assert fuses_policy_forward(cfg_of(), found)[0] is False
    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    assert active_dropout(make_tiny_llama(tok)) == []  # the demo's / bench's Llama: attention_dropout 0


def test_a_failed_reward_brings_the_separate_forward_back() -> None:
    assert separate_forward(True, torch.tensor([1.0, 0.0])) is False
    assert separate_forward(True, torch.tensor([1.0, float("nan")])) is True
    assert separate_forward(False, torch.tensor([1.0, 0.0])) is True


@pytest.mark.parametrize("name", sorted(ADVANTAGES.names()))
def test_estimators_declared_free_of_policy_logprobs_run_without_them(name: str) -> None:
    cfg = cfg_of(f"algo.advantage={name}")
    inputs = AdvantageInputs(rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), group_index=torch.tensor([0, 0, 1, 1]),
                             correct=torch.tensor([1.0, 0.0, 0.0, 1.0]), behavior_logprobs=-torch.rand(4, 3),
                             response_mask=torch.ones(4, 3), prompt_mask=torch.ones(4, 2))
    if needs_policy_logprobs(cfg):
        with pytest.raises(ValueError, match="logprobs"):
            ADVANTAGES[name](inputs)
    else:
        assert torch.isfinite(ADVANTAGES[name](inputs).advantages).all()


# ---- the same step, both ways -----------------------------------------------------------------
@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_prime_gap_llama(tmp_path_factory.mktemp("m"), seed=5)


@pytest.fixture(scope="module")
def sampled(model_path: str) -> RolloutBatch:
    worker = HFRolloutWorker(model_path, device="cpu")
    batch = worker.generate(TASKS["prime_gap"].make_prompts("train", 4, seed=3),
                            SamplingSpec(n=4, max_new_tokens=8, seed=3))
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0])
    batch.correct = (batch.rewards == 1.0).float()
    batch.answers = [str(int(r)) for r in batch.rewards.tolist()]
    return batch


def step(cfg: Config, model_path: str, sampled: RolloutBatch, fused: bool) -> tuple[dict, dict]:
    """One training step as the trainer runs it; (logged step metrics, updated parameters)."""
    metrics, params, _ = steps(cfg, model_path, sampled, fused, 1)
    return metrics[0], params


def steps(cfg: Config, model_path: str, sampled: RolloutBatch, fused: bool, n: int,
          ) -> tuple[list[dict], dict, list[torch.Tensor]]:
    """n training steps on the batch as the trainer runs them (Trainer.train_step / Trainer.update);
    (logged step metrics per step, updated parameters, the advantages trained on per step)."""
    learner, metrics, advantages = Learner(cfg, model_path), [], []
    for _ in range(n):
        batch = copy.deepcopy(sampled)
        if fused:
            batch.advantages, adv_metrics = compute_advantages(batch, cfg)
            update_metrics, stats = learner.update_on_policy(batch)
            if "advantages" in stats:  # finished in the update (ARM): metrics carry the final adv/*, arm/*
                batch.advantages = stats["advantages"]
        else:
            stats = learner.policy_stats(batch, with_prompt=needs_prompt_logprobs(cfg))
            batch.ref_logprobs, batch.prompt_logprobs = stats.get("ref_logprobs"), stats.get("prompt_logprobs")
            batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
            batch.advantages, adv_metrics = compute_advantages(batch, cfg)
            update_metrics = learner.update(batch)
        batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
        metrics.append({**rollout_health(batch), **step_diversity(batch), **adv_metrics, **update_metrics})
        advantages.append(batch.advantages)
    return metrics, {k: v.detach().clone() for k, v in learner.model.named_parameters()}, advantages


@pytest.mark.parametrize("overrides", [[], ["algo=steer"], ["algo.loss_params.kl_coef=0.5", "train.use_ref_model=true"],
                                       ["algo=grpo", "algo.advantage_params.scale=none"],
                                       ["run.plugins=[plugins.my_algos]", "algo.advantage=test_reward_only"],
                                       ["algo=entropy_advantage", "train.micro_batch_size=5"]],
                         ids=["grpo", "steer", "grpo_kl", "dr_grpo", "plugin_declared_reward_only",
                              "entropy_advantage"])
def test_fused_step_logs_and_trains_as_the_separate_forward_does(model_path: str, sampled: RolloutBatch,
                                                                 overrides: list[str]) -> None:
    cfg = cfg_of(f"model.path={model_path}", *overrides)
    assert fuses_policy_forward(cfg, [])[0]
    old_metrics, old_params = step(cfg, model_path, sampled, fused=False)
    new_metrics, new_params = step(cfg, model_path, sampled, fused=True)
    assert old_metrics["train/optimizer_steps"] == 1 and old_metrics["policy/entropy"] > 0.1
    assert set(new_metrics) == set(old_metrics)
    for k, v in old_metrics.items():
        assert new_metrics[k] == pytest.approx(v, rel=1e-6, abs=1e-6), k
    moved = 0
    for k, v in old_params.items():
        torch.testing.assert_close(new_params[k], v, rtol=1e-6, atol=1e-6, msg=k)
        moved += int(not torch.equal(v, sampled_params(model_path)[k]))
    assert moved > 0  # the step did move the weights


def test_a_skipped_step_still_reports_pi_old(model_path: str, sampled: RolloutBatch) -> None:
    cfg = cfg_of(f"model.path={model_path}")
    same = copy.deepcopy(sampled)
    same.rewards = torch.ones(same.size)  # every group all-equal: no signal, no optimizer step
    old_metrics, old_params = step(cfg, model_path, same, fused=False)
    new_metrics, new_params = step(cfg, model_path, same, fused=True)
    assert new_metrics["train/optimizer_steps"] == 0 and new_metrics["train/skipped_zero_signal"] == 1
    assert new_metrics["policy/entropy"] == pytest.approx(old_metrics["policy/entropy"], rel=1e-6)
    assert all(torch.equal(new_params[k], v) for k, v in old_params.items())


def test_a_nonfinite_step_still_reports_pi_old(model_path: str, sampled: RolloutBatch) -> None:
    cfg = cfg_of(f"model.path={model_path}", "run.plugins=[plugins.my_algos]", "algo.loss=test_nan_loss")
    learner, batch = Learner(cfg, model_path), copy.deepcopy(sampled)
    batch.advantages, _ = compute_advantages(batch, cfg)
    metrics, stats = learner.update_on_policy(batch)  # the first micro-batch's loss is NaN: no step
    assert metrics["faults/nonfinite_loss"] == 1 and metrics["train/optimizer_steps"] == 0
    expected = Learner(cfg, model_path).policy_stats(batch)
    assert stats["old_logprobs"].shape == (batch.size, batch.response_ids.shape[1])
    torch.testing.assert_close(stats["old_entropy"], expected["old_entropy"], rtol=0, atol=0)
    torch.testing.assert_close(stats["old_logprobs"], expected["old_logprobs"], rtol=0, atol=0)


def test_update_on_policy_refuses_when_pi_old_is_not_the_update_forward(model_path: str,
                                                                      sampled: RolloutBatch) -> None:
    cfg = cfg_of(f"model.path={model_path}", "train.ppo_epochs=2")
    batch = copy.deepcopy(sampled)
    batch.advantages, _ = compute_advantages(batch, cfg)
    with pytest.raises(ValueError, match="ppo_epochs=2"):
        Learner(cfg, model_path).update_on_policy(batch)


_PARAMS: dict[str, dict[str, torch.Tensor]] = {}


def sampled_params(model_path: str) -> dict[str, torch.Tensor]:
    """The initial parameters (loaded once)."""
    if model_path not in _PARAMS:
        from rl_div.models.loading import load_policy

        _PARAMS[model_path] = dict(load_policy(model_path)[0].named_parameters())
    return _PARAMS[model_path]


def test_no_stale_state_between_updates(model_path: str, sampled: RolloutBatch, tmp_path: Path) -> None:
    """A plain update after update_on_policy still needs policy_stats's numbers."""
    cfg = cfg_of(f"model.path={model_path}")
    learner, batch = Learner(cfg, model_path), copy.deepcopy(sampled)
    batch.advantages, _ = compute_advantages(batch, cfg)
    learner.update_on_policy(batch)
    with pytest.raises(AssertionError, match="policy_stats first"):
        learner.update(batch)


# ---- ARM: finished inside the update from each micro-batch's own forward (rl_div.learner.fused_advantage) ----
# Groups of 4: mixed, all correct (no GRPO signal, shaped unless reweight_all_correct=false), mixed,
# none correct (GRPO signal from the 0.5, no shaping).
ARM_REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0]


def with_rewards(sampled: RolloutBatch, rewards: list[float]) -> RolloutBatch:
    batch = copy.deepcopy(sampled)
    batch.rewards = torch.tensor(rewards)
    batch.correct = (batch.rewards == 1.0).float()
    batch.answers = [str(r) for r in rewards]
    return batch


def assert_same_steps(old: list[dict], new: list[dict], old_adv: list[torch.Tensor],
                      new_adv: list[torch.Tensor]) -> None:
    for i, (o, n) in enumerate(zip(old, new, strict=True)):
        assert set(n) == set(o), i
        for k, v in o.items():
            assert n[k] == pytest.approx(v, rel=1e-6, abs=1e-6), (i, k)
        torch.testing.assert_close(new_adv[i], old_adv[i], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("overrides", [
    [],
    ["train.micro_batch_size=5", "algo.advantage_params.alpha=3.0"],
    ["train.micro_batch_size=3", "algo.advantage_params.reweight_all_correct=false"],
    ["train.micro_batch_size=6", "algo.token_weight=steer"],
    ["algo.advantage_params.low_prob_fraction=0.5", "algo.advantage_params.scale=none",
     "algo.loss_params.kl_coef=0.5", "train.use_ref_model=true"],
], ids=["micro8", "micro5_alpha3", "micro3_not_all_correct", "micro6_steer", "dr_grpo_kl"])
def test_fused_arm_logs_and_trains_as_the_separate_forward_does(model_path: str, sampled: RolloutBatch,
                                                               overrides: list[str]) -> None:
    cfg = cfg_of(f"model.path={model_path}", "algo=arm", *overrides)
    assert fuses_policy_forward(cfg, [])[0] and cfg.train.micro_batch_size < sampled.size
    batch = with_rewards(sampled, ARM_REWARDS)
    old_metrics, old_params, old_adv = steps(cfg, model_path, batch, fused=False, n=3)
    new_metrics, new_params, new_adv = steps(cfg, model_path, batch, fused=True, n=3)
    assert all(m["train/optimizer_steps"] == 1 for m in old_metrics)
    assert {k for k in old_metrics[0] if k.startswith("arm/")} == {
        "arm/answer_conf_mean", "arm/answer_conf_std", "arm/prompt_conf_mean", "arm/prompt_conf_std",
        "arm/reweighted_frac", "arm/shaping_abs_mean"}
    reweighted = 0.5 if "algo.advantage_params.reweight_all_correct=false" in overrides else 0.75
    assert old_metrics[0]["arm/reweighted_frac"] == reweighted and old_metrics[0]["arm/shaping_abs_mean"] > 0
    # each step's shaping is that step's pi_old's: the confidences move as the policy trains
    assert old_metrics[0]["arm/answer_conf_mean"] != old_metrics[2]["arm/answer_conf_mean"]
    assert_same_steps(old_metrics, new_metrics, old_adv, new_adv)
    # the trained-on advantages are the final ones: the all-correct group (GRPO's A = 0) is shaped
    assert bool((new_adv[0][4:8] != 0).all()) is (reweighted == 0.75)
    moved = 0
    for k, v in old_params.items():
        torch.testing.assert_close(new_params[k], v, rtol=1e-6, atol=1e-6, msg=k)
        moved += int(not torch.equal(v, sampled_params(model_path)[k]))
    assert moved > 0


@pytest.mark.parametrize(("rewards", "overrides", "counter"), [
    ([0.0] * 16, [], "train/skipped_zero_signal"),  # no correct answer, no GRPO signal: no forward needed
    ([1.0] * 8 + [0.0] * 8, ["algo.advantage_params.alpha=0.0"], "train/skipped_zero_signal"),  # known after it
    (ARM_REWARDS, ["run.plugins=[plugins.my_algos]", "algo.loss=test_nan_loss"], "faults/nonfinite_loss"),
], ids=["no_correct", "shaping_all_zero", "nonfinite_loss"])
def test_fused_arm_step_without_update_logs_as_the_separate_forward_does(
        model_path: str, sampled: RolloutBatch, rewards: list[float], overrides: list[str], counter: str) -> None:
    cfg = cfg_of(f"model.path={model_path}", "algo=arm", *overrides)
    batch = with_rewards(sampled, rewards)
    old_metrics, old_params, old_adv = steps(cfg, model_path, batch, fused=False, n=1)
    new_metrics, new_params, new_adv = steps(cfg, model_path, batch, fused=True, n=1)
    assert old_metrics[0]["train/optimizer_steps"] == 0 and old_metrics[0][counter] == 1
    assert "arm/answer_conf_mean" in new_metrics[0]
    assert_same_steps(old_metrics, new_metrics, old_adv, new_adv)
    assert all(torch.equal(new_params[k], v) for k, v in old_params.items())
