"""The field's analyses of a comparison (issue 28 item 3), beside the tables of rl_div.report.page:

  * the large-k crossover (Yue et al. 2025): the first k at which the base model's pass@k reaches
    each trained variant's, with a bootstrap interval over problems (rl_div.metrics.large_k.crossover_k);
  * the entropy-performance fit of Cui et al. (2025), R = -a * exp(H) + b, over each run's held-out
    evaluations (H: policy/entropy of the evaluation samples, R: mean@n), with the predicted ceiling
    R(H = 0) = -a + b: the performance the run would reach once its entropy is spent.

Both go to analyses.json and a section of the page. The pass@k-over-steps figure that shows a
rise-then-fall is drawn by rl_div.report.build.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl_div.metrics.large_k import Crossover, crossover_k, pass_at_k_matrix
from rl_div.report.comparison import Comparison
from rl_div.report.results import RunData
from rl_div.report.summarize import EvalPoint, passk_keys

ENTROPY_KEY, PERFORMANCE_KEY = "policy/entropy", "mean@n"


@dataclass(frozen=True)
class EntropyFit:
    """R = -a * exp(H) + b fitted by least squares to ``points`` (H, R) pairs; ceiling = -a + b."""

    a: float
    b: float
    ceiling: float
    points: int


def fit_entropy_performance(entropy: np.ndarray, performance: np.ndarray) -> EntropyFit:
    """Least-squares fit of R = -a * exp(H) + b: linear in (a, b) with x = exp(H).

    entropy, performance: [N] paired values (NaN pairs dropped). NaN parameters with fewer than 3
    points or when H does not vary (a slope through one x is undefined).
    """
    h, r = np.asarray(entropy, dtype=np.float64), np.asarray(performance, dtype=np.float64)
    ok = ~(np.isnan(h) | np.isnan(r))
    x, r = np.exp(h[ok]), r[ok]
    if x.size < 3 or np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())):
        return EntropyFit(math.nan, math.nan, math.nan, int(x.size))
    slope, intercept = np.polyfit(x, r, 1)
    a, b = -float(slope), float(intercept)
    return EntropyFit(a, b, b - a, int(x.size))


def run_fit(run: RunData) -> EntropyFit:
    """The fit over one run's evaluations, in step order."""
    steps = sorted(run.evals)
    pick = [(run.evals[s].metrics.get(ENTROPY_KEY), run.evals[s].metrics.get(PERFORMANCE_KEY)) for s in steps]
    numbers = [(float(h), float(r)) for h, r in pick if isinstance(h, (int, float)) and isinstance(r, (int, float))]
    pairs = np.array(numbers, dtype=np.float64).reshape(-1, 2)
    return fit_entropy_performance(pairs[:, 0], pairs[:, 1])


def seed_mean_passk(points: list[EvalPoint], ks: list[int]) -> np.ndarray | None:
    """Per-problem pass@k averaged over seeds: [P, K]; None when a seed lacks the per-problem table or
    the seeds evaluated different problems."""
    if not points or not all(p.problems for p in points):
        return None
    uids = [[q["uid"] for q in p.problems] for p in points]  # type: ignore[union-attr]
    if any(u != uids[0] for u in uids):
        return None
    mats = [pass_at_k_matrix(np.array([q["n"] for q in p.problems]), np.array([q["c"] for q in p.problems]), ks)
            for p in points]  # type: ignore[union-attr]
    return np.mean(mats, axis=0)


def crossovers(comp: Comparison) -> dict[str, Crossover]:
    """Each variant's crossover k against the base/reference model, on the problems both evaluated."""
    if not comp.base_points:
        return {}
    out = {}
    for v in comp.variants:
        ks = sorted(set(passk_keys(comp.points[v][0].metrics)) & set(passk_keys(comp.base_points[0].metrics)))
        model, base = seed_mean_passk(comp.points[v], ks), seed_mean_passk(comp.base_points, ks)
        same = (model is not None and base is not None and [q["uid"] for q in comp.points[v][0].problems or []]
                == [q["uid"] for q in comp.base_points[0].problems or []])
        if same and ks:
            out[v] = crossover_k(model, base, ks)  # type: ignore[arg-type]
    return out


def entropy_fits(comp: Comparison, runs: list[RunData]) -> dict[str, list[tuple[int, EntropyFit]]]:
    """{variant: [(seed, fit of that run)]}."""
    return {v: [(r.ref.seed, run_fit(r)) for r in runs if r.ref.variant == v and r.ref.role == "variant"]
            for v in comp.variants}


def _k(value: int | None) -> str:
    return "none" if value is None else str(value)


def _seed_band(values: list[float]) -> str:
    ok = [x for x in values if not math.isnan(x)]
    if not ok:
        return "–"
    return f"{np.mean(ok):.3f}" + (f" [{min(ok):.3f}, {max(ok):.3f}]" if len(ok) > 1 else "")


def analysis_blocks(comp: Comparison, runs: list[RunData], out: Path) -> tuple[Path, list[tuple[Any, ...]]]:
    """Write analyses.json and return it with the page's section."""
    cross, fits = crossovers(comp), entropy_fits(comp, runs)
    path = out / "analyses.json"
    nan_free = {v: [{"seed": s, **{k: (None if isinstance(x, float) and math.isnan(x) else x)
                                   for k, x in asdict(f).items()}} for s, f in fs] for v, fs in fits.items()}
    path.write_text(json.dumps({"crossover_against": comp.base_label,
                                "crossover": {v: asdict(c) for v, c in cross.items()},
                                "entropy_fit": nan_free}, indent=1))
    blocks: list[tuple[Any, ...]] = [("h2", "Large-k crossover and the entropy-performance fit")]
    if cross:
        rows = [[v, f"{_k(c.k)} [{_k(c.lo)}, {_k(c.hi)}]", f"{c.none_fraction:.2f}"] for v, c in cross.items()]
        blocks += [("table", ["variant", f"crossover k ({comp.base_label} ≥ variant) [95% interval]",
                              "resamples without crossover"], rows),
                   ("p", "The first k at which the base model's pass@k, averaged over seeds, reaches the variant's "
                         "(Yue et al. 2025); interval: 2000 bootstrap resamples of the problems, seeds held fixed; "
                         "'none' = no crossover up to the largest k evaluated.")]
    rows = [[v, _seed_band([f.a for _, f in fs]), _seed_band([f.b for _, f in fs]),
             _seed_band([f.ceiling for _, f in fs]), str(sum(f.points for _, f in fs))] for v, fs in fits.items()]
    blocks += [("table", ["variant", "a", "b", "ceiling −a + b", "evaluations"], rows),
               ("p", "Entropy-performance fit R = −a·exp(H) + b (Cui et al. 2025), least squares over each run's "
                     "held-out evaluations (H: mean token entropy of the samples, R: mean@n); mean over seeds "
                     "[min, max over seeds]. The ceiling is the predicted R at H = 0.")]
    return path, blocks
