"""The benchmarks of a comparison (``eval.benchmarks`` in its runs): per benchmark a table and a
pass@k panel, and the appendix table across benchmarks.

Each variant's numbers are at its final evaluation: per problem, the mean over seeds (problems matched
by uid), then the mean over problems with a 95% bootstrap interval over problems. The paired
difference against the baseline pairs seeds and problems and takes the t interval of
rl_div.report.intervals (none with one seed); a ``*`` marks an interval that excludes 0. The base
model (the baseline's step-0 evaluation, when the runs evaluated at start)
is drawn dashed, as in Yue et al. (2025). In an ``rl-div eval`` folder the reference model is the
baseline.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rl_div.metrics.large_k import bootstrap_mean, per_problem_values
from rl_div.metrics.passk import default_ks
from rl_div.report.intervals import two_way_interval
from rl_div.report.results import RunData

HEADLINE = ("avg@n", "pass@K", "maj@K")  # the appendix columns per benchmark


def benchmark_names(runs: list[RunData]) -> list[str]:
    """Benchmarks with an evaluation file in any run (eval/<benchmark>/step_*.json)."""
    return sorted({p.parent.name for r in runs for p in (r.ref.dir / "eval").glob("*/step_*.json")})


def _evaluation(run: RunData, name: str, final: bool) -> dict[str, Any] | None:
    files = sorted((run.ref.dir / "eval" / name).glob("step_*.json"))
    if not files:
        return None
    chosen = files[-1] if final else files[0]
    if not final and chosen.name != "step_000000.json":
        return None
    return json.loads(chosen.read_text())


def seed_mean_values(evaluations: list[dict[str, Any]]) -> tuple[list[str], list[int], dict[str, np.ndarray]]:
    """uids (problems every seed evaluated), ks and per-problem values averaged over seeds."""
    by_seed = [{p["uid"]: p for p in e["problems"]} for e in evaluations]
    uids = [u for u in by_seed[0] if all(u in s for s in by_seed)]
    ks = default_ks(min(s[u]["n"] for s in by_seed for u in uids))
    per_seed = [per_problem_values([s[u] for u in uids], ks) for s in by_seed]
    return uids, ks, {m: np.mean([v[m] for v in per_seed], axis=0) for m in per_seed[0]}


def benchmark_summary(runs: list[RunData], name: str, baseline: str | None) -> dict[str, Any]:
    """{variant: {metric: (mean, lo, hi)}}, the same for differences vs the baseline, ks and the base."""
    variants: dict[str, list[dict[str, Any]]] = {}
    seeds: dict[str, list[int]] = {}
    base_evals = []
    for run in runs:  # variants, and the reference model of an `rl-div eval`
        evaluation = _evaluation(run, name, final=True)
        if evaluation is not None:
            variants.setdefault(run.ref.variant, []).append(evaluation)
            seeds.setdefault(run.ref.variant, []).append(run.ref.seed)
        start = _evaluation(run, name, final=False) if run.ref.variant == baseline else None
        if start is not None and start is not evaluation and start["step"] != (evaluation or {}).get("step"):
            base_evals.append(start)
    values = {v: seed_mean_values(e) for v, e in variants.items()}
    ks = min((ks for _, ks, _ in values.values()), key=len)
    out: dict[str, Any] = {"benchmark": name, "ks": ks, "k": ks[-1], "variants": {}, "diffs": {}, "base": None}

    def bands(vals: dict[str, np.ndarray], kk: list[int]) -> dict[str, tuple[float, float, float]]:
        res = {}
        for metric, matrix in vals.items():
            mean, lo, hi = bootstrap_mean(matrix)
            labels = ["avg@n"] if metric == "avg@n" else [metric.replace("k", str(k)) for k in kk]
            res.update({label: (float(mean[j]), float(lo[j]), float(hi[j])) for j, label in enumerate(labels)})
        return res

    for v, (_, kk, vals) in values.items():
        out["variants"][v] = bands(vals, kk)
    if baseline in values:
        b_uids, b_ks, _ = values[baseline]
        for v, (uids, kk, _) in values.items():
            if v == baseline or uids != b_uids or kk != b_ks:
                continue  # a paired difference needs the same problems and ks
            out["diffs"][v] = paired_bands(dict(zip(seeds[v], variants[v], strict=True)),
                                           dict(zip(seeds[baseline], variants[baseline], strict=True)), uids, kk)
    if base_evals:
        _, kk, vals = seed_mean_values(base_evals)
        out["base"] = bands(vals, kk)
    return out


def paired_bands(variant: dict[int, dict[str, Any]], baseline: dict[int, dict[str, Any]], uids: list[str],
                 ks: list[int]) -> dict[str, tuple[float, float, float]]:
    """variant - baseline per metric on the seeds both evaluated: the mean of the [S, P] table of per-seed,
    per-problem differences and its interval (rl_div.report.intervals.two_way_interval; NaN with one seed)."""
    shared = sorted(set(variant) & set(baseline))
    tables = []
    for s in shared:
        v_rows, b_rows = ({p["uid"]: p for p in e["problems"]} for e in (variant[s], baseline[s]))
        pv, pb = per_problem_values([v_rows[u] for u in uids], ks), per_problem_values([b_rows[u] for u in uids], ks)
        tables.append({m: pv[m] - pb[m] for m in pv})
    out = {}
    for metric in tables[0] if tables else {}:
        stack = np.stack([t[metric] for t in tables])  # [S, P, K]
        labels = ["avg@n"] if metric == "avg@n" else [metric.replace("k", str(k)) for k in ks]
        for j, label in enumerate(labels):
            lo, hi = two_way_interval(stack[:, :, j])
            out[label] = (float(stack[:, :, j].mean()), lo, hi)
    return out


def cell(band: tuple[float, float, float] | None, diff: bool = False) -> str:
    if band is None:
        return "-"
    mean, lo, hi = band
    if diff:  # the interval is NaN with one seed (nothing measures the seed effect): no interval, no mark
        if math.isnan(lo):
            return f"{mean:+.3f}"
        mark = " *" if lo > 0 or hi < 0 else ""
        return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark}"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _metric(label: str, k: int) -> str:
    return label.replace("K", str(k))


def appendix_table(summaries: list[dict[str, Any]], baseline: str | None) -> tuple[list[str], list[list[str]]]:
    """A row per variant (and one per difference vs the baseline), per benchmark avg@n, pass@K, maj@K."""
    header = ["variant"] + [f"{s['benchmark']} {_metric(m, s['k'])}" for s in summaries for m in HEADLINE]
    variants = list(dict.fromkeys(v for s in summaries for v in s["variants"]))
    rows = [[v] + [cell(s["variants"].get(v, {}).get(_metric(m, s["k"]))) for s in summaries for m in HEADLINE]
            for v in variants]
    diffed = list(dict.fromkeys(v for s in summaries for v in s["diffs"]))
    rows += [[f"{v} − {baseline}"] + [cell(s["diffs"].get(v, {}).get(_metric(m, s["k"])), diff=True)
                                     for s in summaries for m in HEADLINE] for v in diffed]
    return header, rows


def benchmark_figure(summaries: list[dict[str, Any]], path: Path) -> Path:
    """pass@k vs k (log axis) per benchmark, one panel each; the base model dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(4.2 * len(summaries), 3.6), squeeze=False)
    for ax, s in zip(axes[0], summaries, strict=True):
        lines = [(v, b, "o-") for v, b in s["variants"].items()] + ([("base", s["base"], "s--")] if s["base"] else [])
        for label, bands, style in lines:
            ks = [k for k in s["ks"] if f"pass@{k}" in bands]
            colour = "grey" if label == "base" else None
            ax.plot(ks, [bands[f"pass@{k}"][0] for k in ks], style, label=label, color=colour)
            ax.fill_between(ks, [bands[f"pass@{k}"][1] for k in ks], [bands[f"pass@{k}"][2] for k in ks], alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_title(s["benchmark"])
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k")
        ax.set_ylim(-0.02, 1.02)  # a probability: the same scale in every panel
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def benchmark_report(runs: list[RunData], baseline: str | None, out: Path) -> tuple[dict[str, Path], list[tuple]]:
    """Files (benchmarks.json, benchmarks_passk.png) and page blocks; nothing when no run has benchmarks."""
    names = benchmark_names(runs)
    if not names:
        return {}, []
    # `rl-div eval`: differences are the model's against its reference
    baseline = baseline or next((r.ref.variant for r in runs if r.ref.role == "reference"), None)
    summaries = [benchmark_summary(runs, name, baseline) for name in names]
    files = {"benchmarks_json": out / "benchmarks.json"}
    files["benchmarks_json"].write_text(json.dumps(summaries, indent=1))
    files["benchmarks_passk"] = benchmark_figure(summaries, out / "benchmarks_passk.png")
    blocks: list[tuple] = [("h2", "Benchmarks"), ("table", *appendix_table(summaries, baseline)),
                           ("p", "Final evaluation; per problem the mean over seeds, then the mean over problems "
                                 "with its 95% bootstrap interval over problems; differences are paired by seed and "
                                 "problem, with the t interval over the seeds x problems variance "
                                 "(rl_div.report.intervals; none with one seed), * where it excludes 0.")]
    for s in summaries:
        k = s["k"]
        header = ["variant", "avg@n", *[f"pass@{kk}" for kk in s["ks"]], f"maj@{k}", f"pass^{k}"]
        rows = [[v, *[cell(b.get(m)) for m in header[1:]]] for v, b in s["variants"].items()]
        rows += [[f"{v} − {baseline}", *[cell(b.get(m), diff=True) for m in header[1:]]] for v, b in s["diffs"].items()]
        if s["base"]:
            rows.append(["base (step 0)", *[cell(s["base"].get(m)) for m in header[1:]]])
        blocks += [("h2", f"Benchmark: {s['benchmark']}"), ("table", header, rows)]
    return files, blocks
