"""Intervals for paired differences (variant minus baseline) that stay valid with 2-5 seeds.

Seeds are the replication unit of a training comparison: two training runs of one method differ by
a seed effect that no number of evaluation problems averages away. A percentile bootstrap that
resamples 2 or 3 seeds cannot see that spread (with 2 seeds its 95% interval is the range of the two
seed means, which excludes 0 half the time when nothing differs), so the report uses t intervals:

  * one value per run (P = 1, e.g. a metric without per-problem values): the t interval of the S
    per-seed differences, mean ± t_{S-1} * sd / sqrt(S). Exact for normal seed effects at any S >= 2.
  * a [S, P] table of per-seed, per-problem differences (pass@k, per-problem entropy, diversity):
    mean ± t_{S-1} * sqrt(V) with the two-way (seeds x problems) random-effects variance of the
    grand mean, V = var(seed means) / S + var(problem means) / P - MSE / (S P), MSE the residual mean
    square of the additive two-way fit: an unbiased estimate of sigma_seed^2 / S + sigma_problem^2 / P
    + sigma_noise^2 / (S P), every source of variation (training seed, which problems were drawn,
    sampling), floored at the largest of its three terms (each alone underestimates it) so it never
    goes below what one source shows. The degrees of freedom are the seeds' (S - 1), not
    Welch-Satterthwaite's: the seed part of V
    rests on S - 1 degrees of freedom, and with 2 seeds Satterthwaite's mix marked 13-15% of simulated
    no-effect comparisons whose seed effects dominate (tests/test_report_intervals.py), against 5%.
    The price is width at 2-3 seeds (t_1 = 12.7, t_2 = 4.3): what 2 training seeds can support.

No interval with one seed (nothing measures the seed effect); the report marks a difference (*)
only when its interval excludes 0 and it has at least MIN_SEEDS_FOR_MARK seeds.
tests/test_report_intervals.py measures the false-positive rate of the mark on simulated no-effect
comparisons with 2, 3 and 5 seeds.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LEVEL = 0.95
MIN_SEEDS_FOR_MARK = 2


def t_interval(per_seed: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """t interval of the mean of S per-seed values: [S] -> (lo, hi); NaN with fewer than 2 seeds."""
    x = np.asarray(per_seed, dtype=np.float64)
    if x.size < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def two_way_interval(diff: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Interval of the grand mean of a [S, P] table (module docstring); P = 1 is t_interval.

    NaN with one seed: the seed effect cannot be estimated. A table without any variation has a
    zero-width interval at its value.
    """
    d = np.asarray(diff, dtype=np.float64)
    s, p = d.shape
    if p == 1:
        return t_interval(d[:, 0], level)
    if s < 2:
        return math.nan, math.nan
    seed_means, problem_means = d.mean(axis=1), d.mean(axis=0)
    v_seed = seed_means.var(ddof=1) / s
    v_problem = problem_means.var(ddof=1) / p
    residual = d - seed_means[:, None] - problem_means[None, :] + d.mean()
    v_cell = float((residual**2).sum()) / ((s - 1) * (p - 1)) / (s * p)
    total = max(v_seed + v_problem - v_cell, v_seed, v_problem, v_cell)
    mean = float(d.mean())
    if total <= 0:
        return mean, mean
    half = stats.t.ppf(0.5 + level / 2, s - 1) * math.sqrt(total)
    return mean - half, mean + half


def marked(lo: float, hi: float, n_seeds: int) -> bool:
    """The report's *: the interval excludes 0 and rests on enough seeds to mean anything."""
    return n_seeds >= MIN_SEEDS_FOR_MARK and not math.isnan(lo) and (lo > 0 or hi < 0)
