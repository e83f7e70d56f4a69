"""Token weights against hand-worked examples and explicit loops."""

from __future__ import annotations

import math

import pytest
import torch

from rl_div.algos import TOKEN_WEIGHTS, TokenWeightInputs, steer_lambda, steer_omega
from rl_div.registry import UnknownNameError


def t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_none_is_all_ones() -> None:
    lp = t([[-1.0, -2.0], [-0.5, 0.0]])
    out = TOKEN_WEIGHTS["none"](TokenWeightInputs(lp, lp, lp, t([[1, 1], [1, 0]])))
    assert out.weights.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert out.kl_penalty_coef is None


# ---------------------------------------------------------------- steer

# (A, p, p_old, H_old) per token, then one padding token
STEER_TOKENS = [(1.0, 0.5, 0.5, 1.0), (1.0, 0.9, 0.8, 0.2), (-2.0, 0.1, 0.2, 2.0)]


def _steer_inputs() -> TokenWeightInputs:
    rows = STEER_TOKENS + [(5.0, 0.3, 0.01, 9.0)]  # padding: would dominate max|Omega| if read
    return TokenWeightInputs(
        advantages=t([[a for a, _, _, _ in rows]]),
        logprobs=t([[math.log(p) for _, p, _, _ in rows]]),
        old_logprobs=t([[math.log(q) for _, _, q, _ in rows]]),
        mask=t([[1, 1, 1, 0]]),
        old_entropy=t([[h for _, _, _, h in rows]]),
    )


def _omega_ref() -> list[float]:
    return [(a / q) * p * (1 - p) * (math.log(p) + h) for a, p, q, h in STEER_TOKENS]


def test_steer_omega_by_hand() -> None:
    inp = _steer_inputs()
    assert inp.old_entropy is not None
    omega = steer_omega(inp.advantages, inp.logprobs, inp.old_logprobs, inp.old_entropy, inp.mask)
    assert omega[0, :3].tolist() == pytest.approx(_omega_ref(), rel=1e-10)
    # token 0 written out: (1 / 0.5) * 0.25 * (ln 0.5 + 1) = 0.5 (1 - ln 2)
    assert omega[0, 0].item() == pytest.approx(0.15342640972, abs=1e-10)
    # token 2: (-2 / 0.2) * 0.09 * (ln 0.1 + 2) = 0.27232667...
    assert omega[0, 2].item() == pytest.approx(0.2723266, abs=1e-6)
    assert omega[0, 3].item() == 0.0  # padding


def test_steer_weights_both_variants() -> None:
    omega = _omega_ref()
    m = max(abs(o) for o in omega)  # 0.2723 > floor 0.02
    k = -math.log(0.8) / m
    out = TOKEN_WEIGHTS["steer"](_steer_inputs())
    expected = [min(max(math.exp(-k * abs(o)), 0.8), 1.0) for o in omega]
    assert out.weights[0, :3].tolist() == pytest.approx(expected, rel=1e-10)
    assert out.weights[0, 2].item() == pytest.approx(0.8)  # the max-|Omega| token gets lambda_min
    assert out.metrics["steer/lambda_mean"] == pytest.approx(sum(expected) / 3)
    assert out.metrics["steer/omega_abs_max"] == pytest.approx(m)
    out = TOKEN_WEIGHTS["steer"](_steer_inputs(), variant="linear")
    expected = [1.2 - 0.4 * abs(o) / m for o in omega]
    assert out.weights[0, :3].tolist() == pytest.approx(expected, rel=1e-10)


def test_steer_lambda_closed_forms_and_floor() -> None:
    mask = t([[1, 1, 1, 0]])
    big = t([[0.5, -0.25, 0.0, 7.0]])  # max |Omega| = 0.5 (padding ignored)
    assert steer_lambda(big, mask)[0].tolist() == pytest.approx([0.8, math.sqrt(0.8), 1.0, 1.0])
    assert steer_lambda(big, mask, variant="linear")[0].tolist() == pytest.approx([0.8, 1.0, 1.2, 1.0])
    small = t([[0.01, -0.005, 0.0, 7.0]])  # max 0.01 < floor 0.02, so M = 0.02
    assert steer_lambda(small, mask)[0].tolist() == pytest.approx([math.sqrt(0.8), 0.8**0.25, 1.0, 1.0])
    assert steer_lambda(small, mask, variant="linear")[0].tolist() == pytest.approx([1.0, 1.1, 1.2, 1.0])
    with pytest.raises(ValueError, match="variant"):
        steer_lambda(big, mask, variant="cubic")


