"""``rl-div bench --sections large_k``: the metrics of many samples per problem at evaluation scale:
pass@k and pass^k for every k = 1, 2, 4, ..., n over n = 1024 samples x 5,000 problems, and the
crossover k's bootstrap, timed (min/median/max) with their exactness against math.comb."""

from __future__ import annotations

import math
import time
from fractions import Fraction
from typing import Any

import numpy as np

from rl_div.bench.common import table
from rl_div.metrics.large_k import crossover_k, pass_at_k_matrix, pass_hat_k
from rl_div.metrics.passk import default_ks


def _times(fn: Any, repeats: int) -> dict[str, float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return {"min": min(out), "median": float(np.median(out)), "max": max(out)}


def bench_large_k(problems: int = 5000, n: int = 1024, repeats: int = 5, checked: int = 100,
                  resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Seconds per call (min/median/max of ``repeats``) and the largest error against exact
    fractions from math.comb on ``checked`` problems (absolute for pass@k, relative for pass^k)."""
    rng = np.random.default_rng(seed)
    c = rng.binomial(n, rng.beta(0.5, 2.0, size=problems))
    ks = default_ks(n)
    k_row = np.asarray(ks)[None, :]
    any_k = pass_at_k_matrix(n, c, ks)
    all_k = np.asarray(pass_hat_k(n, c[:, None], k_row))
    abs_err, rel_err = 0.0, 0.0
    for i in range(checked):
        ci = int(c[i])
        for j, k in enumerate(ks):
            exact_any = 1 - Fraction(math.comb(n - ci, k), math.comb(n, k))
            exact_all = Fraction(math.comb(ci, k), math.comb(n, k))
            abs_err = max(abs_err, abs(any_k[i, j] - float(exact_any)))
            if exact_all:
                rel_err = max(rel_err, abs(all_k[i, j] / float(exact_all) - 1))
    reference = pass_at_k_matrix(n, np.minimum(n, (c * 0.8).astype(int) + 3), ks)
    return {
        "problems": problems, "n": n, "ks": ks, "repeats": repeats, "checked": checked, "resamples": resamples,
        "pass_at_k_seconds": _times(lambda: pass_at_k_matrix(n, c, ks), repeats),
        "pass_hat_k_seconds": _times(lambda: pass_hat_k(n, c[:, None], k_row), repeats),
        "crossover_seconds": _times(lambda: crossover_k(any_k, reference, ks, resamples=resamples), repeats),
        "pass_at_k_max_abs_error": abs_err, "pass_hat_k_max_rel_error": rel_err,
    }


def print_large_k(r: dict[str, Any]) -> None:
    print(f"\nlarge-k metrics: {r['problems']} problems x n = {r['n']}, k in {r['ks']} "
          f"(seconds, min/median/max of {r['repeats']}; errors vs math.comb on {r['checked']} problems)")
    lines = (("pass@k, every k", "pass_at_k_seconds", f"{r['pass_at_k_max_abs_error']:.2g} abs"),
             ("pass^k, every k", "pass_hat_k_seconds", f"{r['pass_hat_k_max_rel_error']:.2g} rel"),
             (f"crossover k, {r['resamples']} resamples", "crossover_seconds", "-"))
    rows = [[name, *[r[key][s] for s in ("min", "median", "max")], err] for name, key, err in lines]
    print(table(["metric", "s min", "median", "max", "max error"], rows))
