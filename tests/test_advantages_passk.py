"""Best-of-group pass@k (Tang et al.) against verl's code, and PKPO against its paper's Listing 1 and a
brute-force float64 sum over subsets, on shared random inputs (ties, all-correct and all-wrong groups,
uneven group sizes); hand-worked values; the k schedule."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
import torch
from shared_adv_inputs import random_groups

from rl_div.algos import ADVANTAGES, AdvantageInputs

SEEDS = range(6)


# ---- references, transcribed ---------------------------------------------------------------------------
def verl_passk_reference(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: np.ndarray,
                         epsilon: float = 1e-6, norm_adv_by_std_in_grpo: bool = True) -> torch.Tensor:
    """volcengine/verl @ b178a3cd56f58b2d502255daba591e92833930a7, verl/trainer/ppo/core_algos.py,
    compute_grpo_passk_outcome_advantage (config.get("norm_adv_by_std_in_grpo") passed directly)."""
    scores = token_level_rewards.sum(dim=-1)  # (bs,)
    advantages = torch.zeros_like(scores)
    id2scores = defaultdict(list)
    id2indices = defaultdict(list)
    with torch.no_grad():
        bsz = scores.shape[0]
        for i in range(bsz):
            idx = index[i]
            id2scores[idx].append(scores[i])
            id2indices[idx].append(i)
        for idx in id2scores:
            rewards = torch.stack(id2scores[idx])  # (k,)
            if rewards.numel() < 2:
                raise ValueError(
                    f"Pass@k requires at least 2 samples per group. Got {rewards.numel()} for group {idx}."
                )
            topk, topk_idx = torch.topk(rewards, 2)
            r_max, r_second_max = topk[0], topk[1]
            i_max = id2indices[idx][topk_idx[0].item()]
            advantage = r_max - r_second_max
            if norm_adv_by_std_in_grpo:
                std = torch.std(rewards)
                advantage = advantage / (std + epsilon)
            advantages[i_max] = advantage
    advantages = advantages.unsqueeze(-1) * response_mask
    return advantages


# Walder & Karkhanis 2025 (arXiv:2505.15201), Appendix B, Listing 1 "Python reward batch transformations"
# (the authors' code; _m_normed's body as printed in the listing).
def _m_normed(N: int, K: int, i: int, j: int) -> float:
    if i == j and i >= K - 1:
        return (
            K / (N - K + 1) *
            np.prod(np.arange(i - K + 2, i + 1) / np.arange(N - K + 2, N + 1))
        )
    elif j > i and j >= K - 1 and K >= 2:
        return (
            K / (N - K + 1) * (K - 1) / N *
            np.prod(np.arange(j - K + 2, j) / np.arange(N - K + 2, N))
        )
    return 0


def _m_diagonal(N: int, K: int) -> np.ndarray:
    return np.array([_m_normed(N, K, i, i) for i in range(N)])


def rho(g: np.ndarray, K: int) -> float:
    """See Equation (12)."""
    return (np.sort(g) * _m_diagonal(len(g), K)).sum()


def _delta(N: int, K: int, i: int) -> float:
    return _m_normed(N, K, i, i + 1) - _m_normed(N, K, i + 1, i + 1)


def _deltas(N: int, K: int) -> np.ndarray:
    return np.array([_delta(N - 1, K, i) for i in range(N - 2)])


def _sorted_apply(func: Callable) -> Callable:
    def inner(x: np.ndarray, *args, **kwargs) -> np.ndarray:
        i_sort = np.argsort(x)
        func_x = np.zeros_like(x)
        func_x[i_sort] = func(x[i_sort], *args, **kwargs)
        return func_x
    return inner


@_sorted_apply
def s(g: np.ndarray, K: int) -> np.ndarray:
    """See Equation (19)."""
    N = len(g)
    c = g * _m_diagonal(N, K)
    c[:(N - 1)] += g[1:] * _deltas(N + 1, K)
    return np.cumsum(c[::-1])[::-1]


@_sorted_apply
def _b(g: np.ndarray, K: int) -> np.ndarray:
    N = len(g)
    w = (_m_diagonal(N - 1, K) * np.arange(1, N)).astype(float)
    w[1:] += _deltas(N, K) * np.arange(1, N - 1)
    c1 = np.array([(w * g[1:]).sum()])
    c2 = (g[:-1] - g[1:]) * w
    return np.cumsum(np.concatenate((c1, c2)))


def sloo(g: np.ndarray, K: int) -> np.ndarray:
    """See Equation (29)."""
    return s(g, K) - _b(g, K) / (len(g) - 1)


def sloo_minus_one(g: np.ndarray, K: int) -> np.ndarray:
    """See Equation (33)."""
    return s(g, K) - _b(g, K - 1) * K / (K - 1) / len(g)
# ---- end of Listing 1


def brute_loo_minus_one(g: list[float], k: int) -> list[Fraction]:
    """Eq. (33) from its definition, exactly: (1/C(n,k)) sum over k-subsets I holding i of
    [max_I g - max_{I minus i} g]."""
    exact = [Fraction(x) for x in g]
    out = [Fraction(0)] * len(g)
    for subset in itertools.combinations(range(len(g)), k):
        top = max(exact[j] for j in subset)
        for i in subset:
            out[i] += top - max(exact[j] for j in subset if j != i)
    return [o / math.comb(len(g), k) for o in out]


def outcome_tokens(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = 1 + torch.arange(rewards.numel()) % 5  # uneven response lengths
    mask = (torch.arange(5)[None, :] < lengths[:, None]).double()
    tokens = torch.zeros(rewards.numel(), 5, dtype=torch.float64)
    tokens[torch.arange(rewards.numel()), lengths - 1] = rewards
    return tokens, mask


# ---- best-of-group -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("scale", ["group", "none"])
def test_best_of_group_matches_verl(seed: int, binary: bool, scale: str) -> None:
    rewards, index = random_groups(seed, binary=binary)
    tokens, mask = outcome_tokens(rewards)
    want = verl_passk_reference(tokens, mask, index.numpy(), norm_adv_by_std_in_grpo=scale == "group")[:, 0]
    got = ADVANTAGES["best_of_group"](AdvantageInputs(rewards=rewards, group_index=index), scale=scale).advantages
    # ties for the best: either tied row may be "best", both get r_max - r_second = 0
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-12)


def test_best_of_group_by_hand() -> None:
    rewards = torch.tensor([0.2, 0.9, 0.5, 1.0, 1.0, 0.0, 0.3], dtype=torch.float64)
    index = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    got = ADVANTAGES["best_of_group"](AdvantageInputs(rewards=rewards, group_index=index), scale="none")
    assert got.advantages.tolist() == pytest.approx([0.0, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0], abs=1e-12)
    assert got.metrics["adv/zero_signal_frac"] == pytest.approx(2 / 3)  # the tie, and the one-row group
    std = math.sqrt(((0.2 - 1.6 / 3) ** 2 + (0.9 - 1.6 / 3) ** 2 + (0.5 - 1.6 / 3) ** 2) / 2)
    scaled = ADVANTAGES["best_of_group"](AdvantageInputs(rewards=rewards[:3], group_index=index[:3]))
    assert scaled.advantages.tolist() == pytest.approx([0.0, 0.4 / (std + 1e-6), 0.0], abs=1e-12)


# ---- PKPO ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_pkpo_matches_listing_and_brute_force(seed: int, binary: bool, k: int) -> None:
    rewards, index = random_groups(seed, binary=binary, min_size=k, max_size=8)
    got = ADVANTAGES["pkpo"](AdvantageInputs(rewards=rewards, group_index=index), k=k).advantages
    for g in index.unique():
        rows = index == g
        group = rewards[rows]
        n = int(rows.sum())
        exact = [float(x) * n for x in brute_loo_minus_one(group.tolist(), k)]
        assert got[rows].tolist() == pytest.approx(exact, rel=1e-12, abs=1e-12)
        listing = sloo_minus_one(group.numpy().copy(), k) * n
        assert got[rows].tolist() == pytest.approx(listing.tolist(), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_pkpo_k1_is_rloo(seed: int) -> None:
    """k = 1 has no (k-1)-subsets for Eq. (33)'s baseline: the leave-one-out mean is used, i.e. RLOO.
    (Listing 1's ``sloo`` is not the reference here: as printed, dividing by n - 1, it is not 0 on equal
    rewards, e.g. -1/12 for four 1s at k = 1.)"""
    rewards, index = random_groups(seed, binary=False)
    got = ADVANTAGES["pkpo"](AdvantageInputs(rewards=rewards, group_index=index), k=1).advantages
    for g in index.unique():
        rows = index == g
        group, n = rewards[rows], int(rows.sum())
        loo = [(float(x) - (float(group.sum()) - float(x)) / (n - 1)) for x in group]
        assert got[rows].tolist() == pytest.approx(loo, abs=1e-12)
        assert got[rows].tolist() == pytest.approx((n / (n - 1) * (group - group.mean())).tolist(), abs=1e-12)
    assert sloo(np.ones(4), 1).tolist() == pytest.approx([-1 / 12] * 4)


@pytest.mark.parametrize("seed", SEEDS)
def test_pkpo_with_k_equal_n_is_best_of_group(seed: int) -> None:
    """k = n: the (k-1)-baseline leaves r_max - r_second on the best row only (Tang et al.), times n."""
    rewards, index = random_groups(seed, binary=False, min_size=5, max_size=5)
    got = ADVANTAGES["pkpo"](AdvantageInputs(rewards=rewards, group_index=index), k=5).advantages
    bog = ADVANTAGES["best_of_group"](AdvantageInputs(rewards=rewards, group_index=index), scale="none").advantages
    assert got.tolist() == pytest.approx((bog * 5).tolist(), abs=1e-12)


def test_pkpo_by_hand_and_metrics() -> None:
    """n = 3, k = 2, rewards 0, 1, 1: C(3,2) = 3 pairs {0,1} {0,2} {1,2}; a row gets max(pair) - (the other
    row) summed over its pairs: row 0: (1 - 1) + (1 - 1) = 0; row 1: (1 - 0) + (1 - 1) = 1 -> 1/3; row 2
    the same. Times n = 3: 0, 1, 1 (s^(loo-1) is never negative: a row below its pair's top gets 0)."""
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    out = ADVANTAGES["pkpo"](AdvantageInputs(rewards=rewards, group_index=torch.tensor([0, 0, 0, 1, 1, 1])), k=2)
    # group 1 (0, 0, 1): row 5 tops both its pairs: (1 - 0) * 2 / 3 -> 2; rows 3, 4: (0 - 0) + (1 - 1) -> 0
    assert out.advantages.tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0, 0.0, 2.0], abs=1e-12)
    assert out.metrics["pkpo/max_at_k_mean"] == pytest.approx((1.0 + 2 / 3) / 2)  # pass@2: 1 and 1 - 1/3
    assert out.metrics["pkpo/max_at_k_mean"] == pytest.approx(
        (rho(np.array([0.0, 1.0, 1.0]), 2) + rho(np.array([0.0, 0.0, 1.0]), 2)) / 2)
    raw = ADVANTAGES["pkpo"](AdvantageInputs(rewards=rewards[:3], group_index=torch.zeros(3, dtype=torch.long)),
                             k=2, times_group_size=False)
    assert raw.advantages.tolist() == pytest.approx([0.0, 1 / 3, 1 / 3], abs=1e-12)