def test_steer_tiny_p_old_is_clamped_to_1e_8_not_given_the_neutral_weight() -> None:
    """Issue 8 item 17: in float32, exp(-110) underflows to 0; unclamped, A / 0 = inf was zeroed and the
    token got weight 1.0. Clamped at 1e-8 (the official implementation), it has the largest |Omega|."""
    inp = _steer_inputs()
    for name in ("advantages", "logprobs", "old_logprobs", "old_entropy", "mask"):
        setattr(inp, name, getattr(inp, name).float())
    inp.old_logprobs[0, 0] = -110.0  # p_old below float32's smallest subnormal
    inp.old_logprobs[0, 1] = -110.0
    inp.advantages[0, 1] = 0.0
    assert inp.old_entropy is not None and float(torch.tensor(-110.0).exp()) == 0.0
    omega = steer_omega(inp.advantages, inp.logprobs, inp.old_logprobs, inp.old_entropy, inp.mask)
    # token 0 by hand: (1 / 1e-8) * 0.25 * (ln 0.5 + 1); token 1: A = 0 gives 0
    assert omega[0, 0].item() == pytest.approx(1e8 * 0.25 * (1 - math.log(2)), rel=1e-5)
    assert omega[0, 1].item() == 0.0
    out = TOKEN_WEIGHTS["steer"](inp)
    assert out.weights[0, 0].item() == pytest.approx(0.8)  # the largest |Omega|: lambda_min, not 1.0
    assert out.weights[0, 1].item() == 1.0  # Omega = 0
    assert out.metrics["steer/nonfinite_frac"] == 0.0


def test_steer_non_finite_omega_is_zero() -> None:
    inp = _steer_inputs()
    assert inp.old_entropy is not None
    inp.old_entropy[0, 0] = math.inf  # an infinite H_old: Omega = inf, zeroed (weight 1)
    omega = steer_omega(inp.advantages, inp.logprobs, inp.old_logprobs, inp.old_entropy, inp.mask)
    assert omega[0, 0].item() == 0.0
    out = TOKEN_WEIGHTS["steer"](inp)
    assert out.weights[0, 0].item() == 1.0
    assert out.weights[0, 2].item() == pytest.approx(0.8)
    assert out.metrics["steer/nonfinite_frac"] == pytest.approx(1 / 3)


def test_steer_needs_old_entropy() -> None:
    inp = _steer_inputs()
    inp.old_entropy = None
    with pytest.raises(ValueError, match="old_entropy"):
        TOKEN_WEIGHTS["steer"](inp)


# ---------------------------------------------------------------- clip_cov / kl_cov

# two responses, A = +2 and -2, three real tokens each and one padding column whose extreme
# values would shift the means (and become a candidate) if it were read
COV_LP = [[-0.1, -3.0, -0.5, -50.0], [-0.2, -4.0, -1.0, -50.0]]
COV_ADV = [[2.0] * 4, [-2.0] * 4]
COV_MASK = [[1, 1, 1, 0], [1, 1, 1, 0]]


def _cov_inputs(seed: int = 0) -> TokenWeightInputs:
    lp = t(COV_LP)
    return TokenWeightInputs(t(COV_ADV), lp, lp.clone(), t(COV_MASK), generator=torch.Generator().manual_seed(seed))


def _cov_ref() -> dict[tuple[int, int], float]:
    cells = [(i, j) for i in range(2) for j in range(4) if COV_MASK[i][j]]
    a_mean = sum(COV_ADV[i][j] for i, j in cells) / len(cells)
    lp_mean = sum(COV_LP[i][j] for i, j in cells) / len(cells)  # -8.8 / 6
    return {(i, j): (COV_ADV[i][j] - a_mean) * (COV_LP[i][j] - lp_mean) for i, j in cells}


