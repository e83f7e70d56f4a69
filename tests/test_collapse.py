"""Collapse decomposition on hand-made groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rl_div.metrics import collapse_decomposition, collapse_report, diversity_all_correct


def unique_fraction(samples: list[str]) -> float:
    """A simple pluggable diversity: distinct strings / samples."""
    return len(set(samples)) / len(samples)


# Reference model: diverse, half right.
REF = [
    (["a", "b", "c", "d"], [1, 1, 0, 0]),  # all 4/4 = 1; correct {a, b}: 2/2 = 1
    (["a", "b", "c", "c"], [1, 1, 1, 0]),  # all 3/4; correct {a, b, c}: 3/3 = 1
]
# Trained model: wrong answers gone (quality control) and correct answers narrowed (residual).
MODEL = [
    (["a", "a", "b", "a"], [1, 1, 1, 1]),  # all 2/4; correct = all: 2/4
    (["a", "a", "a", "z"], [1, 1, 1, 0]),  # all 2/4; correct {a, a, a}: 1/3
]


def test_decomposition_by_hand() -> None:
    d_all_ref, d_cor_ref = diversity_all_correct(REF, unique_fraction)
    d_all_model, d_cor_model = diversity_all_correct(MODEL, unique_fraction)
    assert d_all_ref == pytest.approx((1 + 3 / 4) / 2)  # 7/8
    assert d_cor_ref == pytest.approx(1.0)
    assert d_all_model == pytest.approx(1 / 2)
    assert d_cor_model == pytest.approx((1 / 2 + 1 / 3) / 2)  # 5/12
    parts = collapse_decomposition(d_all_model, d_cor_model, d_all_ref, d_cor_ref)
    assert parts["total"] == pytest.approx(7 / 8 - 1 / 2)  # 3/8
    assert parts["residual"] == pytest.approx(1 - 5 / 12)  # 7/12
    assert parts["quality_control"] == pytest.approx(3 / 8 - 7 / 12)  # -5/24
    report = collapse_report(MODEL, REF, unique_fraction)
    assert report["d_correct_model"] == pytest.approx(5 / 12)
    assert report["residual"] == pytest.approx(7 / 12)


def test_decomposition_arithmetic() -> None:
    assert collapse_decomposition(0.4, 0.3, 0.9, 0.5) == pytest.approx(
        {"total": 0.5, "residual": 0.2, "quality_control": 0.3}
    )


def test_groups_with_fewer_than_two_correct_are_left_out_of_d_correct() -> None:
    groups = [
        (["a", "b"], [1, 0]),  # one correct: only in D_all
        (["a", "a", "b"], [1, 1, 0]),  # correct {a, a}: 1/2
        (["x", "y"], [float("nan"), 1.0]),  # NaN (unscored) is not correct: one correct
    ]
    d_all, d_cor = diversity_all_correct(groups, unique_fraction)
    assert d_all == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert d_cor == pytest.approx(1 / 2)
    d_all, d_cor = diversity_all_correct([(["a", "b"], [0, 1])], unique_fraction)
    assert d_all == 1.0 and math.isnan(d_cor)
    parts = collapse_decomposition(1.0, d_cor, 1.0, 0.5)
    assert parts["total"] == 0.0 and math.isnan(parts["residual"]) and math.isnan(parts["quality_control"])


def test_default_diversity_on_embeddings() -> None:
    # pairs (0,1): 0, (0,2): 1, (1,2): 0 -> D = 1 - 1/3; correct rows 0, 1 are orthogonal -> D = 1
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    d_all, d_cor = diversity_all_correct([(emb, [True, True, False])])
    assert d_all == pytest.approx(2 / 3)
    assert d_cor == pytest.approx(1.0)
    d_all_t, d_cor_t = diversity_all_correct([(torch.tensor(emb), torch.tensor([1.0, 1.0, 0.0]))])
    assert (d_all_t, d_cor_t) == pytest.approx((2 / 3, 1.0))
    # one-sample groups have undefined embedding diversity (NaN) and are skipped in D_all
    d_all, _ = diversity_all_correct([(emb, [1, 1, 0]), (emb[:1], [1])])
    assert d_all == pytest.approx(2 / 3)


def test_default_diversity_on_texts_is_distinct_4() -> None:
    texts = ["a b c d e", "a b c d f", "q r s t u"]
    # 4-grams: (abcd)(bcde) (abcd)(bcdf) (qrst)(rstu): 5 unique of 6; correct first two: 3 of 4
    d_all, d_cor = diversity_all_correct([(texts, [1, 1, 0])])
    assert d_all == pytest.approx(5 / 6)
    assert d_cor == pytest.approx(3 / 4)


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError):
        diversity_all_correct([(["a", "b"], [1])], unique_fraction)
