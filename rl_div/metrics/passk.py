"""pass@k (unbiased, Chen et al. 2021), mean@n and maj@n.

With n samples of a problem of which c are correct, the unbiased estimator of pass@k is

    pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)      (1.0 if n - c < k).

The ratio C(n-c, k) / C(n, k) = (n-c)! (n-k)! / ((n-c-k)! n!) is symmetric in c and k, so it is also
prod_{j=0}^{k-1} (1 - c/(n-j)). Both products are one product of min(c, k) factors
(1 - max(c, k)/(n - j)), j = 0 .. min(c, k) - 1, which we sum in log space with log1p. Every term is
negative, so the sum has no cancellation, and -expm1(sum) keeps full relative precision both when
pass@k is tiny (sum near 0) and when it is near 1. This is why we do not use lgamma differences
(absolute error ~1e-12 at n = 2000 swamps a pass@k of 1e-4) nor differences of one cumulative sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rl_div.metrics.diversity import as_flags

# Upper bound on the number of log terms evaluated at once, so that huge (problems x n) inputs are
# processed in pieces of ~32 MiB instead of one allocation.
_TERMS_PER_CHUNK = 1 << 22


def _as_int_array(x: Any, name: str) -> np.ndarray:
    """Integer-valued input (int, float with integral value, array) -> int64 array; else ValueError."""
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ValueError(f"pass_at_k: {name} must be numeric, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            raise ValueError(f"pass_at_k: {name} must hold whole numbers, got {a[bad].flat[0]!r}")
    return a.astype(np.int64)


def _validate(n: np.ndarray, c: np.ndarray, k: np.ndarray) -> None:
    """Raise ValueError naming the first offending element unless 0 <= c <= n and 1 <= k <= n."""
    bad_c = (c < 0) | (c > n)
    if bad_c.any():
        i = np.flatnonzero(bad_c.ravel())[0]
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n.flat[i]}, c={c.flat[i]}")
    bad_k = (k < 1) | (k > n)
    if bad_k.any():
        i = np.flatnonzero(bad_k.ravel())[0]
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n.flat[i]}, k={k.flat[i]}")


def _log_fail_ratio(n: np.ndarray, a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """log C(n-c,k)/C(n,k) = sum_{j<m} log1p(-a/(n-j)), m = min(c,k), a = max(c,k). All shapes [E].

    The ragged sums are flattened into one vector of terms and reduced with bincount, so there is
    no Python loop over problems; only over chunks of ~4M terms.
    """
    out = np.zeros(n.shape, dtype=np.float64)
    ends = np.cumsum(m)
    start = 0
    while start < n.size:
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + _TERMS_PER_CHUNK, side="right"))
        stop = max(stop, start + 1)  # one element with more terms than the budget still goes alone
        counts = m[start:stop]
        seg = np.repeat(np.arange(stop - start), counts)
        j = np.arange(seg.size) - (np.cumsum(counts) - counts)[seg]
        terms = np.log1p(-a[start:stop][seg] / (n[start:stop][seg] - j))
        out[start:stop] = np.bincount(seg, weights=terms, minlength=stop - start)
        start = stop
    return out


def pass_at_k(n: Any, c: Any, k: Any) -> float | np.ndarray:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021).

    n, c, k: ints or integer arrays, broadcast together (shape [...]). Returns a float when all three
    are scalars, else a float64 array of the broadcast shape. Raises ValueError unless
    0 <= c <= n and 1 <= k <= n element-wise. Exact to ~1e-13 relative for n in the thousands.
    """
    scalar = all(np.ndim(x) == 0 for x in (n, c, k))
    n_a, c_a, k_a = np.broadcast_arrays(_as_int_array(n, "n"), _as_int_array(c, "c"), _as_int_array(k, "k"))
    _validate(n_a, c_a, k_a)
    n_f, c_f, k_f = n_a.ravel(), c_a.ravel(), k_a.ravel()
    certain = n_f - c_f < k_f  # every k-subset contains a correct sample
    m = np.where(certain, 0, np.minimum(c_f, k_f))
    log_fail = _log_fail_ratio(n_f.astype(np.float64), np.maximum(c_f, k_f).astype(np.float64), m)
    # "0.0 -" rather than unary minus: c = 0 gives +0.0, not -0.0.
    result = np.where(certain, 1.0, 0.0 - np.expm1(log_fail)).reshape(n_a.shape)
    return float(result) if scalar else result


def default_ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... (powers of two not above n), plus n itself when n is not a power of two."""
    if n < 1:
        raise ValueError(f"default_ks: need n >= 1, got {n}")
    ks = [1 << e for e in range(n.bit_length()) if (1 << e) <= n]
    if ks[-1] != n:
        ks.append(n)
    return ks


def pass_at_k_curve(n: Any, c: Any, ks: Sequence[int] | None = None) -> dict[int, float]:
    """Mean pass@k over problems for each k.

    n, c: [P] samples and correct counts per problem (n may be a scalar shared by all problems).
    ks: the k values; default ``default_ks(min(n))`` so every k is valid for every problem.
    Returns {k: mean over the P problems of pass@k}.
    """
    n_a, c_a = np.broadcast_arrays(np.asarray(n), np.asarray(c))
    if n_a.size == 0:
        raise ValueError("pass_at_k_curve: no problems")
    ks = default_ks(int(n_a.min())) if ks is None else list(ks)
    return {int(k): float(np.mean(pass_at_k(n_a, c_a, int(k)))) for k in ks}


def mean_at_n(correct: Sequence[Any]) -> float:
    """mean@n: average over problems of each problem's fraction of correct samples.

    correct: P per-problem 0/1 (or bool) sequences, lengths may differ. Equals mean pass@1.
    """
    if len(correct) == 0:
        raise ValueError("mean_at_n: no problems")
    per_problem = []
    for i, row in enumerate(correct):
        arr = np.asarray(row, dtype=np.float64)
        if arr.size == 0:
            raise ValueError(f"mean_at_n: problem {i} has no samples")
        per_problem.append(arr.mean())
    return float(np.mean(per_problem))


def majority_answer(answers: Sequence[str | None]) -> int | None:
    """Index of the first sample carrying the most frequent non-None answer; None if all are None.

    Ties go to the answer that occurs first, so the result is deterministic for a given order.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        counts[a] = counts.get(a, 0) + 1
        first.setdefault(a, i)
    if not counts:
        return None
    # max() keeps the first maximal key in insertion order, i.e. the earliest-seen answer wins ties.
    best = max(counts, key=counts.__getitem__)
    return first[best]


def maj_at_n(answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]]) -> float:
    """maj@n: fraction of problems whose majority-vote answer is correct.

    answers: P lists of extracted answers (None = unparseable, ignored in the vote).
    correct: P lists of verifier flags aligned with ``answers``.
    The majority answer is the most frequent non-None answer, ties broken by first occurrence; its
    correctness is the flag of its first occurrence (equal answers share one verdict in practice).
    A problem whose answers are all None counts as wrong.
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_n: {len(answers)} answer lists but {len(correct)} correct lists")
    if len(answers) == 0:
        raise ValueError("maj_at_n: no problems")
    hits = 0
    for p, (ans, ok) in enumerate(zip(answers, correct, strict=True)):
        flags = as_flags(ok)  # NaN (unscored) is not correct
        if len(ans) != len(flags):
            raise ValueError(f"maj_at_n: problem {p} has {len(ans)} answers but {len(flags)} flags")
        idx = majority_answer(ans)
        hits += int(idx is not None and bool(flags[idx]))
    return hits / len(answers)
