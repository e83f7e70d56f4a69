"""Row-local advantage splits (rl_div.algos.row_local): the split of ARM, run over micro-batches as the
fused update runs it, reproduces a whole-batch ARM written out here from docs/algorithms.md (the library's
arm() is the split itself; tests/test_advantages.py pins it to hand-worked values) on random inputs,
NaN confidences and unscored rows included."""

from __future__ import annotations

import math

import pytest
import torch

from rl_div.algos.advantage_base import (
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
from rl_div.algos.row_local import ROW_LOCAL, apply_shaping, full_params


def random_inputs(seed: int, dtype: torch.dtype) -> AdvantageInputs:
    g = torch.Generator().manual_seed(seed)
    groups, size, t, p = 5, 4, 7, 6
    b = groups * size
    rewards = torch.randint(0, 2, (b,), generator=g).to(dtype)
    rewards[0:4] = 1.0  # an all-correct group
    rewards[4:8] = torch.tensor([0.0, 0.3, 0.0, 0.0], dtype=dtype)  # no correct answer, GRPO signal
    correct = (rewards == 1.0).to(dtype)
    correct[9] = math.nan  # unscored: counts as not correct
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[10] = 0  # an empty response: NaN answer confidence, no shaping
    response_mask = (torch.arange(t)[None, :] < lengths[:, None]).to(dtype)
    prompt_mask = torch.ones(b, p, dtype=dtype)
    prompt_mask[:, 0] = 0
    prompt_mask[13] = 0  # a prompt without log-probs: NaN prompt confidence
    return AdvantageInputs(
        rewards=rewards, group_index=torch.arange(groups).repeat_interleave(size), correct=correct,
        response_logprobs=-3 * torch.rand(b, t, generator=g, dtype=dtype) * response_mask,
        response_mask=response_mask,
        prompt_logprobs=torch.where(prompt_mask.bool(), -2 * torch.rand(b, p, generator=g, dtype=dtype), math.nan),
        prompt_mask=prompt_mask)


def reference_arm(inputs: AdvantageInputs, *, alpha: float = 1.0, low_prob_fraction: float = 0.2,
                  reweight_all_correct: bool = True, scale: str = "group", eps: float = 1e-6,
                  unbiased_std: bool = False) -> AdvantageOutput:
    """ARM on the whole batch in one piece: A~_i = A_i + alpha (c(q) - c(o_i|q)) in groups with a
    correct response (not all-correct ones unless reweight_all_correct); NaN shaping counts as 0."""
    assert inputs.correct is not None and inputs.response_logprobs is not None
    assert inputs.response_mask is not None and inputs.prompt_logprobs is not None
    assert inputs.prompt_mask is not None
    rewards, groups = inputs.rewards, inputs.group_index
    base = grpo_advantages(rewards, groups, scale=scale, eps=eps, unbiased_std=unbiased_std)
    c_answer = answer_confidence(inputs.response_logprobs, inputs.response_mask, low_prob_fraction)
    c_prompt = prompt_confidence(inputs.prompt_logprobs, inputs.prompt_mask)
    shaping = alpha * (c_prompt.to(base.dtype) - c_answer.to(base.dtype))
    shaping = torch.where(torch.isfinite(shaping), shaping, torch.zeros_like(shaping))
    is_correct = _is_correct(inputs.correct)
    apply = group_any(is_correct, groups)
    if not reweight_all_correct:
        apply = apply & ~group_all(is_correct, groups)
    shaping = torch.where(apply, shaping, torch.zeros_like(shaping))
    adv = base + shaping
    a_mean, a_std = _nan_stats(c_answer)
    p_mean, p_std = _nan_stats(c_prompt)
    return AdvantageOutput(adv, {
        "adv/zero_signal_frac": fraction_of_groups(group_all_equal(rewards, groups), groups),
        "arm/answer_conf_mean": a_mean, "arm/answer_conf_std": a_std,
        "arm/prompt_conf_mean": p_mean, "arm/prompt_conf_std": p_std,
        "arm/reweighted_frac": float(apply.double().mean().item()),
        "arm/shaping_abs_mean": float(shaping.abs().mean().item()),
        **_summary(adv),
    })


@pytest.mark.parametrize("params", [{}, {"alpha": 2.5, "low_prob_fraction": 0.5},
                                    {"reweight_all_correct": False, "scale": "none"}, {"alpha": 0.0}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("micro", [1, 3, 7, 20])
def test_arm_split_over_micro_batches_reproduces_arm(params: dict, dtype: torch.dtype, micro: int) -> None:
    inputs = random_inputs(seed=micro, dtype=dtype)
    expected = reference_arm(inputs, **params)
    split, full = ROW_LOCAL["arm"], full_params("arm", params)
    part = split.reward_part(AdvantageInputs(rewards=inputs.rewards, group_index=inputs.group_index,
                                             correct=inputs.correct), **full)
    assert inputs.response_logprobs is not None and inputs.response_mask is not None
    assert inputs.prompt_logprobs is not None and inputs.prompt_mask is not None
    gathered: dict[str, list[torch.Tensor]] = {}
    advantages = []
    for s in range(0, inputs.rewards.numel(), micro):
        rows = slice(s, s + micro)
        values = split.row_values(inputs.response_logprobs[rows], inputs.response_mask[rows],
                                  inputs.prompt_logprobs[rows], inputs.prompt_mask[rows], dtype=part.base.dtype,
                                  **full)
        advantages.append(apply_shaping(part.base[rows], part.shaped[rows], values["shaping"])[1])
        for k, v in values.items():
            gathered.setdefault(k, []).append(v)
    values = {k: torch.cat(v) for k, v in gathered.items()}
    shaping, adv = apply_shaping(part.base, part.shaped, values["shaping"])
    torch.testing.assert_close(torch.cat(advantages), expected.advantages, rtol=0, atol=0)
    torch.testing.assert_close(adv, expected.advantages, rtol=0, atol=0)
    assert split.metrics(part, values, shaping, adv, **full) == expected.metrics
    assert split(inputs, **full).metrics == expected.metrics
    # the cases the inputs were built for did happen
    assert math.isnan(float(values["answer_conf"][10])) and math.isnan(float(values["prompt_conf"][13]))
    assert not bool(part.shaped[4:8].any()) and bool(part.base[4:8].abs().sum() > 0)
    assert bool(part.shaped[0:4].all()) is params.get("reweight_all_correct", True)


def test_full_params_are_arms_defaults_overridden() -> None:
    assert full_params("arm", {"alpha": 0.5}) == {"alpha": 0.5, "low_prob_fraction": 0.2, "reweight_all_correct": True,
                                                   "scale": "group", "eps": 1e-6, "unbiased_std": False}


def test_distinct_rows() -> None:
    from rl_div.algos.grouping import distinct_rows

    rows = torch.tensor([[3, 1], [0, 0], [3, 1], [2, 2], [0, 0]])
    first, inverse = distinct_rows(rows)
    assert first.tolist() == [0, 1, 3] and inverse.tolist() == [0, 1, 0, 2, 1]
    assert distinct_rows(torch.zeros(0, 2, dtype=torch.long))[0].numel() == 0
