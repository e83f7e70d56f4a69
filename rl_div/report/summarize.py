"""Aggregate runs into comparison numbers: pass@k curves and table metrics with bands, training curves
over steps, and the diversity-collapse decomposition against a reference model.

Bands. Two kinds, both kept in every summary:
  * ci_lo / ci_hi: a 95% percentile bootstrap over problems. Each replicate resamples the problems
    (with replacement; one shared resample when every seed evaluated the same problems, as with the
    default fixed data.eval_seed, else independently per seed) and averages the per-seed means, so it
    measures how much the numbers depend on which held-out problems were drawn. Only metrics with a
    per-problem value in eval/step_*.json (pass@k, mean@n, maj@n, distinct (correct) answers, and
    from issue 28 on entropy and every diversity metric, e.g. embedding diversity and Vendi) get it.
  * seed_min / seed_max: the range across seeds (training and sampling seed). Every metric gets it.
The mean is always the plain mean over seeds of the run's logged value, i.e. of the tidy CSV rows.
Paired differences between variants get intervals valid at a few seeds (rl_div.report.intervals).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rl_div.metrics import collapse_report, distinct_answers, pass_at_k
from rl_div.metrics.passk import majority_answer
from rl_div.report.intervals import two_way_interval

N_BOOT = 1000
LEVEL = 0.95


@dataclass
class Band:
    """One metric of one variant at one step, aggregated over seeds."""

    mean: float
    seed_min: float
    seed_max: float
    n_seeds: int
    ci_lo: float = math.nan
    ci_hi: float = math.nan

    @property
    def has_ci(self) -> bool:
        return not math.isnan(self.ci_lo)

    def interval(self) -> tuple[float, float]:
        """The band shown in tables and plots: bootstrap CI when there is one, else the seed range."""
        return (self.ci_lo, self.ci_hi) if self.has_ci else (self.seed_min, self.seed_max)

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_lo": self.ci_lo, "ci_hi": self.ci_hi, "seed_min": self.seed_min,
                "seed_max": self.seed_max, "n_seeds": self.n_seeds}


@dataclass
class EvalPoint:
    """One evaluation of one run: logged metrics and the per-problem table (None when not saved)."""

    seed: int
    metrics: dict[str, Any]
    problems: list[dict[str, Any]] | None = field(default=None)


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and value is not None else math.nan


def passk_keys(metrics: dict[str, Any]) -> list[int]:
    """The k of every ``pass@k`` key, sorted."""
    return sorted(int(key[5:]) for key in metrics if key.startswith("pass@") and key[5:].isdigit())


def per_problem_values(problems: list[dict[str, Any]], ks: Sequence[int]) -> dict[str, np.ndarray]:
    """[P] per-problem values whose mean over problems is the logged metric of the same name.

    The definitions mirror rl_div.train.step_stats.eval_summary, so the bootstrap resamples exactly what was logged.
    """
    n = np.array([p["n"] for p in problems])
    c = np.array([p["c"] for p in problems])
    out = {f"pass@{k}": np.asarray(pass_at_k(n, c, k), dtype=np.float64) for k in ks if k <= n.min()}
    out["mean@n"] = c / n
    maj = []
    for p in problems:
        idx = majority_answer(p["answers"])
        maj.append(float(idx is not None and bool(p["correct"][idx])))
    out["maj@n"] = np.array(maj)
    out["div/distinct_answers"] = np.array([float(distinct_answers(p["answers"])) for p in problems])
    out["div/distinct_correct_answers"] = np.array(
        [float(distinct_answers(p["answers"], p["correct"])) for p in problems])
    out.update(per_problem_entropy_and_diversity(problems))
    return out


def per_problem_entropy_and_diversity(problems: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """[P] per-problem policy/entropy and div/<metric> values from evaluations that saved them (this
    change on; older eval files have neither, and their metrics stay one value per run).

    policy/entropy is token-weighted (all response tokens of the evaluation), so problem p contributes
    H_p * T_p / mean(T): H_p its mean token entropy, T_p its token count; the mean over problems of
    these contributions is the logged value. A diversity metric is used when every problem has it.
    """
    out: dict[str, np.ndarray] = {}
    if all(p.get("entropy") is not None and p.get("tokens") for p in problems):
        tokens = np.array([p["tokens"] for p in problems], dtype=np.float64)
        out["policy/entropy"] = np.array([p["entropy"] for p in problems]) * tokens / tokens.mean()
    tables = [p.get("diversity") or {} for p in problems]
    for key in tables[0]:
        if all(t.get(key) is not None for t in tables):
            out[f"div/{key}"] = np.array([float(t[key]) for t in tables])
    return out


def bootstrap_ci(per_seed: Sequence[np.ndarray], n_boot: int = N_BOOT, level: float = LEVEL,
                 seed: int = 0, paired: bool = False) -> tuple[float, float]:
    """Percentile CI of the seed-averaged mean when problems are resampled.

    per_seed: one [P_s] array of per-problem values per seed. paired: every seed evaluated the same
    problems in the same order, so one resample of problem indices serves all seeds (resampling
    them independently would shrink the band by about sqrt(seeds) even for identical seeds).
    Deterministic given ``seed``, so a regenerated report shows the same bands.
    """
    rng = np.random.default_rng(seed)
    reps = np.zeros(n_boot)
    shared = rng.integers(0, len(per_seed[0]), size=(n_boot, len(per_seed[0]))) if paired else None
    for values in per_seed:
        idx = shared if shared is not None else rng.integers(0, len(values), size=(n_boot, len(values)))
        reps += values[idx].mean(axis=1)
    reps /= len(per_seed)
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def summarize_evals(points: Sequence[EvalPoint]) -> dict[str, Band]:
    """Every numeric metric of the evaluations of one variant at one step (one EvalPoint per seed)."""
    keys = [k for k in points[0].metrics if isinstance(points[0].metrics[k], (int, float, type(None)))]
    bands: dict[str, Band] = {}
    for key in keys:
        values = np.array([_finite(p.metrics.get(key)) for p in points])
        ok = values[~np.isnan(values)]
        if ok.size == 0:
            bands[key] = Band(math.nan, math.nan, math.nan, 0)
            continue
        bands[key] = Band(float(ok.mean()), float(ok.min()), float(ok.max()), int(ok.size))
    if all(p.problems for p in points):
        ks = passk_keys(points[0].metrics)
        tables = [per_problem_values(p.problems, ks) for p in points]  # type: ignore[arg-type]
        uids = [[q.get("uid") for q in p.problems] for p in points]  # type: ignore[union-attr]
        paired = all(u == uids[0] for u in uids)
        for key in tables[0]:
            if key in bands and all(key in t for t in tables):
                bands[key].ci_lo, bands[key].ci_hi = bootstrap_ci([t[key] for t in tables], paired=paired)
    return bands


def paired_differences(variant: Sequence[EvalPoint], baseline: Sequence[EvalPoint]) -> dict[str, Band]:
    """variant - baseline per metric, paired by sampling seed (and by problem where the evaluations
    hold per-problem values), with a 95% interval valid at a few seeds (rl_div.report.intervals) and the
    per-seed range.

    Only seeds both evaluated count; per-problem pairing needs both evaluations of a seed to list the
    same problems in the same order, else that metric falls back to pairing by seed alone. Empty
    when no seed is shared.
    """
    base = {p.seed: p for p in baseline}
    pairs = [(v, base[v.seed]) for v in variant if v.seed in base]
    if not pairs:
        return {}
    out: dict[str, Band] = {}
    per_problem = all(v.problems and b.problems and [q["uid"] for q in v.problems] == [q["uid"] for q in b.problems]
                      for v, b in pairs)
    if per_problem:
        ks = sorted(set(passk_keys(pairs[0][0].metrics)) & set(passk_keys(pairs[0][1].metrics)))
        tables = [(per_problem_values(v.problems, ks), per_problem_values(b.problems, ks))  # type: ignore[arg-type]
                  for v, b in pairs]
        for key in tables[0][0]:
            if all(key in tv and key in tb for tv, tb in tables):
                out[key] = _diff_band(np.stack([tv[key] - tb[key] for tv, tb in tables]))
    for key, value in pairs[0][0].metrics.items():
        if key in out or not isinstance(value, (int, float)) or isinstance(value, bool) or key == "n":
            continue
        d = np.array([[_finite(v.metrics.get(key)) - _finite(b.metrics.get(key))] for v, b in pairs])
        if not np.isnan(d).any():
            out[key] = _diff_band(d)
    return out


def _diff_band(diff: np.ndarray) -> Band:
    """Band of a [S, P] difference table: mean, per-seed means' range, two-way t interval (NaN with
    one seed)."""
    per_seed = diff.mean(axis=1)
    lo, hi = two_way_interval(diff)
    return Band(float(diff.mean()), float(per_seed.min()), float(per_seed.max()), int(diff.shape[0]), lo, hi)


def table_k(evals: Sequence[dict[str, Any]]) -> int:
    """The large k of the results table: the largest k every evaluation reached (pass@64 when n = 64)."""
    common = set.intersection(*(set(passk_keys(m)) for m in evals)) if evals else set()
    return max(common) if common else 1


def step_curve(series: dict[int, list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over seeds from {step: [value per seed]}; NaNs skipped, empty steps dropped."""
    steps, mean, lo, hi = [], [], [], []
    for step in sorted(series):
        vals = np.array([v for v in series[step] if not math.isnan(v)])
        if vals.size:
            steps.append(step)
            mean.append(vals.mean())
            lo.append(vals.min())
            hi.append(vals.max())
    return np.array(steps), np.array(mean), np.array(lo), np.array(hi)


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """[T] centred moving average over ``window`` points (odd; shrinks at the ends, NaNs skipped)."""
    half = window // 2
    out = np.full(len(y), np.nan)
    for i in range(len(y)):
        part = y[max(0, i - half):i + half + 1]
        part = part[~np.isnan(part)]
        if part.size:
            out[i] = part.mean()
    return out


