"""W-REINFORCE / NSR / PSR, MaxRL and QAE against their authors' (or a named peer's) code, transcribed
below with source and commit, on shared random inputs; hand-worked values; NaN rewards through the
learner's entry point (rl_div.train.advantage_stage.compute_advantages) with uneven response lengths."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from shared_adv_inputs import random_groups

from rl_div.algos import ADVANTAGES, AdvantageInputs

SEEDS = range(6)


# ---- references, transcribed ---------------------------------------------------------------------------
def psr_nsr_reference(token_level_rewards: torch.Tensor, token_level_scores: torch.Tensor, eos_mask: torch.Tensor,
                      gamma: float, advantage: str, positive_advantage_weight: float) -> torch.Tensor:
    """TianHongZXY/RLVR-Decomposed @ a5d4e7c1df6016ebd7396bd6db83d885120adb6d,
    verl/trainer/ppo/core_algos.py, compute_psr_nsr_outcome_advantage (returns dropped)."""
    with torch.no_grad():
        returns = torch.zeros_like(token_level_rewards)
        running_return = 0
        correct_idx = token_level_scores.sum(-1) == 1
        incorrect_idx = token_level_scores.sum(-1) == 0
        for t in reversed(range(token_level_rewards.shape[1])):
            running_return = token_level_rewards[:, t] + gamma * running_return
            returns[:, t] = running_return
            running_return = running_return * eos_mask[:, t]
        if advantage == 'positive':
            advantages = returns.clone()
        elif advantage == 'negative':
            advantages = returns.clone() - 1
        elif advantage == 'weighted':
            advantages = returns.clone()
            advantages[correct_idx] *= positive_advantage_weight
            advantages[incorrect_idx] -= 1
        else:
            raise NotImplementedError
        advantages = advantages * eos_mask
    return advantages


def skyrl_maxrl_reference(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: np.ndarray,
                          epsilon: float = 1e-6) -> torch.Tensor:
    """NovaSky-AI/SkyRL @ a9564572eb8e91076be43c1bd5e4615e3de17265,
    skyrl/backends/skyrl_train/utils/ppo_utils.py, compute_maxrl_advantage."""
    scores = token_level_rewards.sum(dim=-1)
    id2score = defaultdict(list)
    id2mean = {}
    with torch.no_grad():
        bsz = scores.shape[0]
        for i in range(bsz):
            id2score[index[i]].append(scores[i])
        for idx in id2score:
            if len(id2score[idx]) == 1:
                id2mean[idx] = torch.tensor(0.0)
            elif len(id2score[idx]) > 1:
                id2mean[idx] = torch.mean(torch.tensor(id2score[idx]))
            else:
                raise ValueError(f"no score in prompt index: {idx}")
        for i in range(bsz):
            if len(id2score[index[i]]) > 1:
                scores[i] = (scores[i] - id2mean[index[i]]) / (id2mean[index[i]] + epsilon)
            else:
                scores[i] = scores[i] - id2mean[index[i]]
        scores = scores.unsqueeze(-1) * response_mask
    return scores


def prime_rl_maxrl_reference(group_rewards: list[float]) -> list[float]:
    """PrimeIntellect-ai/prime-rl @ 559b44772e471d1538537b8805cc77f3824a5e64,
    src/prime_rl/orchestrator/algo/max_rl.py, MaxRLAlgorithm.score_group (one group's arithmetic)."""
    rewards = torch.tensor(group_rewards, dtype=torch.float32)
    mean = rewards.mean()
    advantages = torch.zeros_like(rewards) if mean <= 0 else (rewards - mean) / mean
    return advantages.tolist()


def qae_reference(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: np.ndarray,
                  epsilon: float = 1e-6, norm_adv_by_std_in_grpo: bool = True, quantile_k: float = 0.4) -> torch.Tensor:
    """volcengine/verl @ 26a734e740fd0bcd637827fa9cb604925ed80c9d (2025-09-24, the verl QAE forked),
    verl/trainer/ppo/core_algos.py, compute_grpo_outcome_advantage, with junkangwu/QAE's one-line change
    (its README, "One-Line Core Change"): the group mean replaced by torch.quantile(scores, quantile_k)."""
    scores = token_level_rewards.sum(dim=-1)
    id2score = defaultdict(list)
    id2mean = {}
    id2std = {}
    with torch.no_grad():
        bsz = scores.shape[0]
        for i in range(bsz):
            id2score[index[i]].append(scores[i])
        for idx in id2score:
            if len(id2score[idx]) == 1:
                id2mean[idx] = torch.tensor(0.0)
                id2std[idx] = torch.tensor(1.0)
            elif len(id2score[idx]) > 1:
                scores_tensor = torch.stack(id2score[idx])
                if 0 < quantile_k < 1:
                    id2mean[idx] = torch.quantile(scores_tensor, quantile_k)
                else:
                    id2mean[idx] = torch.mean(scores_tensor)
                id2std[idx] = torch.std(scores_tensor)
            else:
                raise ValueError(f"no score in prompt index: {idx}")
        for i in range(bsz):
            if norm_adv_by_std_in_grpo:
                scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
            else:
                scores[i] = scores[i] - id2mean[index[i]]
        scores = scores.unsqueeze(-1) * response_mask
    return scores


def outcome_tokens(rewards: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's layout: the outcome reward on each response's last real token, uneven lengths (>= 1)."""
    gen = torch.Generator().manual_seed(seed + 100)
    lengths = torch.randint(1, 7, (rewards.numel(),), generator=gen)
    mask = (torch.arange(7)[None, :] < lengths[:, None]).double()
    tokens = torch.zeros(rewards.numel(), 7, dtype=torch.float64)
    tokens[torch.arange(rewards.numel()), lengths - 1] = rewards
    return tokens, mask


def first_token(per_token: torch.Tensor) -> torch.Tensor:
    return per_token[:, 0]


# ---- W-REINFORCE / NSR / PSR ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("name", "mode", "params"), [
    ("w_reinforce", "weighted", {}), ("w_reinforce", "weighted", {"lam": 0.35}), ("nsr", "negative", None),
    ("psr", "positive", None)])
def test_signed_matches_rlvr_decomposed(seed: int, name: str, mode: str, params: dict | None) -> None:
    correct, index = random_groups(seed)
    tokens, mask = outcome_tokens(correct, seed)
    lam = (params or {}).get("lam", 0.1)
    want = first_token(psr_nsr_reference(tokens, tokens, mask, 1.0, mode, lam))
    if mode == "positive":  # the authors keep only correct rows for PSR (A = r = 1 there) ...
        want = torch.where(correct > 0.5, want, torch.zeros_like(want))
    if mode == "negative":  # ... and only incorrect rows for NSR (A = r - 1 = -1 there); rl_div keeps A = 0
        want = torch.where(correct < 0.5, want, torch.zeros_like(want))
    got = ADVANTAGES[name](AdvantageInputs(rewards=correct, group_index=index, correct=correct), **(params or {}))
    assert got.advantages.tolist() == pytest.approx(want.tolist(), abs=1e-12)


def test_signed_by_hand_and_nan_verdict() -> None:
    correct = torch.tensor([1.0, 0.0, math.nan, 1.0])
    inputs = AdvantageInputs(rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), group_index=torch.tensor([0, 0, 1, 1]),
                             correct=correct)
    assert ADVANTAGES["w_reinforce"](inputs).advantages.tolist() == pytest.approx([0.1, -1.0, 0.0, 0.1])
    assert ADVANTAGES["w_reinforce"](inputs, lam=0.0).advantages.tolist() == [0.0, -1.0, 0.0, 0.0]
    assert ADVANTAGES["nsr"](inputs).advantages.tolist() == [0.0, -1.0, 0.0, 0.0]
    assert ADVANTAGES["nsr"](inputs).metrics["adv/zero_signal_frac"] == 0.5  # group 1: unscored and correct
    assert ADVANTAGES["psr"](inputs).advantages.tolist() == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="correct"):
        ADVANTAGES["nsr"](AdvantageInputs(rewards=torch.zeros(2), group_index=torch.tensor([0, 0])))


# ---- MaxRL -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binary", [True, False])
def test_maxrl_matches_skyrl_and_prime_rl(seed: int, binary: bool) -> None:
    rewards, index = random_groups(seed, binary=binary)
    tokens, mask = outcome_tokens(rewards, seed)
    got = ADVANTAGES["maxrl"](AdvantageInputs(rewards=rewards, group_index=index)).advantages
    want = first_token(skyrl_maxrl_reference(tokens.clone(), mask, index.numpy()))
    assert got.tolist() == pytest.approx(want.tolist(), rel=1e-12, abs=1e-12)
    for g in index.unique():
        rows = index == g
        assert got[rows].tolist() == pytest.approx(prime_rl_maxrl_reference(rewards[rows].tolist()), rel=1e-5, abs=1e-5)


def test_maxrl_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.7], dtype=torch.float64)
    index = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3])
    got = ADVANTAGES["maxrl"](AdvantageInputs(rewards=rewards, group_index=index)).advantages
    m = 0.25 + 1e-6  # mean 1/4: the success (1 - 1/4) / (1/4 + eps) ~ 3, the failures ~ -1
    assert got.tolist() == pytest.approx([0.75 / m, -0.25 / m, -0.25 / m, -0.25 / m, 0, 0, 0, 0, 0], abs=1e-12)


# ---- QAE -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("quantile", [0.4, 0.8])
def test_qae_matches_authors_code(seed: int, binary: bool, quantile: float) -> None:
    rewards, index = random_groups(seed, binary=binary)
    tokens, mask = outcome_tokens(rewards, seed)
    got = ADVANTAGES["qae"](AdvantageInputs(rewards=rewards, group_index=index), quantile=quantile).advantages
    want = first_token(qae_reference(tokens.clone(), mask, index.numpy(), quantile_k=quantile))
    assert got.tolist() == pytest.approx(want.tolist(), rel=1e-9, abs=1e-9)
    got_none = ADVANTAGES["qae"](AdvantageInputs(rewards=rewards, group_index=index), quantile=quantile,
                                 scale="none").advantages
    want_none = first_token(qae_reference(tokens.clone(), mask, index.numpy(), norm_adv_by_std_in_grpo=False,
                                          quantile_k=quantile))
    assert got_none.tolist() == pytest.approx(want_none.tolist(), abs=1e-12)


def test_qae_two_regime_gate_by_hand() -> None:
    """G = 5, K = 0.4, 'lower': the baseline is 0 when p <= 1 - K = 0.6 (only successes move) and 1 when
    p > 0.6 (only failures move); 'linear' on 0,0,0,1,1 puts the 0.4-quantile at position 1.6 -> 0."""
    hard = [0.0, 0.0, 0.0, 1.0, 1.0]  # p = 0.4
    easy = [1.0, 1.0, 1.0, 1.0, 0.0]  # p = 0.8
    rewards = torch.tensor(hard + easy, dtype=torch.float64)
    index = torch.tensor([0] * 5 + [1] * 5)
    got = ADVANTAGES["qae"](AdvantageInputs(rewards=rewards, group_index=index), interpolation="lower",
                            scale="none").advantages
    assert got.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    std_hard = math.sqrt((3 * 0.4**2 + 2 * 0.6**2) / 4)
    scaled = ADVANTAGES["qae"](AdvantageInputs(rewards=rewards[:5], group_index=index[:5])).advantages
    assert scaled.tolist() == pytest.approx([0, 0, 0, 1 / (std_hard + 1e-6), 1 / (std_hard + 1e-6)], abs=1e-12)


def test_qae_rejects_quantile_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="quantile"):
        ADVANTAGES["qae"](AdvantageInputs(rewards=torch.zeros(2), group_index=torch.tensor([0, 0])), quantile=1.0)


# ---- NaN rewards through the learner's entry point -----------------------------------------------------
@pytest.mark.parametrize("name", ["w_reinforce", "maxrl", "qae", "best_of_group", "pkpo"])
def test_nan_rewards_are_left_out_then_the_rest_estimated(name: str) -> None:
    """Rows whose reward failed (NaN) get 0 and are removed before the estimator: the other rows of
    their group get what the estimator gives the smaller group (uneven responses lengths throughout)."""
    from rl_div.config import load_config
    from rl_div.data import PromptRecord
    from rl_div.rollout.base import build_rollout_batch
    from rl_div.train.advantage_stage import compute_advantages

    g = 4
    prompts = [PromptRecord("p0", "a0"), PromptRecord("p1", "a1")]
    responses = [[5] * (1 + i % 3) for i in range(2 * g)]
    batch = build_rollout_batch(prompts, [[1, 2], [3]], responses, [[-0.5] * len(r) for r in responses],
                                ["x"] * (2 * g), [False] * (2 * g), g, behavior_version=0)
    batch.rewards = torch.tensor([1.0, math.nan, 0.0, 0.5, 0.0, 1.0, math.nan, 0.25])
    batch.correct = (batch.rewards > 0.75).float()
    cfg = load_config(None, [f"algo.advantage={name}"] + (["algo.advantage_params={k: 2}"] if name == "pkpo" else []))
    got, _ = compute_advantages(batch, cfg)
    keep = torch.tensor([0, 2, 3, 4, 5, 7])
    alone = ADVANTAGES[name](AdvantageInputs(rewards=batch.rewards[keep], group_index=batch.group_index[keep],
                                             correct=batch.correct[keep]), **cfg.algo.advantage_params).advantages
    assert got[[1, 6]].tolist() == [0.0, 0.0]
    assert got[keep].tolist() == pytest.approx(alone.tolist(), abs=1e-6)
    assert bool(torch.isfinite(got).all()) and bool((got[keep] != 0).any())
