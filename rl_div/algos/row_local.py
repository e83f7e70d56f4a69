"""Row-local splits of advantage estimators: a reward part known before the update, plus a shaping
that reads only its own row's log-probs (issue 15, item 2; rl_div.learner.fused_advantage uses them).

An estimator whose advantage is

    A~_i = base_i + [shaped_i] * s_i

with ``base`` and ``shaped`` computed from rewards, correctness and groups alone, and ``s_i`` from
row i's response log-probs (and prompt log-probs) alone, can be finished inside the update's
micro-batch loop: with one PPO epoch and one optimizer step, the update's forward of a micro-batch
IS pi_old for its rows, so its detached log-probs give s for those rows before their loss. Such an
estimator registers a :class:`RowLocalSplit` under its own name in :data:`ROW_LOCAL` and declares
``AdvantageNeeds(row_local=True)`` where it registers in ADVANTAGES (its ``prompt_logprobs`` says
whether the shaping reads prompt log-probs); the split must reproduce the estimator exactly
(tests/test_fused_advantage.py checks ARM against :func:`rl_div.algos.advantages.arm`). The
split's parts get the estimator's full keyword params (its signature's defaults, overridden by the
config's).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rl_div.algos.advantage_base import (
    ADVANTAGES,
    AdvantageInputs,
    AdvantageOutput,
    _is_correct,
    _nan_stats,
    _summary,
    answer_confidence,
    grpo_advantages,
    prompt_confidence,
)
from rl_div.algos.grouping import fraction_of_groups, group_all, group_all_equal, group_any
from rl_div.registry import Registry


@dataclass
class RewardPart:
    """What a row-local estimator knows before the update. B rows."""

    base: torch.Tensor  # [B] the advantage without shaping
    shaped: torch.Tensor  # [B] bool, rows whose shaping counts (the others keep base)
    metrics: dict[str, float]  # metrics that depend on rewards alone


@dataclass
class RowLocalSplit:
    """An estimator in three pure parts (b rows of a micro-batch, B of the batch; T / P tokens):

    reward_part(inputs, **params) -> RewardPart (reads rewards, correct, group_index only);
    row_values(response_logprobs [b, T], response_mask [b, T], prompt_logprobs [b, P] | None,
    prompt_mask [b, P], dtype, **params) -> {name: [b]}, "shaping" among them in ``dtype`` (the
    base's; non-finite counts as 0);
    metrics(part, values {name: [B]}, shaping [B] as applied, advantages [B], **params) -> metrics.
    Calling the split on whole-batch inputs runs the three in a row, as the estimator would.
    """

    reward_part: Callable[..., RewardPart]
    row_values: Callable[..., dict[str, torch.Tensor]]
    metrics: Callable[..., dict[str, float]]

    def __call__(self, inputs: AdvantageInputs, **params: Any) -> AdvantageOutput:
        assert inputs.response_logprobs is not None and inputs.response_mask is not None
        assert inputs.prompt_mask is not None
        part = self.reward_part(inputs, **params)
        values = self.row_values(inputs.response_logprobs, inputs.response_mask, inputs.prompt_logprobs,
                                 inputs.prompt_mask, dtype=part.base.dtype, **params)
        shaping, adv = apply_shaping(part.base, part.shaped, values["shaping"])
        return AdvantageOutput(adv, self.metrics(part, values, shaping, adv, **params))


ROW_LOCAL: Registry[RowLocalSplit] = Registry("row-local advantage split")


def apply_shaping(base: torch.Tensor, shaped: torch.Tensor, shaping: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(shaping as applied, advantages), both [b]: non-finite shaping is 0, and so is the shaping of
    rows outside ``shaped``. base, shaped (bool), shaping: [b]."""
    shaping = shaping.to(base.dtype)
    shaping = torch.where(torch.isfinite(shaping), shaping, torch.zeros_like(shaping))
    shaping = torch.where(shaped, shaping, torch.zeros_like(shaping))
    return shaping, base + shaping


def full_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The estimator's keyword params: its signature's defaults, overridden by ``params``."""
    return {**_keyword_defaults(ADVANTAGES[name]), **params}


@functools.cache
def _keyword_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """fn's keyword-only parameters that have defaults (read once per function: inspect is slow)."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


# ---- ARM (docs/algorithms.md section 1): A~_i = A_i + alpha (c(q) - c(o_i|q)) in groups with a correct one
def arm_reward_part(inputs: AdvantageInputs, *, reweight_all_correct: bool, scale: str, eps: float,
                    unbiased_std: bool, **_: Any) -> RewardPart:
    """GRPO's A_i and the rows ARM reweights (groups with a correct response; not all-correct ones
    unless reweight_all_correct). rewards/correct/group_index [B] -> RewardPart."""
    if inputs.correct is None:
        raise ValueError("advantage 'arm' needs AdvantageInputs.correct, which is None")
    base = grpo_advantages(inputs.rewards, inputs.group_index, scale=scale, eps=eps, unbiased_std=unbiased_std)
    is_correct = _is_correct(inputs.correct)
    apply = group_any(is_correct, inputs.group_index)
    if not reweight_all_correct:
        apply = apply & ~group_all(is_correct, inputs.group_index)
    zero = fraction_of_groups(group_all_equal(inputs.rewards, inputs.group_index), inputs.group_index)
    return RewardPart(base, apply, {"adv/zero_signal_frac": zero})


def arm_row_values(response_logprobs: torch.Tensor, response_mask: torch.Tensor,
                   prompt_logprobs: torch.Tensor | None, prompt_mask: torch.Tensor, *, dtype: torch.dtype,
                   alpha: float, low_prob_fraction: float, **_: Any) -> dict[str, torch.Tensor]:
    """Per row: answer confidence c(o|q), prompt confidence c(q) and alpha (c(q) - c(o|q)) in dtype.
    response_* [b, T], prompt_* [b, P] -> {answer_conf, prompt_conf, shaping} [b]."""
    if prompt_logprobs is None:
        raise ValueError("advantage 'arm' needs prompt log-probs, which are None")
    c_answer = answer_confidence(response_logprobs, response_mask, low_prob_fraction)
    c_prompt = prompt_confidence(prompt_logprobs, prompt_mask)
    shaping = alpha * (c_prompt.to(dtype) - c_answer.to(dtype))
    return {"answer_conf": c_answer, "prompt_conf": c_prompt, "shaping": shaping}


def arm_metrics(part: RewardPart, values: dict[str, torch.Tensor], shaping: torch.Tensor, adv: torch.Tensor,
                **_: Any) -> dict[str, float]:
    """arm()'s metrics from the gathered per-row values [B], the applied shaping and advantages [B]."""
    a_mean, a_std = _nan_stats(values["answer_conf"])
    p_mean, p_std = _nan_stats(values["prompt_conf"])
    return {
        **part.metrics,
        "arm/answer_conf_mean": a_mean,
        "arm/answer_conf_std": a_std,
        "arm/prompt_conf_mean": p_mean,
        "arm/prompt_conf_std": p_std,
        "arm/reweighted_frac": float(part.shaped.double().mean().item()) if part.shaped.numel() else 0.0,
        "arm/shaping_abs_mean": float(shaping.abs().mean().item()) if shaping.numel() else 0.0,
        **_summary(adv),
    }


ROW_LOCAL.register("arm")(RowLocalSplit(arm_reward_part, arm_row_values, arm_metrics))
