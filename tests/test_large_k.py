"""avg@n, pass^k, maj@k with ties, per-problem pass@k and the crossover k: hand-worked values and
math.comb references."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from rl_div.metrics.large_k import (
    avg_at_n,
    crossover_k,
    first_crossing,
    maj_at_k,
    pass_at_k_matrix,
    pass_hat_k,
)


def test_avg_at_n_by_hand() -> None:
    # problem 0: 3 of 4 correct, problem 1: 1 of 4 (one unscored NaN counts as wrong) -> (0.75 + 0.25) / 2
    assert avg_at_n([[1, 1, 1, 0], [1, 0, float("nan"), 0]]) == pytest.approx(0.5, abs=0)
    with pytest.raises(ValueError):
        avg_at_n([1, 0])


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (4, 2, 2, Fraction(1, 6)),   # C(2,2)/C(4,2) = 1/6
    (5, 3, 2, Fraction(3, 10)),  # C(3,2)/C(5,2) = 3/10
    (5, 1, 2, Fraction(0)),      # fewer correct than k
    (7, 7, 7, Fraction(1)),
    (10, 4, 1, Fraction(4, 10)),  # k = 1 is c/n
])
def test_pass_hat_k_by_hand(n: int, c: int, k: int, expected: Fraction) -> None:
    assert pass_hat_k(n, c, k) == pytest.approx(float(expected), rel=1e-14, abs=0)


def test_pass_hat_k_and_pass_at_k_against_math_comb_at_n_1024() -> None:
    rng = np.random.default_rng(3)
    n = 1024
    c = np.concatenate([rng.integers(0, n + 1, 300), [0, 1, 2, n - 1, n]])
    ks = [1 << e for e in range(11)]
    got_all = pass_hat_k(n, c[:, None], np.asarray(ks)[None, :])
    got_any = pass_at_k_matrix(n, c, ks)
    for i, ci in enumerate(c):
        for j, k in enumerate(ks):
            exact_all = Fraction(math.comb(int(ci), k), math.comb(n, k))
            exact_any = 1 - Fraction(math.comb(n - int(ci), k), math.comb(n, k))
            if exact_all == 0:
                assert got_all[i, j] == 0.0
            else:  # relative: pass^k at n = 1024 reaches 1e-300
                assert abs(got_all[i, j] / float(exact_all) - 1) <= 1e-12
            assert abs(got_any[i, j] - float(exact_any)) <= 1e-12


def test_maj_at_k_with_ties_by_hand() -> None:
    answers = [["a", "b", "a", "c"], ["x", None, "y", "y"], [None, None, None, None]]
    correct = [[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # k = 4: p0 'a' wins (2 votes) -> 1; p1 'y' wins -> 0; p2 nothing voted -> 0.   mean 1/3
    assert maj_at_k(answers, correct, 4) == pytest.approx(1 / 3, abs=1e-15)
    # k = 2: p0 blocks [a,b] tie -> 1/2, [a,c] tie -> 1/2 => 1/2; p1 [x,None] -> 1, [y,y] -> 0 => 1/2; p2 0
    assert maj_at_k(answers, correct, 2) == pytest.approx(1 / 3, abs=1e-15)
    # k = 1: each sample votes alone: p0 2/4, p1 1/4 (None gives 0), p2 0
    assert maj_at_k(answers, correct, 1) == pytest.approx((0.5 + 0.25) / 3, abs=1e-15)
    # k = 3: one block of the first 3 samples: p0 'a' 2 votes -> 1; p1 x vs y one each -> tie 1/2; p2 0
    assert maj_at_k(answers, correct, 3) == pytest.approx(1.5 / 3, abs=1e-15)
    with pytest.raises(ValueError):
        maj_at_k(answers, correct, 5)


def test_first_crossing_by_hand() -> None:
    ks = [1, 2, 4, 8]
    diff = np.array([[0.2, 0.1, -0.01, -0.1], [0.3, 0.2, 0.1, 0.05], [0.0, 0.1, -0.1, 0.0]])
    assert first_crossing(diff, ks).tolist() == [4.0, math.inf, 1.0]


def test_crossover_with_interval() -> None:
    ks = [1, 2, 4, 8]
    # every problem: the model leads at k = 1, 2 and the reference overtakes from k = 4 on -> k = 4, tight
    model = np.tile([0.5, 0.6, 0.65, 0.7], (40, 1))
    reference = np.tile([0.3, 0.5, 0.7, 0.9], (40, 1))
    assert crossover_k(model, reference, ks) == crossover_k(model, reference, ks, seed=1)
    got = crossover_k(model, reference, ks)
    assert (got.k, got.lo, got.hi, got.none_fraction) == (4, 4, 4, 0.0)
    # a reference that never catches up: none up to n, in every resample
    never = crossover_k(reference + 1.0, reference, ks)
    assert (never.k, never.lo, never.hi, never.none_fraction) == (None, None, None, 1.0)
    # half the problems (A) cross at k = 2, half (B) never: mean diffs (0.1, 0.1, 0.025, -0.1) -> point
    # estimate 8. With a share f of B in a resample, the crossing is at 4 when f <= 4/9 (P(Bin(40, 1/2)
    # <= 17) ~ 0.21, so the 2.5% quantile is 4), at 2 only when f <= 1/4 (~0.001) and never when
    # f > 3/4 (~1e-4): interval [4, 8]
    mixed_model = np.vstack([np.tile([0.5, 0.5, 0.5, 0.5], (20, 1)), np.tile([0.5, 0.8, 0.85, 0.8], (20, 1))])
    mixed_ref = np.vstack([np.tile([0.4, 0.6, 0.7, 0.8], (20, 1)), np.tile([0.4, 0.5, 0.6, 0.7], (20, 1))])
    mixed = crossover_k(mixed_model, mixed_ref, ks)
    assert (mixed.k, mixed.lo, mixed.hi) == (8, 4, 8) and mixed.none_fraction < 0.01


def test_bootstrap_mean_interval() -> None:
    from rl_div.metrics.large_k import bootstrap_mean

    same = np.tile([0.25, 1.0], (30, 1))  # every problem alike: the interval is the point
    mean, lo, hi = bootstrap_mean(same)
    assert mean.tolist() == lo.tolist() == hi.tolist() == [0.25, 1.0]
    # half 0, half 1: mean 1/2, the 95% interval ~ 1/2 +- 1.96 sqrt(1/4 / 400) = +- 0.049
    values = np.repeat([[0.0], [1.0]], 200, axis=0)
    mean, lo, hi = bootstrap_mean(values, resamples=4000)
    assert mean[0] == 0.5 and abs(lo[0] - 0.451) < 0.01 and abs(hi[0] - 0.549) < 0.01
