"""Metrics of many samples per problem, as papers on diversity collapse report them: avg@n, pass^k,
maj@k with a defined tie rule, per-problem pass@k matrices, and the crossover k at which a
reference model's pass@k overtakes the model's, with a bootstrap interval over problems.

Shapes: P problems, n samples each, K values of k, B bootstrap resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rl_div.metrics.passk import _as_int_array, _log_fail_ratio, _validate, pass_at_k


def avg_at_n(correct: Any) -> float:
    """avg@n: the mean over problems of each problem's fraction of correct samples (pass@1 estimated
    from all n samples). correct: [P, n] 0/1 or bool (NaN = unscored counts as wrong)."""
    flags = np.nan_to_num(np.asarray(correct, dtype=np.float64), nan=0.0)
    if flags.ndim != 2 or flags.size == 0:
        raise ValueError(f"avg_at_n: need a non-empty [P, n] array, got shape {flags.shape}")
    return float(flags.mean(axis=1).mean())


def pass_hat_k(n: Any, c: Any, k: Any) -> float | np.ndarray:
    """pass^k (Yao et al. 2024): the unbiased estimate of the chance that k samples drawn without
    replacement are all correct, C(c, k) / C(n, k) (0 when c < k).

    n, c, k broadcast as in :func:`pass_at_k`; 0 <= c <= n, 1 <= k <= n. C(c,k)/C(n,k) is the
    "no correct sample" ratio of pass@k with the n - c wrong samples in the role of the correct
    ones, so the same log1p product is used (full relative precision even when tiny).
    """
    scalar = all(np.ndim(x) == 0 for x in (n, c, k))
    n_a, c_a, k_a = np.broadcast_arrays(_as_int_array(n, "n"), _as_int_array(c, "c"), _as_int_array(k, "k"))
    _validate(n_a, c_a, k_a)
    n_f, w_f, k_f = n_a.ravel(), (n_a - c_a).ravel(), k_a.ravel()
    impossible = c_a.ravel() < k_f
    m = np.where(impossible, 0, np.minimum(w_f, k_f))
    log_all = _log_fail_ratio(n_f.astype(np.float64), np.maximum(w_f, k_f).astype(np.float64), m)
    result = np.where(impossible, 0.0, np.exp(log_all)).reshape(n_a.shape)
    return float(result) if scalar else result


def pass_at_k_matrix(n: Any, c: Any, ks: Sequence[int]) -> np.ndarray:
    """Per-problem pass@k: [P, K] for c: [P] (n: scalar or [P]) and the K values ``ks``."""
    c_a = np.asarray(c)
    return np.asarray(pass_at_k(np.broadcast_to(np.asarray(n), c_a.shape)[:, None], c_a[:, None],
                                np.asarray(ks)[None, :]), dtype=np.float64)


def vote_credit(answers: Sequence[Any], correct: Sequence[bool]) -> float:
    """Majority-vote credit of one block of samples: among the answers with the most votes (None
    does not vote), the fraction that are correct; 0 when nothing voted.

    An answer is correct when its first sample is (equal answers share one verdict in practice).
    Ties give fractional credit: the expected accuracy of breaking the tie uniformly at random, which
    depends on neither the sample order nor the answers' spelling.
    """
    counts: dict[Any, int] = {}
    verdict: dict[Any, bool] = {}
    for a, ok in zip(answers, correct, strict=True):
        if a is None:
            continue
        counts[a] = counts.get(a, 0) + 1
        verdict.setdefault(a, bool(ok))
    if not counts:
        return 0.0
    top = max(counts.values())
    leaders = [a for a, c in counts.items() if c == top]
    return sum(verdict[a] for a in leaders) / len(leaders)


def maj_at_k(answers: Sequence[Sequence[Any]], correct: Any, k: int) -> float:
    """maj@k: majority-vote accuracy with k samples per problem.

    answers: P lists of n answers (hashable; None = no answer), correct: [P, n] verdicts. Each
    problem's n samples are cut into floor(n / k) disjoint blocks of k in sample order (samples are
    i.i.d., so every block is an unbiased draw of k); the problem's maj@k is the mean credit of its
    blocks (:func:`vote_credit`, ties as fractions), and maj@k is the mean over problems. k = n is maj@n.
    """
    flags = np.nan_to_num(np.asarray(correct, dtype=np.float64), nan=0.0) > 0.5
    if len(answers) != flags.shape[0] or len(answers) == 0:
        raise ValueError(f"maj_at_k: {len(answers)} answer lists for {flags.shape[0]} rows of verdicts")
    per_problem = []
    for p, row in enumerate(answers):
        n = len(row)
        if n != flags.shape[1] or not 1 <= k <= n:
            raise ValueError(f"maj_at_k: problem {p} has {n} answers, {flags.shape[1]} verdicts, k = {k}")
        per_problem.append(maj_credit(row, flags[p], k))
    return float(np.mean(per_problem))


def maj_credit(answers: Sequence[Any], correct: Sequence[bool], k: int) -> float:
    """One problem's maj@k: the mean :func:`vote_credit` of its floor(n / k) disjoint blocks of k."""
    return float(np.mean([vote_credit(answers[b * k:(b + 1) * k], correct[b * k:(b + 1) * k])
                          for b in range(len(answers) // k)]))


@dataclass(frozen=True)
class Crossover:
    """The first k at which the reference's mean pass@k reaches the model's (None = none up to the
    largest k), its bootstrap interval (``hi`` None = no crossover in that share of resamples),
    and the share of resamples with no crossover at all."""

    k: int | None
    lo: int | None
    hi: int | None
    none_fraction: float


def resample_weights(problems: int, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap weights over problems: [B, P], each row the counts of a resample with replacement / P."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, problems, size=(resamples, problems)) + np.arange(resamples)[:, None] * problems
    return np.bincount(picks.ravel(), minlength=resamples * problems).reshape(resamples, problems) / problems


def bootstrap_mean(values: np.ndarray, *, resamples: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over problems with a percentile bootstrap interval: values [P, K] -> (mean, lo, hi), each [K].

    For a paired difference pass ``model - reference`` per problem: the same resample for both.
    """
    boot = resample_weights(values.shape[0], resamples, seed) @ values  # [B, K]
    alpha = (1.0 - level) / 2
    return values.mean(axis=0), np.quantile(boot, alpha, axis=0), np.quantile(boot, 1 - alpha, axis=0)


def first_crossing(diff: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """Per row of diff: [R, K] (model minus reference, mean pass@k), the first k with diff <= 0, as
    float (inf where there is none). Returns [R]."""
    ks_f = np.asarray(ks, dtype=np.float64)
    crossed = diff <= 0
    first = np.argmax(crossed, axis=1)
    return np.where(crossed.any(axis=1), ks_f[first], np.inf)


def crossover_k(model: np.ndarray, reference: np.ndarray, ks: Sequence[int], *, resamples: int = 2000,
                level: float = 0.95, seed: int = 0) -> Crossover:
    """Crossover k of two per-problem pass@k matrices on the same problems (model, reference: [P, K]).

    The bootstrap resamples problems (the same resample for both models: a paired comparison) B
    times; the interval is the (1-level)/2 and (1+level)/2 quantiles of the resampled crossovers
    ("lower" and "higher" quantiles, so both ends are values of ks or none).
    """
    if model.shape != reference.shape or model.shape[1] != len(ks):
        raise ValueError(f"crossover_k: shapes {model.shape} and {reference.shape} for {len(ks)} values of k")
    diff = model - reference  # [P, K]
    point = first_crossing(diff.mean(axis=0, keepdims=True), ks)[0]
    boot = first_crossing(resample_weights(diff.shape[0], resamples, seed) @ diff, ks)  # [B]
    alpha = (1.0 - level) / 2
    lo = np.quantile(boot, alpha, method="lower")
    hi = np.quantile(boot, 1 - alpha, method="higher")

    def as_k(x: float) -> int | None:
        return None if np.isinf(x) else int(x)

    return Crossover(as_k(point), as_k(lo), as_k(hi), float(np.isinf(boot).mean()))


def per_problem_values(problems: Sequence[dict[str, Any]], ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-problem values from benchmark problem rows (each with n, c and maj: {str(k): credit}):
    {"pass@k": [P, K], "pass^k": [P, K], "maj@k": [P, K], "avg@n": [P, 1]}."""
    n = np.array([p["n"] for p in problems])
    c = np.array([p["c"] for p in problems])
    return {"pass@k": pass_at_k_matrix(n, c, ks), "pass^k": np.stack([pass_hat_k(n, c, k) for k in ks], axis=1),
            "maj@k": np.array([[p["maj"][str(k)] for k in ks] for p in problems]), "avg@n": (c / n)[:, None]}
