"""The on-policy path without the separate pi_old forward (rl_div.onpolicy, Learner.update_on_policy):
when it applies, and that a step on it logs the same metrics and trains the same weights as a step
with score_policy first. Real Learner, real tiny Llama, real HF sampling; no Ray (the trainer's
wiring is covered by tests/test_train_e2e.py::test_on_policy_steps_skip_the_separate_forward)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from rl_div.algos import ADVANTAGES
from rl_div.algos.advantages import AdvantageInputs
from rl_div.config import Config, load_config
from rl_div.data import RolloutBatch
from rl_div.learner import Learner
from rl_div.models import build_char_tokenizer, make_tiny_llama, save_policy
from rl_div.onpolicy import active_dropout, fuses_policy_forward, needs_policy_logprobs, separate_forward
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.stats import rollout_health, step_diversity
from rl_div.tasks import TASKS
from rl_div.trainer import compute_advantages

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
    (["algo=arm"], False),  # prompt and response log-probs before the update
    (["train.ppo_epochs=2"], False),
    (["train.mini_batch_size=8"], False),  # two optimizer steps per batch of 16
    (["run.plugins=[plugins.my_algos]", "algo.advantage=test_raw_reward"], False),  # says nothing: kept
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
    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    return str(save_policy(make_tiny_llama(tok, seed=5), tok, tmp_path_factory.mktemp("m") / "tiny"))


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
    learner, batch = Learner(cfg, model_path), copy.deepcopy(sampled)
    if fused:
        batch.advantages, adv_metrics = compute_advantages(batch, cfg)
        update_metrics, stats = learner.update_on_policy(batch)
    else:
        stats = learner.score_policy(batch)
        batch.ref_logprobs = stats.get("ref_logprobs")
        batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
        batch.advantages, adv_metrics = compute_advantages(batch, cfg)
        update_metrics = learner.update(batch)
    batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
    metrics = {**rollout_health(batch), **step_diversity(batch), **adv_metrics, **update_metrics}
    return metrics, {k: v.detach().clone() for k, v in learner.model.named_parameters()}


@pytest.mark.parametrize("overrides", [[], ["algo=steer"], ["algo.loss_params.kl_coef=0.5", "train.use_ref_model=true"],
                                       ["algo=grpo", "algo.advantage_params.scale=none"]],
                         ids=["grpo", "steer", "grpo_kl", "dr_grpo"])
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
    expected = Learner(cfg, model_path).score_policy(batch)
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
        from rl_div.models import load_policy

        _PARAMS[model_path] = dict(load_policy(model_path)[0].named_parameters())
    return _PARAMS[model_path]


def test_no_stale_state_between_updates(model_path: str, sampled: RolloutBatch, tmp_path: Path) -> None:
    """A plain update after update_on_policy still needs score_policy's numbers."""
    cfg = cfg_of(f"model.path={model_path}")
    learner, batch = Learner(cfg, model_path), copy.deepcopy(sampled)
    batch.advantages, _ = compute_advantages(batch, cfg)
    learner.update_on_policy(batch)
    with pytest.raises(AssertionError, match="score_policy first"):
        learner.update(batch)
