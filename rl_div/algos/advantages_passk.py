"""Pass@k-objective advantages beyond Chen et al.'s analytic one (``passk`` in rl_div.algos.advantages):
Tang et al.'s best-of-group (``best_of_group``) and Walder & Karkhanis's PKPO (``pkpo``); docs/algorithms.md
section 1 names the three apart. Reward-only, computed without gradient, checked against verl's code and
the PKPO paper's Listing 1 in tests/test_advantages_passk.py.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from rl_div.algos.advantage_base import ADVANTAGES, AdvantageInputs, AdvantageNeeds, AdvantageOutput, _summary
from rl_div.algos.advantages_outcome import std_per_row
from rl_div.algos.grouping import compact_groups


@ADVANTAGES.register("best_of_group", needs=AdvantageNeeds(response_logprobs=False))
def best_of_group(
    inputs: AdvantageInputs, *, scale: Literal["group", "none"] = "group", eps: float = 1e-6,
    unbiased_std: bool = True
) -> AdvantageOutput:
    """Best-of-group pass@k (Tang et al. 2025, "Optimizing Language Models for Inference Time Objectives
    using Reinforcement Learning"): per group only the best response gets r_max - r_second_max (divided
    by the group's std + eps with ``scale="group"``), every other response 0; the objective is pass@G.

    Matches verl's ``compute_grpo_passk_outcome_advantage`` (norm_adv_by_std_in_grpo=True: torch.std,
    i.e. ``unbiased_std=True``, eps 1e-6). Ties for the best give r_max - r_second_max = 0, so which tied
    row is "best" does not matter. OPEN choice: a one-row group (rows whose reward failed are removed
    first) gets 0 where verl raises. ``scale="none"`` is PKPO with k = G up to PKPO's G factor.

    Shapes: rewards [B], group_index [B] -> [B].
    """
    if scale not in ("group", "none"):
        raise ValueError(f"best_of_group scale must be 'group' or 'none', got {scale!r}")
    inverse, n_groups = compact_groups(inputs.group_index)
    r = inputs.rewards.double()
    std = std_per_row(inputs.rewards, inputs.group_index, unbiased=unbiased_std)
    adv = torch.zeros_like(r)
    zero = 0
    for g in range(n_groups):
        rows = torch.nonzero(inverse == g).flatten()
        if rows.numel() < 2:
            zero += 1
            continue
        top = torch.topk(r[rows], 2)
        gap = top.values[0] - top.values[1]
        best = rows[top.indices[0]]
        adv[best] = gap / (std[best] + eps) if scale == "group" else gap
        zero += int(gap.item() == 0.0)
    adv = adv.to(inputs.rewards.dtype)
    return AdvantageOutput(adv, {"adv/zero_signal_frac": zero / n_groups if n_groups else 0.0, **_summary(adv)})


def pkpo_loo_minus_one(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """PKPO's s^(loo-1) (Walder & Karkhanis 2025, Eq. 33) for one group, in closed form, float64.

    With the n rewards sorted ascending (0-based rank i), s^(loo-1)_i = (1 / C(n, k)) * sum over the
    k-subsets I holding i of [max_I g - max_{I minus i} g] = (g_i C(i, k-1) - sum_{j<i} g_j C(j, k-2)) / C(n, k)
    (the max over I is g_i's when i is I's top, C(i, k-1) such I; the rest cancels against the
    baseline). Ties give tied rows equal values (hockey-stick identity). For k = 1 there is no
    (k-1)-subset to baseline with; the leave-one-out mean is used: (g_i - mean_{j != i} g_j) / n (RLOO).

    Args:
        rewards: [n] float, finite, 2 <= n for k = 1, k <= n.
    Returns:
        [n] float64, in the rows' original order.
    """
    g = rewards.double()
    n = g.numel()
    if k == 1:
        return (g - (g.sum() - g) / (n - 1)) / n
    order = torch.argsort(g, stable=True)
    sorted_g = g[order]
    ranks = range(n)
    top = torch.tensor([math.comb(i, k - 1) for i in ranks], dtype=torch.float64)
    below = torch.tensor([math.comb(j, k - 2) for j in ranks], dtype=torch.float64)
    baseline = torch.cumsum(sorted_g * below, 0) - sorted_g * below  # sum over j < i
    out = torch.empty_like(g)
    out[order] = (sorted_g * top - baseline) / math.comb(n, k)
    return out


def pkpo_max_at_k(rewards: torch.Tensor, k: int) -> float:
    """rho^(g) (Eq. 12): the unbiased estimate of E[max of k samples] from n >= k, (1 / C(n, k)) *
    sum_i g_(i) C(i, k-1) over the ascending order; for 0/1 rewards it is Chen et al.'s pass@k. [n] -> float."""
    g = torch.sort(rewards.double()).values
    weights = torch.tensor([math.comb(i, k - 1) for i in range(g.numel())], dtype=torch.float64)
    return float((g * weights).sum().item() / math.comb(g.numel(), k))


