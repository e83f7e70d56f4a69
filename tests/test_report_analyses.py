"""Issue 28 item 3: the crossover k against the base model, the entropy-performance fit of Cui et al.
(2025) and the pass@k-over-steps figure, on synthetic curves with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import markdown_table, write_compare_dir

from rl_div.metrics.large_k import Crossover
from rl_div.report import build_report
from rl_div.report.analyses import crossovers, fit_entropy_performance
from rl_div.report.comparison import Comparison
from rl_div.report.summarize import EvalPoint

N = 64


def test_fit_recovers_known_parameters() -> None:
    h = np.linspace(0.2, 1.6, 9)
    r = -0.15 * np.exp(h) + 0.95  # Cui et al.'s form with a = 0.15, b = 0.95: ceiling 0.80 at H = 0
    noise = np.random.default_rng(0).normal(0, 1e-4, h.size)
    fit = fit_entropy_performance(h, r + noise)
    assert (fit.a, fit.b, fit.ceiling, fit.points) == (pytest.approx(0.15, abs=2e-4), pytest.approx(0.95, abs=5e-4),
                                                       pytest.approx(0.80, abs=5e-4), 9)
    exact = fit_entropy_performance(np.append(h, np.nan), np.append(r, 0.5))  # a NaN pair is dropped
    assert (exact.a, exact.b, exact.points) == (pytest.approx(0.15), pytest.approx(0.95), 9)
    assert math.isnan(fit_entropy_performance(np.full(5, 1.0), np.arange(5.0)).a)  # H never moves: no slope
    assert math.isnan(fit_entropy_performance(h[:2], r[:2]).b)  # two points: no fit claimed


def point(seed: int, counts: list[int]) -> EvalPoint:
    problems = [{"uid": f"u{i}", "n": N, "c": c, "answers": ["1"] * N, "correct": [True] * c + [False] * (N - c)}
                for i, c in enumerate(counts)]
    return EvalPoint(seed, {f"pass@{k}": 0.0 for k in (1, 2, 4, 8, 16, 32, 64)}, problems)


def test_crossover_of_constructed_curves() -> None:
    # The trained model solves half the problems always and the rest never: pass@k = 1/2 at every k.
    # The base model has 1 correct sample in 64 on every problem: pass@k = k / 64, which reaches 1/2
    # at k = 32. Resampling problems moves only the model's share m of solved problems: m <= 1/2
    # (crossover 32) in P(Binomial(64, 1/2) <= 32) = 0.55 of resamples, m > 1/2 (crossover 64) otherwise,
    # and m <= 1/4 (crossover 16) essentially never: the interval is [32, 64].
    model = [point(s, [N] * 32 + [0] * 32) for s in (0, 1)]
    base = [point(s, [1] * 64) for s in (0, 1)]
    comp = Comparison("compare", ["grpo"], {"grpo": 100}, {}, base_label="base (step 0)",
                      points={"grpo": model}, base_points=base)
    got = crossovers(comp)["grpo"]
    assert (got.k, got.lo, got.hi) == (32, 32, 64)
    assert got.none_fraction == 0.0
    # reaching counts as overtaking: the base's pass@64 = 1 equals a model that solves everything ...
    comp.points["grpo"] = [point(s, [N] * 64) for s in (0, 1)]
    assert crossovers(comp)["grpo"].k == 64
    # ... and a base model that never solves half the problems (pass@64 = 1/2) never gets there
    comp.base_points = [point(s, [1] * 32 + [0] * 32) for s in (0, 1)]
    assert crossovers(comp)["grpo"] == Crossover(None, None, None, 1.0)


def test_report_has_crossover_fit_and_passk_over_steps(tmp_path: Path) -> None:
    root = write_compare_dir(tmp_path / "cmp")
    files = build_report([root], tmp_path / "report")
    assert files["passk_over_steps"].exists()
    data = json.loads(files["analyses_json"].read_text())
    assert data["crossover_against"] == "base (step 0)"
    # by hand: each variant's final-step evaluations and the step-0 ones, per-problem pass@k from C(n, k)
    for variant, fits in data["entropy_fit"].items():
        runs = sorted((root / variant).glob("seed*"))
        finals, starts = [], []
        for run in runs:
            evals = [json.loads(p.read_text()) for p in sorted((run / "eval").glob("step_*.json"))]
            h = np.array([e["metrics"]["policy/entropy"] for e in evals])
            r = np.array([e["metrics"]["mean@n"] for e in evals])
            x = np.exp(h)
            a = -np.cov(x, r, bias=True)[0, 1] / x.var()
            b = r.mean() + a * x.mean()
            got = next(f for f in fits if f["seed"] == int(run.name[4:]))
            assert (got["a"], got["b"], got["ceiling"]) == pytest.approx((a, b, b - a))
            finals.append(evals[-1]["problems"])
            starts.append(evals[0]["problems"])
        n = finals[0][0]["n"]
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]

        def passk(tables: list[list[dict]], k: int) -> float:
            return float(np.mean([[1 - math.comb(p["n"] - p["c"], k) / math.comb(p["n"], k) for p in t]
                                  for t in tables]))

        first = next((k for k in ks if passk(starts, k) >= passk(finals, k)), None)
        assert data["crossover"][variant]["k"] == first
    page = files["report_md"].read_text()
    assert "## Large-k crossover and the entropy-performance fit" in page
    rows = {r["variant"]: r for r in markdown_table(page[page.index("## Large-k crossover"):], "variant")}
    assert set(rows) == set(data["crossover"])
    assert "passk_over_steps.png" in page
