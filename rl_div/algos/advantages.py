"""Advantage estimators: one advantage per response, registered by name (ALGORITHMS.md section 1).

Every estimator is ``fn(inputs: AdvantageInputs, **params) -> AdvantageOutput`` with keyword-only
params that have defaults; the config names the estimator and its params. Plain GRPO is just
``ADVANTAGES["grpo"]``: there is no special path for it. All shaping is computed without gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rl_div.algos.grouping import (
    compact_groups,
    fraction_of_groups,
    group_all_equal,
    group_mean_std,
    group_sizes,
    rank_within_group,
)
from rl_div.registry import Registry

# Slack when rounding fraction * length up, so that 0.14 * 50 = 7.000000000000001 keeps 7 tokens,
# not 8.
_ROUND_SLACK = 1e-9


@dataclass
class AdvantageInputs:
    """What an advantage estimator may read. B responses, T response tokens, P prompt tokens."""

    rewards: torch.Tensor  # [B] float, finite
    group_index: torch.Tensor  # [B] long, group id per response
    correct: torch.Tensor | None = None  # [B] float 1/0 (NaN = unscored, counted as not correct)
    response_logprobs: torch.Tensor | None = None  # [B, T] log p under pi_theta (no grad)
    behavior_logprobs: torch.Tensor | None = None  # [B, T] log p under pi_behavior (the sampler)
    response_mask: torch.Tensor | None = None  # [B, T] 1 = real token
    prompt_logprobs: torch.Tensor | None = None  # [B, P] log p of prompt tokens under pi_theta
    prompt_mask: torch.Tensor | None = None  # [B, P] 1 = prompt token that has a log-prob


@dataclass
class AdvantageOutput:
    advantages: torch.Tensor  # [B]
    metrics: dict[str, float]


AdvantageFn = Callable[..., AdvantageOutput]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage")


def _require(inputs: AdvantageInputs, fields: list[str], who: str) -> None:
    missing = [f for f in fields if getattr(inputs, f) is None]
    if missing:
        names = ", ".join(f"AdvantageInputs.{f}" for f in missing)
        raise ValueError(f"advantage {who!r} needs {names}, which is None")


def _is_correct(correct: torch.Tensor) -> torch.Tensor:
    """[B] float -> [B] bool; NaN (unscored) compares False, so it is not correct."""
    return correct > 0.5


def _summary(adv: torch.Tensor) -> dict[str, float]:
    return {
        "adv/mean": float(adv.mean().item()) if adv.numel() else 0.0,
        "adv/abs_mean": float(adv.abs().mean().item()) if adv.numel() else 0.0,
        "adv/max": float(adv.max().item()) if adv.numel() else 0.0,
        "adv/min": float(adv.min().item()) if adv.numel() else 0.0,
    }


def _nan_stats(x: torch.Tensor) -> tuple[float, float]:
    """Mean and population std of the finite entries of x [B] (NaN when there are none)."""
    finite = x[torch.isfinite(x)]
    if finite.numel() == 0:
        return math.nan, math.nan
    return float(finite.mean().item()), float(finite.std(unbiased=False).item())


def grpo_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    *,
    scale: str = "group",
    eps: float = 1e-6,
    unbiased_std: bool = False,
) -> torch.Tensor:
    """GRPO advantage A_i = (r_i - mean_g(r)) / (std + eps), pure tensor version.

    ``scale``: "group" divides by the group's std, "batch" by the std of all rewards in the batch
    (group-centred, batch-scaled), "none" does not divide (Dr. GRPO). A group whose rewards are all
    equal gets exactly A = 0 under every scale (floating-point residue of the mean is not signal).
    ``unbiased_std`` is the OPEN population-vs-unbiased choice of :func:`group_mean_std`.

    Args:
        rewards: [B] float, finite.
        group_index: [B] long.
    Returns:
        [B] advantages in the dtype of rewards.
    """
    mean, std = group_mean_std(rewards, group_index, unbiased=unbiased_std)
    centred = rewards - mean
    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        batch_std = rewards.std(unbiased=unbiased_std) if rewards.numel() > 1 else rewards.new_zeros(())
        adv = centred / (batch_std + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"grpo scale must be 'group', 'batch' or 'none', got {scale!r}")
    return torch.where(group_all_equal(rewards, group_index), torch.zeros_like(adv), adv)


@ADVANTAGES.register("grpo")
def grpo(
    inputs: AdvantageInputs, *, scale: str = "group", eps: float = 1e-6, unbiased_std: bool = False
) -> AdvantageOutput:
    """GRPO (scale="group"), group-centred batch-scaled ("batch"), or Dr. GRPO ("none").

    Shapes: rewards [B], group_index [B] -> advantages [B].
    Metric "adv/zero_signal_frac": fraction of groups whose rewards are all equal (A = 0 there).
    """
    adv = grpo_advantages(inputs.rewards, inputs.group_index, scale=scale, eps=eps, unbiased_std=unbiased_std)
    zero = fraction_of_groups(group_all_equal(inputs.rewards, inputs.group_index), inputs.group_index)
    return AdvantageOutput(adv, {"adv/zero_signal_frac": zero, **_summary(adv)})


def answer_confidence(logprobs: torch.Tensor, mask: torch.Tensor, fraction: float = 0.2) -> torch.Tensor:
    """c(o|q) = exp(mean log p over the lowest-probability fraction of a response's tokens).

    The number of tokens kept is n = max(1, ceil(fraction * L)) for a response of L > 0 tokens
    (rounded up so a short response still keeps its least likely token; a tiny slack keeps float
    noise such as 0.14 * 50 = 7.000000000000001 from adding a token). A zero-length response has
    no tokens to average: its confidence is NaN, which :func:`arm` treats as "no shaping".

    Args:
        logprobs: [B, T] log p of each sampled token.
        mask: [B, T] 1 = real token.
        fraction: in (0, 1].
    Returns:
        [B] confidence in (0, 1], NaN for empty rows.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    valid = mask.bool()
    lengths = valid.sum(dim=1)
    n = torch.ceil(lengths.double() * fraction - _ROUND_SLACK).long().clamp(min=1)
    n = torch.where(lengths > 0, n, torch.zeros_like(n))
    # padding sorts last (+inf), so the first n sorted entries are the n least likely real tokens
    ascending = logprobs.double().masked_fill(~valid, math.inf).sort(dim=1).values
    take = torch.arange(logprobs.shape[1], device=logprobs.device)[None, :] < n[:, None]
    total = ascending.masked_fill(~take, 0.0).sum(dim=1)
    return torch.exp(total / n).to(logprobs.dtype)  # 0 / 0 = NaN for empty rows


def prompt_confidence(prompt_logprobs: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
    """c(q) = exp(mean log p of the prompt tokens) = 1 / perplexity.

    Args:
        prompt_logprobs: [B, P]; entries where prompt_mask is 0 are ignored (even if NaN).
        prompt_mask: [B, P] 1 = prompt token with a log-prob (the first real token has none).
    Returns:
        [B] confidence in (0, 1], NaN for a row without any masked-in token.
    """
    valid = prompt_mask.bool()
    total = prompt_logprobs.double().masked_fill(~valid, 0.0).sum(dim=1)
    return torch.exp(total / valid.sum(dim=1)).to(prompt_logprobs.dtype)


@ADVANTAGES.register("arm")
def arm(
    inputs: AdvantageInputs,
    *,
    alpha: float = 1.0,
    low_prob_fraction: float = 0.2,
    reweight_all_correct: bool = True,
    scale: str = "group",
    eps: float = 1e-6,
    unbiased_std: bool = False,
) -> AdvantageOutput:
    """ProGRPO / ARM: A~_i = A_i + alpha * (c(q) - c(o_i|q)) in groups with a correct response.

    A_i is :func:`grpo_advantages` with ``scale``/``eps``/``unbiased_std``. Groups without any
    correct response keep A_i. OPEN choices, all params: alpha (1.0), low_prob_fraction (0.2, see
    :func:`answer_confidence`), reweight_all_correct (True, as the equation reads; False leaves
    all-correct groups at A = 0). A row whose answer or prompt confidence is NaN (empty response or
    prompt) gets no shaping. Needs correct, response_logprobs, response_mask, prompt_logprobs and
    prompt_mask.

    Shapes: rewards/correct/group_index [B]; response_* [B, T]; prompt_* [B, P] -> [B].
    """
    fields = ["correct", "response_logprobs", "response_mask", "prompt_logprobs", "prompt_mask"]
    _require(inputs, fields, "arm")
    # One implementation, in the three parts the fused update also runs micro-batch by micro-batch
    # (reward part, per-row shaping, metrics); imported here since row_local builds on this module.
    from rl_div.algos.row_local import ROW_LOCAL

    return ROW_LOCAL["arm"](inputs, alpha=alpha, low_prob_fraction=low_prob_fraction,
                            reweight_all_correct=reweight_all_correct, scale=scale, eps=eps,
                            unbiased_std=unbiased_std)


# What an estimator reads of the policy before the update (rl_div.onpolicy): only then does the
# learner run its separate forward; an estimator without needs_response_logprobs is assumed to read them.
arm.needs_prompt_logprobs = True  # type: ignore[attr-defined]  # the learner computes them only then
arm.needs_response_logprobs = True  # type: ignore[attr-defined]
grpo.needs_response_logprobs = False  # type: ignore[attr-defined]


@ADVANTAGES.register("passk")
def passk(inputs: AdvantageInputs, *, k: int = 4) -> AdvantageOutput:
    """Pass@k training advantages (Chen et al. 2025), per group of N responses, N_neg incorrect.

    R = 1 - C(N_neg, k) / C(N, k), sigma = sqrt(R (1 - R)); a correct response gets
    (1 - R) / sigma, an incorrect one (1 - R - C(N_neg - 1, k - 1) / C(N - 1, k - 1)) / sigma.
    A group with sigma = 0 (no correct response, or fewer than k incorrect so every k-subset
    passes) gets A = 0; no eps is added, so values match the formula exactly. Unscored (NaN)
    responses count as incorrect. Exact binomials (math.comb) in a loop over groups, which are few.

    Shapes: correct [B], group_index [B] -> [B]. Raises if k < 1; a group with fewer than k rows
    (rows whose reward failed are removed before this runs) gets A = 0 and counts as zero-signal.
    """
    _require(inputs, ["correct"], "passk")
    assert inputs.correct is not None
    if k < 1:
        raise ValueError(f"passk needs k >= 1, got {k}")
    inverse, n_groups = compact_groups(inputs.group_index)
    is_correct = _is_correct(inputs.correct)
    adv = torch.zeros(inputs.rewards.shape, dtype=torch.float64)
    pass_rates, zero = [], 0
    for g in range(n_groups):
        rows = torch.nonzero(inverse == g).flatten()
        n = int(rows.numel())
        n_neg = int((~is_correct[rows]).sum().item())
        if n < k:  # e.g. failed rewards removed rows: no pass@k estimate, so no signal
            pass_rates.append(math.nan)
            zero += 1
            continue
        r_bar = 1.0 - math.comb(n_neg, k) / math.comb(n, k)
        pass_rates.append(r_bar)
        sigma = math.sqrt(r_bar * (1.0 - r_bar))
        if sigma == 0.0:
            zero += 1
            continue
        neg_term = math.comb(n_neg - 1, k - 1) / math.comb(n - 1, k - 1) if n_neg >= 1 else 0.0
        a_pos = (1.0 - r_bar) / sigma
        a_neg = (1.0 - r_bar - neg_term) / sigma
        adv[rows] = torch.where(is_correct[rows], torch.tensor(a_pos, dtype=adv.dtype), a_neg)
    adv = adv.to(inputs.rewards.dtype)
    metrics = {
        "adv/zero_signal_frac": zero / n_groups if n_groups else 0.0,
        "passk/group_pass_at_k_mean": float(np.nanmean(pass_rates)) if any(r == r for r in pass_rates) else 0.0,
        **_summary(adv),
    }
    return AdvantageOutput(adv, metrics)


passk.needs_response_logprobs = False  # type: ignore[attr-defined]


def mean_response_logprob(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean log p per response. [B, T], [B, T] -> [B]; an empty response gets 0."""
    valid = mask.bool()
    total = logprobs.masked_fill(~valid, 0.0).sum(dim=1)
    return total / valid.sum(dim=1).clamp(min=1)


@ADVANTAGES.register("unlikeliness")
def unlikeliness(
    inputs: AdvantageInputs,
    *,
    beta: float = 0.25,
    scale: str = "group",
    eps: float = 1e-6,
    unbiased_std: bool = False,
) -> AdvantageOutput:
    """Unlikeliness reward (He et al. 2025), then GRPO on the reshaped rewards.

    rank_i = rank of the response's mean token log p under the sampler (pi_behavior) inside its group (0 = least
    likely, ties to the lower row index); r~_i = r_i (1 - beta rank_i / G) with G the group size.
    An empty response has mean log p 0, i.e. ranks as most likely. Needs behavior_logprobs and
    response_mask.

    Shapes: rewards [B], behavior_logprobs/response_mask [B, T] -> [B].
    """
    _require(inputs, ["behavior_logprobs", "response_mask"], "unlikeliness")
    assert inputs.behavior_logprobs is not None and inputs.response_mask is not None
    mean_lp = mean_response_logprob(inputs.behavior_logprobs, inputs.response_mask)
    rank = rank_within_group(mean_lp, inputs.group_index)
    size = group_sizes(inputs.group_index)
    factor = 1.0 - beta * rank.to(inputs.rewards.dtype) / size.to(inputs.rewards.dtype)
    shaped = inputs.rewards * factor
    out = grpo(
        AdvantageInputs(rewards=shaped, group_index=inputs.group_index),
        scale=scale,
        eps=eps,
        unbiased_std=unbiased_std,
    )
    out.metrics["unlikeliness/reward_factor_mean"] = float(factor.mean().item()) if factor.numel() else 1.0
    return out


unlikeliness.needs_response_logprobs = False  # type: ignore[attr-defined]  # reads the sampler's log-probs
