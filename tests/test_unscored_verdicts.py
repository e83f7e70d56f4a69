"""A row whose verifier verdict is NaN while its reward is finite (the verifier failed or was not run, a
format or plugin reward still scored it): an estimator that reads verdicts (passk, arm, w_reinforce, nsr,
psr; AdvantageNeeds.verdicts) leaves that row out of its group and the update, counted in
``adv/unscored_verdicts``; the others keep it. Before the fix, one such row turned the whole batch's
verdicts into None and these estimators raised mid-run."""

from __future__ import annotations

import math

import pytest
import torch

from rl_div.algos import ADVANTAGES, AdvantageInputs
from rl_div.config import load_config
from rl_div.data import PromptRecord
from rl_div.learner.onpolicy import separate_forward
from rl_div.rollout.base import build_rollout_batch
from rl_div.train.advantage_stage import compute_advantages, scored_rows

NAN = math.nan
G = 4
# group 0: correct, unscored, wrong, wrong; group 1: unscored, wrong, correct, wrong
CORRECT = [1.0, NAN, 0.0, 0.0, NAN, 0.0, 1.0, 0.0]
REWARDS = [1.2, 0.2, 0.2, 0.0, 0.2, 0.0, 1.2, 0.2]  # verdict + a format reward: finite on every row
UNSCORED = [1, 4]


def batch_with_unscored_verdicts():
    prompts = [PromptRecord("p0", "a0"), PromptRecord("p1", "a1")]
    responses = [[5] * (1 + i % 3) for i in range(2 * G)]  # uneven lengths
    batch = build_rollout_batch(prompts, [[1, 2], [3]], responses, [[-0.5] * len(r) for r in responses],
                                ["x"] * (2 * G), [False] * (2 * G), G, behavior_version=0)
    batch.rewards = torch.tensor(REWARDS)
    batch.correct = torch.tensor(CORRECT)
    return batch


def config(advantage: str, params: str | None = None):
    return load_config(None, [f"algo.advantage={advantage}"] + ([f"algo.advantage_params={params}"] if params else []))


