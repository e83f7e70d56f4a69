"""Outcome-baseline advantages of 2025-2026: W-REINFORCE / PSR / NSR, MaxRL and QAE (docs/algorithms.md
section 1). Each reads only rewards or verdicts (no policy log-probs) and is computed without gradient.

Every estimator is ``fn(inputs: AdvantageInputs, **params) -> AdvantageOutput`` with keyword-only params
that have defaults; each is checked against its authors' (or a named peer's) code in
tests/test_advantages_outcome.py.
"""

from __future__ import annotations

from typing import Literal

import torch

from rl_div.algos.advantage_base import (
    ADVANTAGES,
    AdvantageInputs,
    AdvantageNeeds,
    AdvantageOutput,
    _require,
    _summary,
)
from rl_div.algos.grouping import (
    compact_groups,
    fraction_of_groups,
    group_all,
    group_all_equal,
    group_sizes,
    group_sum,
)

REWARD_ONLY = AdvantageNeeds(response_logprobs=False)
VERDICT_ONLY = AdvantageNeeds(response_logprobs=False, verdicts=True)  # reads `correct`, not the reward


def signed_outcome_advantages(correct: torch.Tensor, *, positive: float, negative: float) -> torch.Tensor:
    """A_i = positive * 1[correct_i] - negative * 1[incorrect_i]; an unscored row (NaN) gets 0.

    Args:
        correct: [B] float 1/0, NaN = unscored.
    Returns:
        [B] float64.
    """
    c = correct.double()
    adv = torch.where(c > 0.5, torch.full_like(c, positive), torch.full_like(c, -negative))
    return torch.where(torch.isnan(c), torch.zeros_like(c), adv)


def _signed(inputs: AdvantageInputs, who: str, positive: float, negative: float) -> AdvantageOutput:
    _require(inputs, ["correct"], who)
    assert inputs.correct is not None
    adv = signed_outcome_advantages(inputs.correct, positive=positive, negative=negative).to(inputs.rewards.dtype)
    scored = ~torch.isnan(inputs.correct)
    silent = group_all(adv == 0, inputs.group_index)  # e.g. nsr on an all-correct group
    metrics = {"adv/zero_signal_frac": fraction_of_groups(silent, inputs.group_index),
               f"{who}/correct_frac": float((inputs.correct[scored] > 0.5).double().mean().item())
               if bool(scored.any()) else 0.0, **_summary(adv)}
    return AdvantageOutput(adv, metrics)


@ADVANTAGES.register("w_reinforce", needs=VERDICT_ONLY)
def w_reinforce(inputs: AdvantageInputs, *, lam: float = 0.1) -> AdvantageOutput:
    """Weighted REINFORCE (Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in
    LLM Reasoning"): A_i = lam * 1[correct] - 1[incorrect], no group baseline, no std.

    lam = 0.1 is the paper's default; lam = 0 is pure NSR (``nsr``). The authors' code
    (TianHongZXY/RLVR-Decomposed, ``compute_psr_nsr_outcome_advantage``, advantage='weighted') gives
    lam * r to correct and r - 1 to incorrect rows of a binary reward r, i.e. this. OPEN choice: it
    reads the verdict (``correct``), not the summed reward, so an added format or diversity reward does
    not change it; an unscored row (NaN verdict) gets 0 here (the authors' code leaves it NaN), and the
    training loop and TRL leave it out before this runs (``verdicts``, advantage_base.signal_rows).

    Shapes: correct [B] -> [B].
    """
    return _signed(inputs, "w_reinforce", positive=lam, negative=1.0)


@ADVANTAGES.register("nsr", needs=VERDICT_ONLY)
def nsr(inputs: AdvantageInputs) -> AdvantageOutput:
    """Negative sample reinforcement (Zhu et al. 2025): A_i = -1[incorrect], correct rows 0.

    The authors train on the incorrect rows only (they drop the correct rows before the loss); here the
    correct rows stay in the batch with A = 0, so a token-mean loss is diluted by their tokens (scale
    only; same direction). Shapes: correct [B] -> [B].
    """
    return _signed(inputs, "nsr", positive=0.0, negative=1.0)


@ADVANTAGES.register("psr", needs=VERDICT_ONLY)
def psr(inputs: AdvantageInputs) -> AdvantageOutput:
    """Positive sample reinforcement (Zhu et al. 2025), NSR's mirror: A_i = 1[correct], incorrect rows 0
    (kept in the batch with A = 0, as for :func:`nsr`). Shapes: correct [B] -> [B]."""
    return _signed(inputs, "psr", positive=1.0, negative=0.0)