def scheduled_k(k: int, k_schedule: list[list[int]] | None, step: int) -> int:
    """k at training step ``step``: the k of the last [start_step, k] entry with start_step <= step
    (entries sorted by start), else ``k``."""
    chosen = k
    for start, value in sorted((int(a), int(b)) for a, b in (k_schedule or [])):
        if start <= step:
            chosen = value
    return chosen


@ADVANTAGES.register("pkpo", needs=AdvantageNeeds(response_logprobs=False))
def pkpo(
    inputs: AdvantageInputs, *, k: int = 4, k_schedule: list[list[int]] | None = None, times_group_size: bool = True
) -> AdvantageOutput:
    """PKPO (Walder & Karkhanis 2025, "Pass@K Policy Optimization: Solving Harder Reinforcement Learning
    Problems"): the rewards of each group of n are replaced by s^(loo-1) (Eq. 33), the unbiased,
    low-variance estimator of the gradient of max_g@k = E[max reward of k samples] for any k <= n, with a
    baseline from the (k-1)-subsets. Binary rewards give pass@k; continuous rewards work unchanged.

    Checked against the paper's Listing 1 (``sloo_minus_one``) and a brute-force sum over subsets. k = n
    is Tang et al.'s best-of-group (r_max - r_second on the best row only); k = 1 uses the leave-one-out
    baseline, i.e. RLOO. OPEN choices: ``times_group_size=True`` multiplies s by n, since the paper's gradient is
    the sum over the n samples of s_i grad log p and rl_div's loss averages over rows (so k = 1 equals the
    RLOO advantage n/(n-1) (r_i - mean r)); a group with fewer than k rows (failed rewards removed) gets
    0 and counts as zero-signal. ``k_schedule``: [[start_step, k], ...], k from the last entry whose
    start_step <= the batch's step (e.g. [[0, 8], [200, 1]]: the paper's k annealing); default k = 4.

    Shapes: rewards [B], group_index [B] -> [B].
    """
    k_now = scheduled_k(k, k_schedule, inputs.step)
    if k_now < 1:
        raise ValueError(f"pkpo needs k >= 1, got {k_now}")
    inverse, n_groups = compact_groups(inputs.group_index)
    adv = torch.zeros(inputs.rewards.shape, dtype=torch.float64)
    estimates, zero = [], 0
    for g in range(n_groups):
        rows = torch.nonzero(inverse == g).flatten()
        n = int(rows.numel())
        if n < max(k_now, 2):
            zero += 1
            continue
        group = inputs.rewards[rows]
        s = pkpo_loo_minus_one(group, k_now)
        adv[rows] = s * n if times_group_size else s
        estimates.append(pkpo_max_at_k(group, k_now))
        zero += int(bool((s == 0).all()))
    adv = adv.to(inputs.rewards.dtype)
    metrics = {"adv/zero_signal_frac": zero / n_groups if n_groups else 0.0, "pkpo/k": float(k_now),
               "pkpo/max_at_k_mean": sum(estimates) / len(estimates) if estimates else 0.0, **_summary(adv)}
    return AdvantageOutput(adv, metrics)
