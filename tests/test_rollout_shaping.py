"""Overlong handling (rl_div/algos/overlong.py, rl_div/train/rollout_shaping.py) and the temperature
schedule with per-row temperatures in the learner's forward (rl_div/learner/forward.py): hand-worked
values, verl's DAPO penalty transcribed, and real Learner updates on a real tiny Llama (no Ray)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import tiny_prime_gap_llama

from rl_div.algos.overlong import loss_token_mask, overlong_penalty
from rl_div.config import ConfigError, load_config
from rl_div.data import RolloutBatch
from rl_div.learner.forward import policy_forward
from rl_div.learner.single import Learner
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.tasks import TASKS
from rl_div.train.advantage_stage import compute_advantages
from rl_div.train.rollout_shaping import apply_overlong_penalty, scheduled_temperature, shaping_metrics


# ---- DAPO's overlong penalty -------------------------------------------------------------------
def test_overlong_penalty_by_hand() -> None:
    # L_max 16, L_cache 4: free up to 12 tokens, then -1/4 per token, -1 at 16
    lengths = torch.tensor([0, 12, 13, 14, 15, 16])
    assert overlong_penalty(lengths, 16, 4, 1.0).tolist() == [0.0, 0.0, -0.25, -0.5, -0.75, -1.0]
    assert overlong_penalty(lengths, 16, 4, 0.5).tolist() == [0.0, 0.0, -0.125, -0.25, -0.375, -0.5]
    assert overlong_penalty(torch.tensor([1, 2]), 2, 2, 1.0).tolist() == [-0.5, -1.0]  # the whole range is buffer
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 16, 17, 1.0)


def verl_dapo_overlong_reward(valid_response_length: int, max_resp_len: int, overlong_buffer_len: int,
                              overlong_penalty_factor: float) -> float:
    """Transcribed from volcengine/verl @ 0bd4ecb9302bdf8d482c8451ffd7ce3ff323653f,
    verl/workers/reward_manager/dapo.py, DAPORewardManager.__call__ (the overlong_buffer_cfg.enable branch)."""
    overlong_buffer_len = overlong_buffer_len
    expected_len = max_resp_len - overlong_buffer_len
    exceed_len = valid_response_length - expected_len
    overlong_penalty_factor = overlong_penalty_factor
    overlong_reward = min(-exceed_len / overlong_buffer_len * overlong_penalty_factor, 0)
    return overlong_reward


@pytest.mark.parametrize(("max_len", "buffer", "factor"), [(16, 4, 1.0), (32, 7, 0.3), (9, 9, 2.0), (5, 1, 1.0)])
def test_overlong_penalty_matches_verl(max_len: int, buffer: int, factor: float) -> None:
    lengths = list(range(max_len + 1))
    ours = overlong_penalty(torch.tensor(lengths), max_len, buffer, factor).tolist()
    theirs = [verl_dapo_overlong_reward(n, max_len, buffer, factor) for n in lengths]
    assert ours == pytest.approx(theirs, abs=1e-7)


def test_loss_token_mask_drops_truncated_rows_only_when_asked() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    truncated = torch.tensor([False, True, False])
    assert loss_token_mask(mask, truncated, True).tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    assert loss_token_mask(mask, truncated, False) is mask


# ---- the temperature schedule ------------------------------------------------------------------
def test_temperature_schedules_by_hand() -> None:
    constant = load_config(None, ["rollout.temperature=0.9"]).rollout
    assert [scheduled_temperature(constant, s, 10) for s in (0, 5, 10)] == [0.9, 0.9, 0.9]
    linear = load_config(None, ["rollout.temperature=1.2", "rollout.temperature_schedule=linear",
                                "rollout.temperature_final=0.8"]).rollout
    assert [scheduled_temperature(linear, s, 4) for s in (0, 1, 2, 4, 6)] == pytest.approx([1.2, 1.1, 1.0, 0.8, 0.8])
    step = load_config(None, ["rollout.temperature=1.0", "rollout.temperature_schedule=step",
                              "rollout.temperature_milestones=[[2, 0.7], [5, 0.5]]"]).rollout
    assert [scheduled_temperature(step, s, 9) for s in range(7)] == [1.0, 1.0, 0.7, 0.7, 0.7, 0.5, 0.5]


def test_yaml_off_reads_as_off() -> None:
    assert load_config(None, ["rollout.dynamic_sampling=off"]).rollout.dynamic_sampling == "off"
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        load_config(None, ["rollout.dynamic_sampling=true"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["rollout.temperature_schedule=linear"], "temperature_final"),
    (["rollout.temperature_schedule=step"], "temperature_milestones"),
    (["rollout.temperature_schedule=step", "rollout.temperature_milestones=[[3, 0.5], [1, 0.7]]"], "increasing"),
    (["rollout.overlong=penalty", "rollout.max_new_tokens=8", "rollout.overlong_buffer=9"], "overlong_buffer"),
    (["rollout.dynamic_sampling=sometimes"], "dynamic_sampling"),
])
def test_bad_shaping_configs_are_refused_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


# ---- on a real model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_prime_gap_llama(tmp_path_factory.mktemp("m"), seed=5)


@pytest.fixture(scope="module")
def sampled(model_path: str) -> RolloutBatch:
    """16 real samples of 4 prompts, max 6 tokens (so some are truncated), scored by hand."""
    worker = HFRolloutWorker(model_path, device="cpu")
    batch = worker.generate(TASKS["prime_gap"].make_prompts("train", 4, seed=3),
                            SamplingSpec(n=4, max_new_tokens=6, seed=3))
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0])
    batch.correct = (batch.rewards == 1.0).float()
    batch.answers = [None] * batch.size
    return batch


def reference_logprobs(model: torch.nn.Module, batch: RolloutBatch, temperature: torch.Tensor) -> torch.Tensor:
    """float64 log p of the response tokens from the model's full logits, each row at its own temperature."""
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    attention = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits.double()
    p = batch.prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, p - 1:-1] / temperature.double()[:, None, None], dim=-1)
    return logp.gather(-1, batch.response_ids[..., None]).squeeze(-1) * batch.response_mask


