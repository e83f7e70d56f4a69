"""A single-run report's paired difference of a per-evaluation metric (entropy, embedding diversity) has
one seed and one value: there is nothing to resample, so it shows the difference alone, never a
zero-width interval marked '*' as if it excluded 0 (found re-reading issue 30 on `rl-div train`'s report:
"Δ entropy -0.006 [-0.006, -0.006]*")."""

from __future__ import annotations

import math

import pytest

from rl_div.report.page import fmt_diff
from rl_div.report.summarize import EvalPoint, paired_differences


def problems(correct: list[list[bool]]) -> list[dict]:
    return [{"uid": f"p{i}", "n": len(c), "c": sum(c), "correct": c, "answers": [str(j) for j in range(len(c))]}
            for i, c in enumerate(correct)]


def point(seed: int, entropy: float, correct: list[list[bool]]) -> EvalPoint:
    return EvalPoint(seed, {"policy/entropy": entropy, "pass@1": 0.0}, problems(correct))


def test_one_seed_entropy_difference_has_no_interval_and_no_star() -> None:
    model = point(0, 1.25, [[True, False], [True, True], [False, False]])
    base = point(0, 1.50, [[False, False], [True, False], [False, False]])
    diffs = paired_differences([model], [base])
    entropy = diffs["policy/entropy"]
    assert entropy.mean == pytest.approx(-0.25) and not entropy.has_ci
    assert fmt_diff(entropy) == "-0.250"
    # pass@1 pairs by problem: per-problem differences 0.5, 0.5, 0 resample into a real interval
    passk = diffs["pass@1"]
    assert passk.mean == pytest.approx(1 / 3) and passk.has_ci
    assert passk.ci_lo <= passk.mean <= passk.ci_hi and passk.ci_lo < passk.ci_hi
    assert fmt_diff(passk).startswith("+0.333 [")


def test_two_seeds_entropy_difference_keeps_its_interval() -> None:
    model = [point(0, 1.25, [[True]]), point(1, 1.15, [[True]])]
    base = [point(0, 1.50, [[True]]), point(1, 1.50, [[True]])]
    entropy = paired_differences(model, base)["policy/entropy"]
    assert entropy.has_ci and entropy.mean == pytest.approx(-0.30)
    assert -0.35 - 1e-12 <= entropy.ci_lo <= entropy.ci_hi <= -0.25 + 1e-12  # resamples: -0.25, -0.30, -0.35
    assert fmt_diff(entropy).endswith("*") and not math.isnan(entropy.ci_lo)