# passk, k = 2, worked by hand on the 3 scored rows of each group (N = 3, N_neg = 2):
# R = 1 - C(2,2)/C(3,2) = 2/3, sigma = sqrt(2/9) = sqrt(2)/3;
# correct (1 - R)/sigma = 1/sqrt(2); wrong (1 - R - C(1,1)/C(2,1))/sigma = (1/3 - 1/2) * 3/sqrt(2) = -1/(2 sqrt(2)).
# (Counting the unscored row as wrong instead would give N = 4, N_neg = 3: +1 and -1/3.)
POS, NEG = 1 / math.sqrt(2), -1 / (2 * math.sqrt(2))
BY_HAND = {
    ("passk", "{k: 2}"): [POS, 0.0, NEG, NEG, 0.0, NEG, POS, NEG],
    ("w_reinforce", "{lam: 0.1}"): [0.1, 0.0, -1.0, -1.0, 0.0, -1.0, 0.1, -1.0],
    ("nsr", None): [0.0, 0.0, -1.0, -1.0, 0.0, -1.0, 0.0, -1.0],
    ("psr", None): [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
}


@pytest.mark.parametrize(("advantage", "params"), list(BY_HAND))
def test_a_nan_verdict_leaves_its_row_out_and_is_counted(advantage: str, params: str | None) -> None:
    batch = batch_with_unscored_verdicts()
    cfg = config(advantage, params)
    got, metrics = compute_advantages(batch, cfg)
    assert got.tolist() == pytest.approx(BY_HAND[(advantage, params)], abs=1e-6)
    assert metrics["adv/unscored_verdicts"] == 2.0
    trained = scored_rows(batch, cfg)
    assert trained.size == 6 and bool(torch.isfinite(trained.correct).all())  # no loss on the unscored rows


def test_arm_leaves_the_unscored_rows_out_of_its_groups() -> None:
    """ARM (separate-forward path: pi_old's log-probs given) equals ARM on the scored rows alone."""
    batch = batch_with_unscored_verdicts()
    gen = torch.Generator().manual_seed(0)
    batch.old_logprobs = -torch.rand(batch.response_mask.shape, generator=gen, dtype=torch.float64).float()
    batch.prompt_logprobs = -torch.rand(batch.prompt_mask.shape, generator=gen, dtype=torch.float64).float()
    cfg = config("arm")
    got, metrics = compute_advantages(batch, cfg)
    keep = torch.tensor([i for i in range(2 * G) if i not in UNSCORED])
    from rl_div.learner.forward import prompt_logprob_mask
    alone = ADVANTAGES["arm"](AdvantageInputs(
        rewards=batch.rewards[keep], group_index=batch.group_index[keep], correct=batch.correct[keep],
        response_logprobs=batch.old_logprobs[keep], response_mask=batch.response_mask[keep].float(),
        prompt_logprobs=batch.prompt_logprobs[keep],
        prompt_mask=prompt_logprob_mask(batch.prompt_mask[keep]).float())).advantages
    assert got[UNSCORED].tolist() == [0.0, 0.0]
    assert got[keep].tolist() == pytest.approx(alone.tolist(), abs=1e-6)
    assert metrics["adv/unscored_verdicts"] == 2.0


def test_an_estimator_that_reads_rewards_only_keeps_every_scored_reward() -> None:
    """grpo does not read verdicts: the unscored rows' finite rewards are signal, and nothing is counted.
    Group 0 rewards [1.2, 0.2, 0.2, 0.0]: mean 0.4, population std sqrt(0.42)."""
    batch = batch_with_unscored_verdicts()
    cfg = config("grpo")
    got, metrics = compute_advantages(batch, cfg)
    std = math.sqrt(((0.8 ** 2) + 2 * (0.2 ** 2) + 0.4 ** 2) / 4)
    want0 = [(r - 0.4) / (std + 1e-6) for r in REWARDS[:4]]
    assert got[:4].tolist() == pytest.approx(want0, abs=1e-5)
    assert metrics["adv/unscored_verdicts"] == 0.0
    assert scored_rows(batch, cfg).size == 2 * G


def test_every_verdict_unscored_is_a_zero_signal_step() -> None:
    """No verifier ran (every verdict NaN): passk has nothing to learn from; the step is zero-signal."""
    batch = batch_with_unscored_verdicts()
    batch.correct = torch.full((2 * G,), NAN)
    got, metrics = compute_advantages(batch, config("passk", "{k: 2}"))
    assert got.tolist() == [0.0] * (2 * G)
    assert metrics["adv/zero_signal_frac"] == 1.0 and metrics["adv/unscored_verdicts"] == 2.0 * G


def test_a_left_out_row_brings_the_separate_forward_back() -> None:
    """The fused update sees every row it is given; a row left out for its verdict needs the separate forward,
    as a failed reward does."""
    rewards = torch.tensor(REWARDS)
    assert separate_forward(True, rewards, torch.tensor([True] * 8)) is False
    assert separate_forward(True, rewards, torch.isfinite(torch.tensor(CORRECT))) is True
    assert separate_forward(True, rewards) is False


@pytest.mark.parametrize("advantage", ["passk", "arm", "w_reinforce", "nsr", "psr"])
def test_a_verdict_reading_advantage_without_a_verifier_is_refused_at_load(advantage: str) -> None:
    """Without a verifier every verdict is NaN, so every row of every step would be left out: one line at load."""
    from rl_div.config import ConfigError

    with pytest.raises(ConfigError, match=rf"algo.advantage='{advantage}' reads the verifier's verdict.*no verifier"):
        load_config(None, [f"algo.advantage={advantage}", "reward.rewards=[{name: format}]"])
    with_verifier = "reward.rewards=[{name: format}, {name: task_verifier, weight: 0}]"
    load_config(None, [f"algo.advantage={advantage}", with_verifier])
    load_config(None, ["algo.advantage=grpo", "reward.rewards=[{name: format}]"])  # reads rewards only