def test_cov_reference_values() -> None:
    cov = _cov_ref()
    assert cov[(0, 0)] == pytest.approx(2 * (-0.1 + 8.8 / 6))  # 2.7333, in (1, 5)
    assert cov[(0, 2)] == pytest.approx(2 * (-0.5 + 8.8 / 6))  # 1.9333, in (1, 5)
    assert cov[(1, 1)] == pytest.approx(-2 * (-4.0 + 8.8 / 6))  # 5.0667, above 5


def test_clip_cov_zeroes_candidates() -> None:
    # candidates with Cov in (1, 5): (0, 0) and (0, 2); fraction 0.5 of 6 valid -> 3 >= 2 picks
    out = TOKEN_WEIGHTS["clip_cov"](_cov_inputs(), fraction=0.5)
    assert out.weights.tolist() == [[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    assert out.metrics["clip_cov/frac"] == pytest.approx(2 / 6)
    assert out.kl_penalty_coef is None


def test_clip_cov_default_picks_one_random_candidate() -> None:
    seen = set()
    for seed in range(20):
        w = TOKEN_WEIGHTS["clip_cov"](_cov_inputs(seed)).weights  # max(1, floor(2e-4 * 6)) = 1
        zeros = {(int(i), int(j)) for i, j in torch.nonzero(w == 0).tolist()}
        assert len(zeros) == 1
        seen |= zeros
    assert seen == {(0, 0), (0, 2)}
    a = TOKEN_WEIGHTS["clip_cov"](_cov_inputs(3)).weights
    b = TOKEN_WEIGHTS["clip_cov"](_cov_inputs(3)).weights
    assert torch.equal(a, b)  # the generator makes it reproducible


def test_kl_cov_top_tokens() -> None:
    out = TOKEN_WEIGHTS["kl_cov"](_cov_inputs())  # 1 token: the largest Cov, (1, 1)
    assert out.kl_penalty_coef is not None
    assert out.kl_penalty_coef.tolist() == [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    assert out.weights.tolist() == [[1.0] * 4] * 2
    out = TOKEN_WEIGHTS["kl_cov"](_cov_inputs(), fraction=0.34, beta=0.5)  # floor(2.04) = 2 tokens
    assert out.kl_penalty_coef is not None
    assert out.kl_penalty_coef.tolist() == [[0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]]


# ---------------------------------------------------------------- high_entropy_mask


def test_high_entropy_mask_keeps_top_fraction() -> None:
    ent = t([[0.1, 0.2, 0.3, 0.4, 0.5, 9.0], [0.6, 0.7, 0.8, 0.9, 1.0, 9.0]])
    mask = t([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])  # 9.0 is padding
    out = TOKEN_WEIGHTS["high_entropy_mask"](TokenWeightInputs(ent, ent, ent, mask, entropy=ent))
    # 10 valid tokens -> ceil(0.2 * 10) = 2 kept: 0.9 and 1.0
    assert out.weights.tolist() == [[0.0] * 6, [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]]
    assert out.metrics["high_entropy_mask/kept_frac"] == pytest.approx(0.2)


def test_high_entropy_mask_ties_and_old_source() -> None:
    ent = t([[1.0, 1.0, 1.0, 0.5, 0.4, 0.3, 0.2]])  # 7 tokens -> ceil(1.4) = 2, ties at 1.0 kept
    mask = t([[1] * 7])
    inp = TokenWeightInputs(ent, ent, ent, mask, old_entropy=ent)
    out = TOKEN_WEIGHTS["high_entropy_mask"](inp, entropy_source="old")
    assert out.weights.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="entropy"):
        TOKEN_WEIGHTS["high_entropy_mask"](inp)  # current entropy is missing


def test_token_weight_registry_names() -> None:
    assert {"none", "steer", "clip_cov", "kl_cov", "high_entropy_mask"} <= set(TOKEN_WEIGHTS.names())
    with pytest.raises(UnknownNameError, match="did you mean 'steer'"):
        TOKEN_WEIGHTS["steeer"]
