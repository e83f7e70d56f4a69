"""Advantage estimators: one advantage per response, registered by name (docs/algorithms.md section 1).

Every estimator is ``fn(inputs: AdvantageInputs, **params) -> AdvantageOutput`` with keyword-only
params that have defaults; the config names the estimator and its params. Each declares what it
reads of the policy where it is registered (:class:`AdvantageNeeds`). Plain GRPO is just
``ADVANTAGES["grpo"]``: there is no special path for it. All shaping is computed without gradient.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rl_div.algos.advantage_base import (
    ADVANTAGES,
    AdvantageInputs,
    AdvantageNeeds,
    AdvantageOutput,
    _is_correct,
    _require,
    _summary,
    grpo_advantages,
)
from rl_div.algos.grouping import (
    compact_groups,
    fraction_of_groups,
    group_all_equal,
    group_sizes,
    rank_within_group,
)
from rl_div.algos.row_local import ROW_LOCAL


@ADVANTAGES.register("grpo", needs=AdvantageNeeds(response_logprobs=False))
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


@ADVANTAGES.register("arm", needs=AdvantageNeeds(prompt_logprobs=True, row_local=True, verdicts=True))
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
    # (reward part, per-row shaping, metrics).
    return ROW_LOCAL["arm"](inputs, alpha=alpha, low_prob_fraction=low_prob_fraction,
                            reweight_all_correct=reweight_all_correct, scale=scale, eps=eps,
                            unbiased_std=unbiased_std)


@ADVANTAGES.register("passk", needs=AdvantageNeeds(response_logprobs=False, verdicts=True))
def passk(inputs: AdvantageInputs, *, k: int = 4) -> AdvantageOutput:
    """Pass@k training advantages (Chen et al. 2025), per group of N responses, N_neg incorrect.

    R = 1 - C(N_neg, k) / C(N, k), sigma = sqrt(R (1 - R)); a correct response gets
    (1 - R) / sigma, an incorrect one (1 - R - C(N_neg - 1, k - 1) / C(N - 1, k - 1)) / sigma.
    A group with sigma = 0 (no correct response, or fewer than k incorrect so every k-subset
    passes) gets A = 0; no eps is added, so values match the formula exactly. Unscored (NaN)
    responses count as incorrect here; the training loop and TRL leave them out of the group first
    (it declares ``verdicts``, rl_div.algos.advantage_base.signal_rows). Exact binomials (math.comb) in a
    loop over groups, which are few.

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


def mean_response_logprob(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean log p per response. [B, T], [B, T] -> [B]; an empty response gets 0."""
    valid = mask.bool()
    total = logprobs.masked_fill(~valid, 0.0).sum(dim=1)
    return total / valid.sum(dim=1).clamp(min=1)


@ADVANTAGES.register(
    "unlikeliness", needs=AdvantageNeeds(response_logprobs=False, behavior_logprobs=True))
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