def test_forward_uses_each_rows_own_sampling_temperature(model_path: str, sampled: RolloutBatch) -> None:
    learner = Learner(load_config(None, ["rollout.temperature=1.0"]), model_path)
    batch = copy.deepcopy(sampled)
    batch.sampling_temperature = torch.tensor([0.5, 1.0, 1.5, 0.7] * 4)
    stats = learner.policy_stats(batch)  # no temperature given: the rows' own
    expected = reference_logprobs(learner.model, batch, batch.sampling_temperature)
    torch.testing.assert_close(stats["old_logprobs"].double(), expected, rtol=0, atol=2e-5)
    # one temperature per row-set equals the forward at that temperature alone
    rows = [i for i in range(batch.size) if i % 4 == 2]
    alone, _, _ = policy_forward(learner.model, batch.select(rows), 64, temperature=1.5)
    torch.testing.assert_close(stats["old_logprobs"][rows], alone.detach(), rtol=0, atol=1e-6)
    # an explicit temperature (evaluation's) wins over the rows'
    given = learner.policy_stats(batch, temperature=1.0)["old_logprobs"]
    torch.testing.assert_close(given.double(), reference_logprobs(learner.model, batch, torch.ones(batch.size)),
                               rtol=0, atol=2e-5)


def trained(cfg_overrides: list[str], model_path: str, batch: RolloutBatch, advantages: torch.Tensor,
            ) -> dict[str, torch.Tensor]:
    cfg = load_config(None, ["train.lr=1e-2", "train.micro_batch_size=64", "rollout.max_new_tokens=6", *cfg_overrides])
    learner = Learner(cfg, model_path)
    batch = copy.deepcopy(batch)
    stats = learner.policy_stats(batch)
    batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
    batch.advantages = advantages
    assert learner.update(batch)["train/optimizer_steps"] == 1
    return {k: v.detach().clone() for k, v in learner.model.named_parameters()}


def test_mask_trains_as_if_the_truncated_rows_were_absent(model_path: str, sampled: RolloutBatch) -> None:
    """overlong=mask: advantages from the whole group (truncated rows' rewards count), then the update
    on all rows equals the update, without masking, on the untruncated rows alone (token-mean loss)."""
    truncated = sampled.truncated.bool()
    assert 0 < int(truncated.sum()) < sampled.size, "the sample must mix truncated and finished rows"
    advantages, _ = compute_advantages(sampled, load_config(None, []))
    kept = (~truncated).nonzero().squeeze(1)
    masked = trained(["rollout.overlong=mask"], model_path, sampled, advantages)
    alone = trained([], model_path, sampled.select(kept), advantages[kept])
    unmasked = trained([], model_path, sampled, advantages)
    # Adam's first step is ~lr * sign(g): float noise in a near-zero gradient moves a weight by ~1e-6,
    # a real difference by ~lr = 1e-2
    for k in masked:
        torch.testing.assert_close(masked[k], alone[k], rtol=0, atol=1e-5)
    assert max(float((masked[k] - unmasked[k]).abs().max()) for k in masked) > 1e-3


def test_penalty_is_added_to_rewards_and_counted(sampled: RolloutBatch) -> None:
    r = load_config(None, ["rollout.overlong=penalty", "rollout.max_new_tokens=6", "rollout.overlong_buffer=2",
                           "rollout.overlong_penalty_factor=1.0"]).rollout
    batch = copy.deepcopy(sampled)
    batch.rewards[3] = math.nan
    out = apply_overlong_penalty(batch, r)
    lengths = sampled.response_lengths.tolist()
    expected = [min(-(n - 4) / 2, 0.0) for n in lengths]  # free up to 4 tokens, -1 at 6
    assert out.reward_components["overlong_penalty"].tolist() == pytest.approx(expected)
    for i in range(batch.size):
        if i == 3:
            assert math.isnan(out.rewards[i])
        else:
            assert float(out.rewards[i]) == pytest.approx(float(sampled.rewards[i]) + expected[i])
    assert shaping_metrics(out)["rollout/overlong_penalised_frac"] == pytest.approx(
        sum(e < 0 for e in expected) / batch.size)
    untouched = apply_overlong_penalty(copy.deepcopy(sampled), load_config(None, ["rollout.overlong=mask"]).rollout)
    assert torch.equal(untouched.rewards, sampled.rewards) and "overlong_penalty" not in untouched.reward_components
