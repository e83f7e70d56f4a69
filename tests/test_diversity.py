"""Diversity metrics against hand counts, exact fractions, closed forms and a direct eigensolver."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rl_div.metrics import (
    average_group_metrics,
    cosine_kernel,
    distinct_answers,
    distinct_n,
    ead,
    embedding_diversity,
    group_diversity,
    semantic_classes,
    vendi_score,
)

TEXTS = ["a b a", "a c"]  # unigrams a b a a c; bigrams (a b) (b a) (a c); one trigram (a b a)


def test_distinct_n_by_hand() -> None:
    assert distinct_n(TEXTS, 1) == pytest.approx(3 / 5)
    assert distinct_n(TEXTS, 2) == 1.0
    assert distinct_n(TEXTS, 3) == 1.0
    assert math.isnan(distinct_n(TEXTS, 4))  # no 4-gram at all: undefined, not 0
    assert math.isnan(distinct_n([], 1))
    # n-grams never span two texts: "a b" + "b a" has bigrams (a b), (b a) only, both unique
    assert distinct_n(["a b", "b a"], 2) == 1.0
    assert distinct_n(["x x x x"], 2) == pytest.approx(1 / 3)
    assert distinct_n(["ab", "ba"], 1, tokenize=list) == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        distinct_n(TEXTS, 0)


def ead_exact(unique: int, total: int, v: int) -> Fraction:
    """unique / (V (1 - ((V-1)/V)^C)) in exact rationals."""
    return Fraction(unique) / (v * (1 - Fraction(v - 1, v) ** total))


def test_ead_by_hand() -> None:
    # n = 1: 3 unique of C = 5, V = 3: 3 / (3 (1 - (2/3)^5)) = 243 / 211
    assert ead(TEXTS, 1, vocab_size=3) == pytest.approx(243 / 211, rel=1e-14)
    # n = 2, same V for every n: 3 unique of 3, 3 / (3 (1 - (2/3)^3)) = 27 / 19
    assert ead(TEXTS, 2, vocab_size=3) == pytest.approx(27 / 19, rel=1e-14)
    # n = 2, n-gram space V^2 = 9: 3 / (9 (1 - (8/9)^3)) = 243 / 217
    assert ead(TEXTS, 2, vocab_size=3, ngram_space="power") == pytest.approx(243 / 217, rel=1e-14)
    assert ead(["a a a"], 1, vocab_size=1) == 1.0
    assert math.isnan(ead(TEXTS, 4, vocab_size=3))
    with pytest.raises(ValueError):
        ead(TEXTS, 1, vocab_size=0)
    with pytest.raises(ValueError):
        ead(TEXTS, 1, vocab_size=3, ngram_space="cube")  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(
    words=st.lists(st.lists(st.sampled_from("abcdef"), max_size=12), min_size=1, max_size=5),
    v=st.integers(6, 5000),
    n=st.integers(1, 3),
)
def test_ead_matches_exact_fraction(words: list[list[str]], v: int, n: int) -> None:
    texts = [" ".join(w) for w in words]
    grams = [tuple(w[i : i + n]) for w in words for i in range(len(w) - n + 1)]
    if not grams:
        assert math.isnan(ead(texts, n, v))
        return
    want = ead_exact(len(set(grams)), len(grams), v)
    assert ead(texts, n, v) == pytest.approx(float(want), rel=1e-9)


def test_ead_tends_to_distinct_for_huge_vocab() -> None:
    # V >> C: the expected number of distinct draws is ~C, so EAD ~ distinct-n (and stays finite)
    texts = ["the cat sat on the mat", "the dog sat on the log"]
    for n in (1, 2, 3, 4):
        got = ead(texts, n, vocab_size=150_000, ngram_space="power")
        assert got == pytest.approx(distinct_n(texts, n), rel=1e-4)


def test_cosine_kernel_and_embedding_diversity_by_hand() -> None:
    emb = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    s = 1 / math.sqrt(2)
    want = np.array([[1, s, 0], [s, 1, s], [0, s, 1]])
    np.testing.assert_allclose(cosine_kernel(emb), want, atol=1e-15)
    # off-diagonal pairs: s, 0, s -> mean 2s/3
    assert embedding_diversity(emb) == pytest.approx(1 - 2 * s / 3, rel=1e-14)
    assert embedding_diversity(np.ones((4, 3))) == pytest.approx(0.0, abs=1e-14)
    assert embedding_diversity(np.eye(5)) == pytest.approx(1.0, abs=1e-14)
    assert embedding_diversity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    assert math.isnan(embedding_diversity(np.ones((1, 3))))
    # torch tensors (any dtype) are accepted
    assert embedding_diversity(torch.tensor(emb, dtype=torch.bfloat16)) == pytest.approx(1 - 2 * s / 3, rel=1e-2)
    with pytest.raises(ValueError, match="zero"):
        cosine_kernel(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError):
        cosine_kernel(np.ones(3))


def vendi_direct(emb: np.ndarray) -> float:
    """exp(-sum l log l), l = eigenvalues of K/m from the general (non-symmetric) eigensolver."""
    u = emb / np.sqrt((emb**2).sum(1, keepdims=True))
    k = u @ u.T
    lam = np.linalg.eig(k / len(emb))[0].real
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


def test_vendi_closed_forms() -> None:
    assert vendi_score(np.tile([[0.3, -1.0, 2.0]], (6, 1))) == pytest.approx(1.0, rel=1e-9)
    for m in (1, 2, 5, 8):
        assert vendi_score(np.eye(8)[:m] * 3.0) == pytest.approx(m, rel=1e-12)
    # two blocks of identical vectors, orthogonal to each other: eigenvalues 1/2, 1/2 -> 2
    assert vendi_score(np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])) == pytest.approx(2.0, rel=1e-12)
    assert math.isnan(vendi_score(np.zeros((0, 3))))


@settings(max_examples=30, deadline=None)
@given(theta=st.floats(0.0, math.pi))
def test_vendi_two_vectors_closed_form(theta: float) -> None:
    # K/2 = [[1, c], [c, 1]] / 2 has eigenvalues (1 +- c) / 2 with c = cos(theta)
    c = math.cos(theta)
    lam = [x for x in ((1 + c) / 2, (1 - c) / 2) if x > 0]
    want = math.exp(-sum(x * math.log(x) for x in lam))
    emb = np.array([[1.0, 0.0], [math.cos(theta), math.sin(theta)]])
    assert vendi_score(emb) == pytest.approx(want, rel=1e-7, abs=1e-7)


@settings(max_examples=30, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 7), st.integers(1, 6)), elements=st.floats(-3, 3, width=64)).filter(
        lambda a: bool(np.all(np.linalg.norm(a, axis=1) > 1e-3))
    )
)
def test_vendi_matches_direct_eig_and_bounds(emb: np.ndarray) -> None:
    got = vendi_score(emb)
    assert got == pytest.approx(vendi_direct(emb), rel=1e-6)
    assert 1.0 - 1e-9 <= got <= len(emb) + 1e-9


def test_distinct_answers() -> None:
    answers = ["1", "2", None, "1", "3", None]
    assert distinct_answers(answers) == 3
    assert distinct_answers(answers, [True, False, True, True, True, False]) == 2  # "1", "3"
    # an unscored (NaN) verdict is not correct
    assert distinct_answers(["1", "2"], [float("nan"), 1.0]) == 1
    assert distinct_answers(["1", "2"], torch.tensor([1.0, 0.0])) == 1
    assert distinct_answers([None, None]) == 0
    with pytest.raises(ValueError):
        distinct_answers(["1"], [True, True])


def test_semantic_classes() -> None:
    answers = ["1", "2", "1", None, None]
    assert semantic_classes(answers) == [0, 1, 0, 2, 3]  # each None alone without embeddings
    emb = np.array([[1.0, 0], [0, 1.0], [0.6, 0.8], [0.1, 1.0], [-1.0, 0]])
    # cos(e1, e3) = 1/sqrt(1.01) > 0.9 joins None #3 with "2"; cos(e0, e2) = 0.6 but equal answers;
    # cos(e1, e2) = 0.8 < 0.9. Classes: {0, 2}, {1, 3}, {4}.
    assert semantic_classes(answers, emb, threshold=0.9) == [0, 1, 0, 1, 2]
    # transitive: e2 ~ e1 at a lower threshold links class {0, 2} with {1, 3}
    assert semantic_classes(answers, emb, threshold=0.75) == [0, 0, 0, 0, 1]
    assert semantic_classes([]) == []
    with pytest.raises(ValueError):
        semantic_classes(answers, emb[:3])


def test_group_diversity_keys_and_values() -> None:
    texts = ["x y z", "x y w", "q"]
    answers = ["7", "7", None]
    correct = [True, True, False]
    base = group_diversity(texts, answers, correct)
    assert list(base) == [
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "distinct_4",
        "distinct_answers",
        "distinct_correct_answers",
        "num_classes",
    ]
    assert base["distinct_1"] == pytest.approx(5 / 7)  # x y z x y w q
    assert base["distinct_2"] == pytest.approx(3 / 4)  # (x y) (y z) (x y) (y w)
    assert base["distinct_3"] == 1.0
    assert math.isnan(base["distinct_4"])
    assert base["distinct_answers"] == 1.0 and base["distinct_correct_answers"] == 1.0
    assert base["num_classes"] == 2.0  # {"7", "7"}, {None}
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    full = group_diversity(texts, answers, correct, embeddings=emb, vocab_size=10)
    assert {"ead_1", "ead_4", "emb_diversity", "vendi"} <= set(full)
    assert full["ead_1"] == pytest.approx(float(ead_exact(5, 7, 10)))
    assert full["emb_diversity"] == pytest.approx(1 - 1 / 3)  # pairs 0, 0, 1
    # K/3 has eigenvalues 1/3 (e0 alone) and 2/3 (the e1 pair): exp of their entropy
    assert full["vendi"] == pytest.approx(math.exp(-(math.log(1 / 3) / 3 + 2 * math.log(2 / 3) / 3)))
    assert full["num_classes"] == 1.0  # None joins "7" through e1 == e2
    with pytest.raises(ValueError):
        group_diversity(texts, answers[:2], correct)


def test_average_group_metrics() -> None:
    groups = [
        {"a": 1.0, "b": math.nan, "c": math.nan},
        {"a": 3.0, "b": 2.0, "c": math.nan},
        {"a": 5.0, "d": 4.0},
    ]
    avg = average_group_metrics(groups)
    assert list(avg) == ["a", "b", "c", "d"]
    assert avg["a"] == 3.0 and avg["b"] == 2.0 and avg["d"] == 4.0
    assert math.isnan(avg["c"])
    assert average_group_metrics([]) == {}