def test_pkpo_k_schedule_and_small_groups() -> None:
    rewards = torch.tensor([0.0, 1.0, 0.5, 0.25, 1.0, 0.0], dtype=torch.float64)
    index = torch.tensor([0, 0, 0, 0, 1, 1])
    schedule = [[0, 4], [10, 1]]
    early = ADVANTAGES["pkpo"](AdvantageInputs(rewards=rewards, group_index=index, step=9), k_schedule=schedule)
    assert early.metrics["pkpo/k"] == 4.0
    # group 1 has 2 < k = 4 rows: no estimate, A = 0, zero-signal
    assert early.advantages[4:].tolist() == [0.0, 0.0] and early.metrics["adv/zero_signal_frac"] == 0.5
    assert early.advantages[:4].tolist() == pytest.approx(
        (sloo_minus_one(rewards[:4].numpy().copy(), 4) * 4).tolist(), abs=1e-12)
    late = ADVANTAGES["pkpo"](AdvantageInputs(rewards=rewards, group_index=index, step=10), k_schedule=schedule)
    assert late.metrics["pkpo/k"] == 1.0 and late.advantages[4:].tolist() == pytest.approx([1.0, -1.0])
    with pytest.raises(ValueError, match="k >= 1"):
        ADVANTAGES["pkpo"](AdvantageInputs(rewards=rewards, group_index=index), k=0)


