"""Advantage estimators against hand-worked numbers, formulas and loop references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl_div.algos import ADVANTAGES, AdvantageInputs, AdvantageOutput, answer_confidence, group_mean_std
from rl_div.algos.advantage_base import prompt_confidence
from rl_div.algos.grouping import rank_within_group
from rl_div.registry import UnknownNameError

EPS = 1e-6


def t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def gi(x: list[int]) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.long)


# ---------------------------------------------------------------- grpo


def test_grpo_hand_worked_groups() -> None:
    # group 0: [1, 0, 0, 1] -> mean 0.5, population std 0.5
    # group 1: [1, 1, 1, 1] -> zero signal
    # group 2: [1, 0, 0, 0] -> mean 0.25, population std sqrt((0.75^2 + 3 * 0.25^2) / 4)
    rewards = t([1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    out = ADVANTAGES["grpo"](AdvantageInputs(rewards, gi([0] * 4 + [1] * 4 + [2] * 4)))
    s2 = math.sqrt((0.75**2 + 3 * 0.25**2) / 4)  # 0.4330127...
    expected = [0.5 / (0.5 + EPS), -0.5 / (0.5 + EPS), -0.5 / (0.5 + EPS), 0.5 / (0.5 + EPS)]
    expected += [0.0] * 4
    expected += [0.75 / (s2 + EPS)] + [-0.25 / (s2 + EPS)] * 3
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-9)
    assert out.advantages[0].item() == pytest.approx(0.999998, abs=1e-6)  # written out
    assert out.advantages[8].item() == pytest.approx(1.7320468, abs=1e-6)
    assert out.metrics["adv/zero_signal_frac"] == pytest.approx(1 / 3)


def test_grpo_groups_need_not_be_contiguous() -> None:
    # same two groups as [1, 0] (id 7) and [3, 1, 2] (id 3), rows interleaved
    rewards = t([1, 3, 0, 1, 2])
    out = ADVANTAGES["grpo"](AdvantageInputs(rewards, gi([7, 3, 7, 3, 3])))
    s3 = math.sqrt(2 / 3)  # population std of [3, 1, 2]
    expected = [0.5 / (0.5 + EPS), 1 / (s3 + EPS), -0.5 / (0.5 + EPS), -1 / (s3 + EPS), 0.0]
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-9)


def test_grpo_batch_and_none_scaling() -> None:
    rewards = t([1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    groups = gi([0] * 4 + [1] * 4 + [2] * 4)
    centred = [0.5, -0.5, -0.5, 0.5] + [0.0] * 4 + [0.75, -0.25, -0.25, -0.25]
    # batch: 7 ones out of 12 -> population std sqrt(7/12 - (7/12)^2) = sqrt(35) / 12
    batch_std = math.sqrt(35) / 12
    out = ADVANTAGES["grpo"](AdvantageInputs(rewards, groups), scale="batch")
    assert out.advantages.tolist() == pytest.approx([c / (batch_std + EPS) for c in centred], abs=1e-9)
    out = ADVANTAGES["grpo"](AdvantageInputs(rewards, groups), scale="none")
    assert out.advantages.tolist() == pytest.approx(centred, abs=1e-12)
    with pytest.raises(ValueError, match="scale"):
        ADVANTAGES["grpo"](AdvantageInputs(rewards, groups), scale="groups")


def test_grpo_unbiased_std_option() -> None:
    # [1, 0, 0, 1]: unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3)
    out = ADVANTAGES["grpo"](AdvantageInputs(t([1, 0, 0, 1]), gi([0] * 4)), unbiased_std=True)
    a = 0.5 / (math.sqrt(1 / 3) + EPS)
    assert out.advantages.tolist() == pytest.approx([a, -a, -a, a], abs=1e-9)


def test_group_mean_std_population_default_and_unbiased() -> None:
    values, groups = t([1, 2, 3, 10, 20]), gi([0, 0, 0, 1, 1])
    mean, std = group_mean_std(values, groups)
    assert mean.tolist() == pytest.approx([2, 2, 2, 15, 15])
    assert std.tolist() == pytest.approx([math.sqrt(2 / 3)] * 3 + [5, 5])
    _, std_u = group_mean_std(values, groups, unbiased=True)
    assert std_u.tolist() == pytest.approx([1, 1, 1, math.sqrt(50), math.sqrt(50)])
    _, single = group_mean_std(t([4.0]), gi([0]), unbiased=True)
    assert single.tolist() == [0.0]  # a group of one: 0, not NaN


group_rewards = st.lists(
    st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=1, max_size=6), min_size=1, max_size=5
)


def _flatten(groups: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    rewards = [r for g in groups for r in g]
    index = [i for i, g in enumerate(groups) for _ in g]
    return t(rewards), gi(index)


@settings(max_examples=60, deadline=None)
@given(groups=group_rewards, scale=st.sampled_from(["group", "none"]))
def test_grpo_sums_to_zero_per_group(groups: list[list[float]], scale: str) -> None:
    rewards, index = _flatten(groups)
    adv = ADVANTAGES["grpo"](AdvantageInputs(rewards, index), scale=scale).advantages
    for g in range(len(groups)):
        assert adv[index == g].sum().item() == pytest.approx(0.0, abs=1e-6 * len(groups[g]) * 10)


@settings(max_examples=60, deadline=None)
@given(
    value=st.floats(-5, 5, allow_nan=False),
    size=st.integers(1, 8),
    scale=st.sampled_from(["group", "batch", "none"]),
)
def test_grpo_all_equal_group_is_exactly_zero(value: float, size: int, scale: str) -> None:
    rewards = t([value] * size + [0.0, 1.0])  # plus a group with signal
    index = gi([0] * size + [1, 1])
    out = ADVANTAGES["grpo"](AdvantageInputs(rewards, index), scale=scale)
    assert out.advantages[:size].tolist() == [0.0] * size
    assert out.metrics["adv/zero_signal_frac"] == 0.5


# ---------------------------------------------------------------- arm

PAD = -100.0  # padding log-probs: must never be read
# four responses (T = 15) written out by hand; fraction 0.2 keeps ceil(0.2 * L) lowest tokens
RESP = [
    [-0.1, -0.5, -0.2, -0.05, -0.3],  # L=5 -> 1 token: -0.5
    [-1.0, -0.2, -2.0, -0.1, -0.3, -0.4, -0.6, -0.7, -0.05, -0.9],  # L=10 -> 2: -2.0, -1.0
    [-0.3, -0.4, -0.1],  # L=3 -> ceil(0.6) = 1: -0.4
    [-0.1] * 12 + [-1.2, -0.8, -3.0],  # L=15 -> 0.2*15 = 3 (not 4): -3.0, -1.2, -0.8
]
ANSWER_CONF = [math.exp(-0.5), math.exp(-1.5), math.exp(-0.4), math.exp(-5.0 / 3.0)]
# prompt: one left pad, then the first real token (no prediction), then log-probs -1, -2, -0.5
PROMPT_LP, PROMPT_MASK = [PAD, 0.0, -1.0, -2.0, -0.5], [0, 0, 1, 1, 1]
PROMPT_CONF = math.exp(-3.5 / 3.0)


def _padded(rows: list[list[float]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    lp = t([r + [PAD] * (width - len(r)) for r in rows])
    mask = t([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return lp, mask


def _arm_inputs(correct: list[float]) -> AdvantageInputs:
    n_groups = len(correct) // 4
    lp, mask = _padded(RESP * n_groups, 15)
    return AdvantageInputs(
        rewards=t(correct),
        group_index=gi([g for g in range(n_groups) for _ in range(4)]),
        correct=t(correct),
        response_logprobs=lp,
        response_mask=mask,
        prompt_logprobs=t([PROMPT_LP] * len(correct)),
        prompt_mask=t([PROMPT_MASK] * len(correct)),
    )


def test_answer_and_prompt_confidence_by_hand() -> None:
    lp, mask = _padded(RESP, 15)
    assert answer_confidence(lp, mask, 0.2).tolist() == pytest.approx(ANSWER_CONF, rel=1e-12)
    conf = prompt_confidence(t([PROMPT_LP]), t([PROMPT_MASK]))
    assert conf.tolist() == pytest.approx([PROMPT_CONF], rel=1e-12)
    # fraction 1: every token; response 2 -> exp(-0.8 / 3)
    assert answer_confidence(lp, mask, 1.0)[2].item() == pytest.approx(math.exp(-0.8 / 3))
    # 0.14 * 50 = 7.000000000000001 in floating point: still 7 tokens (-8 .. -2), not 8
    seven = answer_confidence(t([[-8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0] + [0.0] * 42]), t([[1] * 50]), 0.14)
    assert seven.item() == pytest.approx(math.exp(-35.0 / 7))
    # a zero-length response is NaN (documented), not exp(0) = 1
    assert math.isnan(answer_confidence(t([[0.0, 0.0]]), t([[0, 0]]), 0.2).item())


def test_arm_hand_worked_group_with_a_correct_answer() -> None:
    correct = [1.0, 0.0, 1.0, 0.0]
    base = [0.5 / (0.5 + EPS), -0.5 / (0.5 + EPS), 0.5 / (0.5 + EPS), -0.5 / (0.5 + EPS)]
    out = ADVANTAGES["arm"](_arm_inputs(correct))
    expected = [a + 1.0 * (PROMPT_CONF - c) for a, c in zip(base, ANSWER_CONF, strict=True)]
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-9)
    out = ADVANTAGES["arm"](_arm_inputs(correct), alpha=0.5)
    expected = [a + 0.5 * (PROMPT_CONF - c) for a, c in zip(base, ANSWER_CONF, strict=True)]
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-9)
    mean_c = sum(ANSWER_CONF) / 4
    assert out.metrics["arm/answer_conf_mean"] == pytest.approx(mean_c)
    std_c = math.sqrt(sum((c - mean_c) ** 2 for c in ANSWER_CONF) / 4)
    assert out.metrics["arm/answer_conf_std"] == pytest.approx(std_c)
    assert out.metrics["arm/prompt_conf_mean"] == pytest.approx(PROMPT_CONF)


def test_arm_no_correct_keeps_grpo_and_all_correct_flag() -> None:
    # group 0: no correct response -> A unchanged; group 1: all correct -> pure shaping
    rewards = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    out = ADVANTAGES["arm"](_arm_inputs(rewards))
    shaping = [PROMPT_CONF - c for c in ANSWER_CONF]
    assert out.advantages.tolist() == pytest.approx([0.0] * 4 + shaping, abs=1e-12)
    assert out.metrics["arm/reweighted_frac"] == 0.5
    out = ADVANTAGES["arm"](_arm_inputs(rewards), reweight_all_correct=False)
    assert out.advantages.tolist() == [0.0] * 8


def test_arm_zero_length_response_gets_no_shaping() -> None:
    inputs = _arm_inputs([1.0, 0.0, 1.0, 0.0])
    assert inputs.response_mask is not None
    inputs.response_mask[3] = 0
    adv = ADVANTAGES["arm"](inputs).advantages
    assert adv[3].item() == pytest.approx(-0.5 / (0.5 + EPS), abs=1e-12)


def test_arm_names_missing_fields() -> None:
    inputs = _arm_inputs([1.0, 0.0, 1.0, 0.0])
    inputs.prompt_logprobs = None
    with pytest.raises(ValueError, match="prompt_logprobs"):
        ADVANTAGES["arm"](inputs)


@settings(max_examples=40, deadline=None)
@given(
    correct=st.lists(st.sampled_from([0.0, 1.0]), min_size=8, max_size=8),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from(["group", "batch", "none"]),
)
def test_arm_with_alpha_zero_equals_grpo(correct: list[float], seed: int, scale: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    inputs = _arm_inputs(correct)
    inputs.response_logprobs = -torch.rand(8, 15, generator=gen, dtype=torch.float64) * 3
    arm_adv = ADVANTAGES["arm"](inputs, alpha=0.0, scale=scale).advantages
    grpo_adv = ADVANTAGES["grpo"](inputs, scale=scale).advantages
    assert torch.equal(arm_adv, grpo_adv)


# ---------------------------------------------------------------- passk


@pytest.mark.parametrize("k", [1, 2, 4])
def test_passk_matches_formula(k: int) -> None:
    n = 8
    counts = [0, 1, 3, 5, 7, 8]  # correct responses per group
    correct = [1.0 if i < c else 0.0 for c in counts for i in range(n)]
    out = ADVANTAGES["passk"](AdvantageInputs(t(correct), gi([g for g in range(6) for _ in range(n)]), t(correct)), k=k)
    expected = []
    for c in counts:
        neg = n - c
        r_bar = 1 - math.comb(neg, k) / math.comb(n, k)
        sigma = math.sqrt(r_bar * (1 - r_bar))
        for i in range(n):
            if sigma == 0:
                expected.append(0.0)
            elif i < c:
                expected.append((1 - r_bar) / sigma)
            else:
                expected.append((1 - r_bar - math.comb(neg - 1, k - 1) / math.comb(n - 1, k - 1)) / sigma)
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-12)


def test_passk_k1_is_grpo_and_small_group_gets_zero() -> None:
    correct = t([1, 0, 0, 1, 1, 0])
    groups = gi([0, 0, 0, 0, 1, 1])
    pk = ADVANTAGES["passk"](AdvantageInputs(correct, groups, correct), k=1).advantages
    grpo = ADVANTAGES["grpo"](AdvantageInputs(correct, groups)).advantages
    assert pk.tolist() == pytest.approx(grpo.tolist(), abs=1e-5)
    # a group smaller than k (e.g. after failed rewards were dropped) gets no signal, not an error
    small = t([1, 0, 0, 0, 1, 0])
    out = ADVANTAGES["passk"](AdvantageInputs(small, groups, small), k=3)
    # group 0: N=4, N_neg=3 -> R = 1 - 1/4, sigma = sqrt(3)/4; correct 1/sqrt(3), incorrect -1/(3 sqrt(3))
    r3 = math.sqrt(3)
    assert out.advantages.tolist() == pytest.approx([1 / r3, -1 / (3 * r3), -1 / (3 * r3), -1 / (3 * r3), 0, 0])
    assert out.metrics["adv/zero_signal_frac"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="correct"):
        ADVANTAGES["passk"](AdvantageInputs(correct, groups), k=1)


# ---------------------------------------------------------------- unlikeliness


def test_unlikeliness_by_hand() -> None:
    # mean old log p: r0 -0.5, r1 -0.2, r2 -1.0, r3 -0.5 (tie with r0, higher index)
    # ranks (0 = least likely): r2 0, r0 1, r3 2, r1 3; factor 1 - 0.25 * rank / 4
    old = [[-0.25, -0.75, PAD], [-0.2, PAD, PAD], [-1.0, -1.0, -1.0], [-0.5, -0.5, -0.5]]
    mask = [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]]
    inputs = AdvantageInputs(t([1, 1, 0, 1]), gi([0] * 4), behavior_logprobs=t(old), response_mask=t(mask))
    shaped = [0.9375, 0.8125, 0.0, 0.875]
    mean = sum(shaped) / 4
    std = math.sqrt(sum((s - mean) ** 2 for s in shaped) / 4)
    out = ADVANTAGES["unlikeliness"](inputs)
    assert out.advantages.tolist() == pytest.approx([(s - mean) / (std + EPS) for s in shaped], abs=1e-9)
    out = ADVANTAGES["unlikeliness"](inputs, beta=0.0, scale="none")
    assert out.advantages.tolist() == pytest.approx([0.25, 0.25, -0.75, 0.25], abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(-2, 2)), min_size=1, max_size=12))
def test_rank_within_group_matches_loop(rows: list[tuple[int, int]]) -> None:
    groups, keys = [g for g, _ in rows], [float(k) for _, k in rows]  # shuffled groups, many ties
    expected = [
        sum(1 for j in range(len(rows)) if groups[j] == groups[i] and (keys[j], j) < (keys[i], i))
        for i in range(len(rows))
    ]
    assert rank_within_group(t(keys), gi(groups)).tolist() == expected


# ---------------------------------------------------------------- registry


def test_user_registered_advantage_and_unknown_name() -> None:
    @ADVANTAGES.register("test_only_constant")
    def constant(inputs: AdvantageInputs, *, value: float = 2.0) -> AdvantageOutput:
        return AdvantageOutput(torch.full_like(inputs.rewards, value), {})

    try:
        out = ADVANTAGES["test_only_constant"](AdvantageInputs(t([0, 1]), gi([0, 0])), value=3.0)
        assert out.advantages.tolist() == [3.0, 3.0]
    finally:
        ADVANTAGES._items.pop("test_only_constant")
    with pytest.raises(UnknownNameError, match="did you mean 'grpo'"):
        ADVANTAGES["grp"]
    assert {"grpo", "arm", "passk", "unlikeliness"} <= set(ADVANTAGES.names())
