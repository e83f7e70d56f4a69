"""pass@k against exact rational binomials; mean@n and maj@n against hand counts."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl_div.metrics import default_ks, maj_at_n, mean_at_n, pass_at_k, pass_at_k_curve
from rl_div.metrics import passk as passk_module


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """1 - C(n-c, k) / C(n, k) with integer arithmetic (math.comb is 0 when k > n - c)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def assert_close_rel(got: float, want: Fraction, rel: float = 1e-12) -> None:
    w = float(want)
    assert abs(got - w) <= rel * abs(w), (got, w)


GRID_C = [0, 1, 2, 5, 100, 1000, 1990, 1995, 1999, 2000]
GRID_K = [1, 2, 7, 64, 500, 1000, 1990, 1999, 2000]


@pytest.mark.parametrize("c", GRID_C)
def test_matches_exact_binomials_at_n_2000(c: int) -> None:
    for k in GRID_K:
        assert_close_rel(pass_at_k(2000, c, k), exact_pass_at_k(2000, c, k))


def test_matches_exact_binomials_exhaustively_for_small_n() -> None:
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert_close_rel(pass_at_k(n, c, k), exact_pass_at_k(n, c, k))


def test_tiny_and_near_one_values_keep_relative_precision() -> None:
    # pass@1 with 1 correct of 5000 is exactly 1/5000; lgamma differences would lose ~8 digits here.
    assert_close_rel(pass_at_k(5000, 1, 1), Fraction(1, 5000))
    assert_close_rel(pass_at_k(3000, 2, 3), exact_pass_at_k(3000, 2, 3))
    assert_close_rel(pass_at_k(3000, 1500, 1499), exact_pass_at_k(3000, 1500, 1499))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_random_cases_match_exact(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    assert_close_rel(pass_at_k(n, c, k), exact_pass_at_k(n, c, k))


def test_chunked_term_evaluation_matches_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force many small chunks (and elements larger than a chunk) through the ragged reduction.
    monkeypatch.setattr(passk_module, "_TERMS_PER_CHUNK", 7)
    n = np.array([50, 50, 50, 40, 10, 2000])
    c = np.array([0, 3, 20, 40, 9, 1000])
    k = np.array([5, 30, 4, 1, 1, 300])
    got = pass_at_k(n, c, k)
    for i in range(len(n)):
        assert_close_rel(float(got[i]), exact_pass_at_k(int(n[i]), int(c[i]), int(k[i])))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_monotone_in_k(nc: tuple[int, int]) -> None:
    n, c = nc
    curve = pass_at_k(n, c, np.arange(1, n + 1))
    assert np.all(np.diff(curve) >= 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_monotone_in_c(nk: tuple[int, int]) -> None:
    n, k = nk
    assert np.all(np.diff(pass_at_k(n, np.arange(0, n + 1), k)) >= 0)


def test_all_correct_is_one_and_none_correct_is_zero() -> None:
    for n in [1, 2, 17, 2000]:
        ks = np.arange(1, n + 1)
        assert np.all(pass_at_k(n, n, ks) == 1.0)
        assert np.all(pass_at_k(n, 0, ks) == 0.0)
        assert not np.any(np.signbit(pass_at_k(n, 0, ks)))  # no -0.0 in logs/CSVs


def test_scalar_returns_float_and_arrays_broadcast() -> None:
    assert type(pass_at_k(10, 3, 2)) is float
    assert isinstance(pass_at_k(np.int64(10), np.int64(3), 2), float)
    n = np.array([10, 20, 30])
    c = np.array([[0], [5]])
    got = pass_at_k(n, c, 4)
    assert isinstance(got, np.ndarray) and got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert_close_rel(got[i, j], exact_pass_at_k(int(n[j]), int(c[i, 0]), 4))
    ks = pass_at_k(8, 2, [1, 2, 8])
    assert ks.shape == (3,)
    assert np.allclose(ks, [2 / 8, 1 - 15 / 28, 1.0], rtol=1e-14)
    # integer-valued floats are accepted (counts often come from float tensors)
    assert pass_at_k(10.0, 3.0, 2.0) == pass_at_k(10, 3, 2)


@pytest.mark.parametrize(
    ("n", "c", "k", "match"),
    [
        (5, 6, 1, r"0 <= c <= n"),
        (5, -1, 1, r"0 <= c <= n"),
        (5, 2, 0, r"1 <= k <= n"),
        (5, 2, 6, r"1 <= k <= n"),
        (5, 2.5, 1, r"whole numbers"),
        (float("nan"), 2, 1, r"whole numbers"),
        ("5", 2, 1, r"numeric"),
        (np.array([5, 5, 5]), np.array([1, 9, 2]), 1, r"n=5, c=9"),
    ],
)
def test_invalid_inputs_raise(n: object, c: object, k: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_default_ks() -> None:
    assert default_ks(1) == [1]
    assert default_ks(2) == [1, 2]
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(10) == [1, 2, 4, 8, 10]
    assert default_ks(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    with pytest.raises(ValueError):
        default_ks(0)


def test_curve_is_mean_over_problems() -> None:
    # pass@2(4,1) = 1 - C(3,2)/C(4,2) = 1/2; pass@2(4,2) = 1 - 1/6 = 5/6; mean 2/3.
    curve = pass_at_k_curve([4, 4], [1, 2])
    assert list(curve) == [1, 2, 4]
    assert curve[1] == pytest.approx(0.375, rel=1e-15)
    assert curve[2] == pytest.approx(2 / 3, rel=1e-15)
    assert curve[4] == 1.0
    # default ks stop at the smallest n so every k is valid for every problem
    assert list(pass_at_k_curve([4, 16], [0, 3])) == [1, 2, 4]
    assert pass_at_k_curve(16, [0, 16], ks=[3]) == {3: 0.5}
    with pytest.raises(ValueError):
        pass_at_k_curve([], [])


def test_mean_at_n() -> None:
    # problem means 2/4 and 1/2 and 0/1 -> (1/2 + 1/2 + 0) / 3
    assert mean_at_n([np.array([1, 0, 1, 0]), [True, False], [0]]) == pytest.approx(1 / 3, rel=1e-15)
    with pytest.raises(ValueError):
        mean_at_n([])
    with pytest.raises(ValueError):
        mean_at_n([[1], []])


def test_maj_at_n_by_hand() -> None:
    answers = [
        ["3", "4", "3", None],  # majority "3" (correct)
        ["1", "2", "2", "1"],  # tie 1 vs 2: first occurrence "1" wins (wrong)
        [None, None],  # nothing parseable: wrong
        [None, "7", "8", "8"],  # majority "8" (correct), None ignored
        ["5", None, None, None],  # a single parseable answer wins over many None (wrong)
    ]
    correct = [
        [True, False, True, False],
        [False, True, True, False],
        [False, False],
        [False, False, True, True],
        [False, False, False, False],
    ]
    assert maj_at_n(answers, correct) == pytest.approx(2 / 5, rel=1e-15)
    # an unscored (NaN) verdict is not correct
    assert maj_at_n([["9", "9"]], [[float("nan"), float("nan")]]) == 0.0
    with pytest.raises(ValueError):
        maj_at_n([["1"]], [[True, False]])
    with pytest.raises(ValueError):
        maj_at_n([["1"]], [])