def smoothing_window(points: int) -> int:
    """An odd window of about 1/15 of the series (1 = no smoothing for short series)."""
    return 2 * (points // 30) + 1


def answer_diversity(answers: Sequence[str | None]) -> float:
    """Probability that two different samples of a group carry different answers.

    1 - sum_a c_a (c_a - 1) / (m (m - 1)) over answer counts c_a: the pairwise (Gini-Simpson, without
    replacement) diversity. It equals 1 - mean pairwise cosine of one-hot answer embeddings, so it
    is the answer-level analogue of the embedding diversity, and, being a pairwise mean, it does not
    drift with the number of samples (D_correct compares subsets of different sizes). Unparseable
    answers (None) are each their own class, as in semantic_classes without embeddings. NaN if m < 2.
    """
    m = len(answers)
    if m < 2:
        return math.nan
    counts = Counter(a for a in answers if a is not None)
    same = sum(c * (c - 1) for c in counts.values())
    return 1.0 - same / (m * (m - 1))


def _groups(problems: list[dict[str, Any]]) -> list[tuple[list[str | None], list[bool]]]:
    return [(list(p["answers"]), list(p["correct"])) for p in problems]


def collapse_over_seeds(model: dict[int, list[dict[str, Any]]],
                        reference: dict[int, list[dict[str, Any]]]) -> dict[str, float] | None:
    """Collapse decomposition (docs/algorithms.md section 5) of a model against a reference, averaged over
    the seeds both were evaluated with ({seed: problems}); answer-level diversity (answer_diversity).

    The eval files do not hold response texts or embeddings, so the decomposition is computed on
    extracted answers; None when no seed has both evaluations.
    """
    seeds = sorted(set(model) & set(reference))
    if not seeds:
        return None
    reports = []
    for s in seeds:
        if [p["uid"] for p in model[s]] != [p["uid"] for p in reference[s]]:
            raise ValueError(f"seed {s}: the model and the reference were evaluated on different problems")
        reports.append(collapse_report(_groups(model[s]), _groups(reference[s]), answer_diversity))
    out = {}
    for key in reports[0]:
        vals = [r[key] for r in reports if not math.isnan(r[key])]
        out[key] = float(np.mean(vals)) if vals else math.nan
    out["n_seeds"] = float(len(seeds))
    return out