def test_the_learner_entry_point_passes_the_step_to_the_k_schedule() -> None:
    """rl_div.train.advantage_stage.compute_advantages hands the trainer's step to AdvantageInputs.step."""
    from rl_div.config import load_config
    from rl_div.data import PromptRecord
    from rl_div.rollout.base import build_rollout_batch
    from rl_div.train.advantage_stage import compute_advantages

    batch = build_rollout_batch([PromptRecord("p", "a")], [[1, 2]], [[5], [5, 6], [7], [8, 9, 9], [4]],
                                [[-0.5], [-0.5, -0.5], [-0.5], [-0.5] * 3, [-0.5]], ["x"] * 5, [False] * 5, 5,
                                behavior_version=0)
    batch.rewards = torch.tensor([0.0, 1.0, 0.5, 0.25, 1.0])
    cfg = load_config(None, ["algo=pkpo", "algo.advantage_params={k_schedule: [[0, 5], [3, 2]]}"])
    for step, k in [(0, 5), (2, 5), (3, 2), (7, 2)]:
        got, metrics = compute_advantages(batch, cfg, step)
        assert metrics["pkpo/k"] == k
        want = sloo_minus_one(batch.rewards.double().numpy().copy(), k) * 5
        assert got.tolist() == pytest.approx(want.tolist(), abs=1e-6)
