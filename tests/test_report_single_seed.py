"""A single-run report's paired difference of a per-evaluation metric (entropy, embedding diversity) has
one seed and one value: there is nothing to resample, so it shows the difference alone, never a
zero-width interval marked '*' as if it excluded 0 (found re-reading issue 30 on `rl-div train`'s report:
"Δ entropy -0.006 [-0.006, -0.006]*"). Intervals are t intervals over seeds (rl_div.report.intervals,
issue 28), so one seed gives none for any metric."""

from __future__ import annotations

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
    # pass@1 pairs by problem, but one seed has no seed-to-seed spread to put in an interval either
    passk = diffs["pass@1"]
    assert passk.mean == pytest.approx(1 / 3) and not passk.has_ci
    assert fmt_diff(passk) == "+0.333"


def test_two_seeds_entropy_difference_keeps_its_interval() -> None:
    model = [point(0, 1.25, [[True]]), point(1, 1.15, [[True]])]
    base = [point(0, 1.50, [[True]]), point(1, 1.50, [[True]])]
    entropy = paired_differences(model, base)["policy/entropy"]
    assert entropy.has_ci and entropy.mean == pytest.approx(-0.30)
    # per-seed differences -0.25 and -0.35: sd 0.0707, standard error 0.05, t(0.975, 1 df) = 12.7062
    assert entropy.ci_lo == pytest.approx(-0.30 - 12.7062047 * 0.05, rel=1e-6)
    assert entropy.ci_hi == pytest.approx(-0.30 + 12.7062047 * 0.05, rel=1e-6)
    assert fmt_diff(entropy) == "-0.300 [-0.935, +0.335]"  # two seeds this close still do not exclude 0