def mean_per_row(values: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """The mean of the row's group. [B], [B] -> [B] float64."""
    inverse, n = compact_groups(group_index)
    v = values.double()
    return (group_sum(v, inverse, n) / group_sum(torch.ones_like(v), inverse, n))[inverse]


def maxrl_advantages(rewards: torch.Tensor, group_index: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_g r) / (mean_g r + eps) per group; a group with mean <= 0 gets A = 0.

    Args:
        rewards: [B] float, finite (canonically binary, non-negative).
        group_index: [B] long.
    Returns:
        [B] float64.
    """
    mean = mean_per_row(rewards, group_index)
    adv = (rewards.double() - mean) / (mean + eps)
    return torch.where(mean > 0, adv, torch.zeros_like(adv))


@ADVANTAGES.register("maxrl", needs=REWARD_ONLY)
def maxrl(inputs: AdvantageInputs, *, eps: float = 1e-6) -> AdvantageOutput:
    """MaxRL (Tajwar et al. 2026, "Maximum Likelihood Reinforcement Learning"): the practical estimator
    A_i = (r_i - mean r) / (mean r + eps), eps = 1e-6, per group (mean normalisation instead of std:
    a prompt solved with rate p weighs ~1/p, the gradient of log pass-rate to the group's order).

    Matches SkyRL's ``compute_maxrl_advantage`` (same eps) on groups of two or more, and prime-rl's
    ``max_rl`` (no eps) up to eps. OPEN choices: a group whose mean reward is <= 0 gets A = 0
    (prime-rl's rule; SkyRL divides by eps there, the same for non-negative rewards); a one-row group
    gets 0 (r = mean; SkyRL gives it r - 0). Needs non-negative rewards to mean what the paper means.

    Shapes: rewards [B], group_index [B] -> [B].
    """
    adv = maxrl_advantages(inputs.rewards, inputs.group_index, eps=eps).to(inputs.rewards.dtype)
    rewards, index = inputs.rewards, inputs.group_index
    no_signal = group_all_equal(rewards, index) | (mean_per_row(rewards, index) <= 0)
    zero = fraction_of_groups(no_signal, inputs.group_index)
    return AdvantageOutput(adv, {"adv/zero_signal_frac": zero, **_summary(adv)})


def group_quantile(values: torch.Tensor, group_index: torch.Tensor, q: float, interpolation: str) -> torch.Tensor:
    """torch.quantile(values of the row's group, q, interpolation), per row. [B], [B] -> [B] float64.
    Groups are few (prompts per step), so a loop over them."""
    inverse, n = compact_groups(group_index)
    v = values.double()
    out = torch.empty_like(v)
    for g in range(n):
        rows = inverse == g
        out[rows] = torch.quantile(v[rows], q, interpolation=interpolation)
    return out


def std_per_row(values: torch.Tensor, group_index: torch.Tensor, *, unbiased: bool) -> torch.Tensor:
    """The std of the row's group (unbiased: divide by n - 1; 0 for a one-row group). [B] -> [B] float64."""
    inverse, n = compact_groups(group_index)
    v = values.double()
    count = group_sum(torch.ones_like(v), inverse, n)
    sq = group_sum((v - mean_per_row(values, group_index)) ** 2, inverse, n)
    denom = (count - 1).clamp(min=1) if unbiased else count
    return (sq / denom).sqrt()[inverse]


@ADVANTAGES.register("qae", needs=REWARD_ONLY)
def qae(
    inputs: AdvantageInputs,
    *,
    quantile: float = 0.4,
    interpolation: Literal["linear", "lower", "higher", "midpoint", "nearest"] = "linear",
    scale: Literal["group", "none"] = "group",
    eps: float = 1e-6,
    unbiased_std: bool = True,
) -> AdvantageOutput:
    """Quantile Advantage Estimation (Wu et al. 2025, "Quantile Advantage Estimation for Entropy-Safe
    Reasoning"): GRPO with the group's K-quantile of the rewards as the baseline instead of the mean,
    A_i = (r_i - Q_K(r)) / (std(r) + eps) (``scale="group"``) or r_i - Q_K(r) (``scale="none"``).

    K = 0.4 (``quantile``) is the authors' scripts' value. With binary rewards and success rate p the
    baseline is 0 on hard prompts (p <= 1 - K: only successes move) and 1 on easy ones (only failures
    move). The authors' code (junkangwu/QAE: verl's ``compute_grpo_outcome_advantage`` with
    ``torch.quantile(scores, quantile_k)`` as the baseline) is matched exactly with the defaults:
    ``interpolation="linear"`` (torch's default; with G = 8 and K = 0.4 the baseline can be fractional,
    e.g. 0.8 between a 0 and a 1) and the unbiased std (torch.std). ``interpolation="lower"`` gives the
    paper's two-regime gate exactly for any G. OPEN choice: a one-row group gets 0 (verl gives it
    (r - Q) / 1 = 0 as well, since Q = r); a group whose rewards are all equal gets exactly 0.

    Shapes: rewards [B], group_index [B] -> [B].
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"qae quantile must be in (0, 1), got {quantile}")
    if scale not in ("group", "none"):
        raise ValueError(f"qae scale must be 'group' or 'none', got {scale!r}")
    baseline = group_quantile(inputs.rewards, inputs.group_index, quantile, interpolation)
    centred = inputs.rewards.double() - baseline
    if scale == "group":
        centred = centred / (std_per_row(inputs.rewards, inputs.group_index, unbiased=unbiased_std) + eps)
    equal = group_all_equal(inputs.rewards, inputs.group_index)
    no_signal = equal | (group_sizes(inputs.group_index) < 2)
    adv = torch.where(no_signal, torch.zeros_like(centred), centred).to(inputs.rewards.dtype)
    metrics = {"adv/zero_signal_frac": fraction_of_groups(equal, inputs.group_index),
               "qae/zero_adv_frac": float((adv == 0).double().mean().item()) if adv.numel() else 0.0,
               "qae/baseline_mean": float(baseline.mean().item()) if baseline.numel() else 0.0, **_summary(adv)}
    return AdvantageOutput(adv, metrics)
