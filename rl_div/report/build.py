"""The comparison report: tidy CSV/JSON, summary with bands, PNG plots and a one-page Markdown + HTML.

``build_report(paths)`` reads run directories (see rl_div.report.results) and writes, into one folder:
    metrics_tidy.csv/.json   every logged value: variant, seed, role, step, kind, metric, k, value
    summary.csv/.json        per variant at its final evaluation: mean over seeds, bootstrap CI over
                             problems, seed min/max (rl_div.report.summarize); plus the collapse decomposition
    passk_vs_k.png           pass@k against k per variant, with the base / reference model
    training_curves.png      pass@1, pass@K, entropy and distinct correct answers over steps
    diversity_curves.png     the held-out diversity metrics over steps
    passk_over_steps.png     held-out pass@1 and pass@K over steps, one panel per variant
    analyses.json            crossover k against the base model, entropy-performance fit (rl_div.report.analyses)
    report.md, report.html   one page: setup, results table, pass@k table, collapse table, figures
    benchmarks.json, benchmarks_passk.png   per benchmark of eval.benchmarks (rl_div.report.benchmarks)
Everything is regenerated from files, so ``rl-div report DIR`` after a crash or on a copied folder
gives the same page.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rl_div.report.analyses import analysis_blocks
from rl_div.report.benchmarks import benchmark_report
from rl_div.report.comparison import Comparison, _ks, build_comparison
from rl_div.report.page import document, render_html, render_markdown, table_rows
from rl_div.report.plots import Curve, curves_figure, passk_figure, save_figure
from rl_div.report.provenance import provenance_blocks
from rl_div.report.results import MANIFEST, RunData, discover_runs, load_run, read_manifest, tidy_rows, write_tidy
from rl_div.report.summarize import Band, moving_average, smoothing_window, step_curve, summarize_evals

TRAIN_PANELS = [("eval", "pass@1", "pass@1 (held-out)"), ("eval", "pass@K", "pass@K (held-out)"),
                ("train", "policy/entropy", "policy entropy (training batches)"),
                ("train", "div/distinct_correct_answers", "distinct correct answers / prompt (training)")]
DIVERSITY_PANELS = ["div/emb_diversity", "div/vendi", "div/distinct_answers", "div/num_classes", "div/distinct_4",
                    "policy/entropy"]
# A diversity panel's title in words (the metric key stays in the tidy data).
PANEL_TITLES = {
    "div/emb_diversity": "embedding diversity (1 − mean pairwise cosine)",
    "div/vendi": "Vendi score (effective number of distinct responses)",
    "div/distinct_answers": "distinct answers per problem",
    "div/num_classes": "answer classes per problem",
    "div/distinct_4": "distinct 4-grams (share of all 4-grams)",
    "policy/entropy": "policy entropy (nats per token)",
}


# ---- curves ----------------------------------------------------------------------------------------
def passk_curve(bands: dict[str, Band]) -> Curve:
    ks = _ks(bands)
    intervals = [bands[f"pass@{k}"].interval() for k in ks]
    return Curve(ks, [bands[f"pass@{k}"].mean for k in ks], [i[0] for i in intervals], [i[1] for i in intervals])


def step_series(runs: list[RunData], kind: str, metric: str) -> Curve:
    """Mean over seeds per step with the min-max band; a step missing in some seed uses the others."""
    series: dict[int, list[float]] = {}
    for r in runs:
        table = r.train if kind == "train" else {s: e.metrics for s, e in r.evals.items()}
        for step, metrics in table.items():
            value = metrics.get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(step, []).append(float(value))
    return Curve(*step_curve(series))


def smoothed_series(runs: list[RunData], metric: str) -> Curve:
    """A training metric: the moving average of the seed mean (and of its band), the raw mean kept."""
    c = step_series(runs, "train", metric)
    w = smoothing_window(c.x.size)
    if w == 1:
        return c
    return Curve(c.x, moving_average(c.y, w), moving_average(c.lo, w), moving_average(c.hi, w), raw=c.y)


def eval_series(runs: list[RunData], metric: str) -> Curve:
    """A held-out metric at every evaluation step: mean over seeds with the 95% bootstrap CI over
    problems (rl_div.report.summarize.summarize_evals); the seed range where there is no CI."""
    steps = sorted({s for r in runs for s in r.evals})
    rows = []  # (step, mean, lo, hi)
    for step in steps:
        band = summarize_evals([r.evals[step] for r in runs if step in r.evals]).get(metric)
        if band is not None and not math.isnan(band.mean):
            rows.append((step, band.mean, *band.interval()))
    return Curve(*(np.array(col) for col in zip(*rows, strict=True))) if rows else Curve([], [], [], [])


def figures(comp: Comparison, runs: list[RunData], out: Path) -> dict[str, Path]:
    files = {}
    base = (comp.base_label, passk_curve(comp.base)) if comp.base and comp.base_label else None
    note = "bands: " + ("95% bootstrap CI over problems" if all(
        b.get("pass@1", Band(0, 0, 0, 0)).has_ci for b in comp.final.values()) else "min-max over seeds")
    if comp.kind == "eval":  # each model evaluated once; its label names the checkpoint's step
        title = f"pass@k of {', '.join(comp.variants)}"
    else:
        steps = ", ".join(sorted({str(s) for s in comp.final_step.values()}, key=int))
        title = f"pass@k at the final evaluation (step {steps})"
    diffs = None
    if comp.baseline and comp.baseline in comp.diffs:
        diffs = (comp.baseline, {v: passk_curve(d) for v, d in comp.diffs[comp.baseline].items() if _ks(d)})
    fig = passk_figure({v: passk_curve(comp.final[v]) for v in comp.variants}, base, title=title,
                       band_note=note, diffs=diffs or None)
    files["passk_vs_k"] = save_figure(fig, out / "passk_vs_k.png")
    by_variant = {v: [r for r in runs if r.ref.variant == v and r.ref.role == "variant"] for v in comp.variants}
    seeds = len({r.ref.seed for g in by_variant.values() for r in g})
    panels = [(title.replace("pass@K", f"pass@{comp.k}"),
               {v: (eval_series(g, metric.replace("pass@K", f"pass@{comp.k}")) if kind == "eval"
                    else smoothed_series(g, metric)) for v, g in by_variant.items()})
              for kind, metric, title in TRAIN_PANELS]
    note = ("held-out panels: mean over seeds, band 95% bootstrap CI over problems; training panels: moving "
            "average (raw mean faint behind)" + (", band min-max over seeds" if seeds > 1 else ", one seed"))
    if panels := _drawable(panels):
        files["training_curves"] = save_figure(curves_figure(panels, comp.variants, note), out / "training_curves.png")
    # pass@1 and the largest k over steps, one panel per variant: a rise-then-fall at large k shows here
    large = f"pass@{comp.k}"
    panels = _drawable([(f"{v}: held-out pass@k over training", {m: eval_series(g, m) for m in ("pass@1", large)})
                        for v, g in by_variant.items()])
    if panels and comp.k > 1:
        files["passk_over_steps"] = save_figure(curves_figure(panels, ["pass@1", large], note.split(";")[0]),
                                                out / "passk_over_steps.png")
    present = [m for m in DIVERSITY_PANELS if any(m in b for b in comp.final.values())]
    panels = _drawable([(f"{PANEL_TITLES.get(m, m)}, held-out", {v: eval_series(g, m) for v, g in by_variant.items()})
                        for m in present])
    if panels:
        note = "mean over seeds; band: 95% bootstrap CI over problems, else " + (
            "min-max over seeds" if seeds > 1 else "none (one seed)")
        files["diversity_curves"] = save_figure(curves_figure(panels, comp.variants, note),
                                                out / "diversity_curves.png")
    return files


def _drawable(panels: list[tuple[str, dict[str, Curve]]]) -> list[tuple[str, dict[str, Curve]]]:
    """Panels with a line to draw: a series of one point over steps says nothing, so is left out."""
    return [(t, s) for t, s in panels if any(c.x.size > 1 for c in s.values())]


def _json_safe(value: Any) -> Any:
    """NaN/inf -> null: strict JSON readers (browsers, jq) reject the NaN token json.dumps writes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_summary(comp: Comparison, out: Path) -> tuple[Path, Path]:
    cols = ["variant", "role", "step", "metric", "k", "mean", "ci_lo", "ci_hi", "seed_min", "seed_max", "n_seeds"]
    rows = []
    for name, step, bands in table_rows(comp):
        role = "variant" if name in comp.final else "base"
        for metric, b in bands.items():
            k = metric[5:] if metric.startswith("pass@") and metric[5:].isdigit() else ""
            rows.append({"variant": name, "role": role, "step": "" if step is None else step,
                         "metric": "pass@k" if k else metric, "k": k, **b.as_dict()})
    for against, by_variant in comp.diffs.items():  # paired differences: role "minus <against>"
        for name, bands in by_variant.items():
            for metric, b in bands.items():
                k = metric[5:] if metric.startswith("pass@") and metric[5:].isdigit() else ""
                rows.append({"variant": name, "role": f"minus {against}", "step": comp.final_step[name],
                             "metric": "pass@k" if k else metric, "k": k, **b.as_dict()})
    csv_path = out / "summary.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    clean = _json_safe({
        "kind": comp.kind, "variants": comp.variants, "final_step": comp.final_step, "k_table": comp.k,
        "base_label": comp.base_label, "setup": comp.setup, "notes": comp.notes, "collapse": comp.collapse,
        "final": {v: {m: b.as_dict() for m, b in bs.items()} for v, bs in comp.final.items()},
        "base": {m: b.as_dict() for m, b in comp.base.items()} if comp.base else None,
        "baseline": comp.baseline,
        "differences": {a: {v: {m: b.as_dict() for m, b in bs.items()} for v, bs in d.items()}
                        for a, d in comp.diffs.items()},
    })
    json_path = out / "summary.json"
    json_path.write_text(json.dumps(clean, indent=1))
    return csv_path, json_path


def build_report(paths: list[str | Path], out: str | Path | None = None, title: str | None = None,
                 baseline: str | None = None) -> dict[str, Path]:
    """Read the runs under ``paths`` and write every export into ``out`` (default: <first path>/report)."""
    kind, refs = discover_runs(paths)
    out_dir = Path(out) if out is not None else Path(paths[0]) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(r) for r in refs]
    files: dict[str, Path] = {}
    files["metrics_tidy_csv"], files["metrics_tidy_json"] = write_tidy(tidy_rows(runs), out_dir)
    comp = build_comparison(runs, kind, baseline)
    files["summary_csv"], files["summary_json"] = write_summary(comp, out_dir)
    files.update(figures(comp, runs, out_dir))
    bench_files, bench_blocks = benchmark_report(runs, comp.baseline, out_dir)  # eval.benchmarks, if any
    files.update(bench_files)
    files["analyses_json"], analysis = analysis_blocks(comp, runs, out_dir)  # crossover k, entropy fit
    default_title = ("Evaluation report" if kind == "eval" else f"{comp.variants[0]}: single run"
                     if len(comp.variants) == 1 else "GRPO vs re-weighted variants: pass@k and diversity")
    groups = {v: [r for r in runs if r.ref.variant == v and r.ref.role == "variant"] for v in comp.variants}
    trained_with = next((extra["code"] for p in paths if (Path(p) / MANIFEST).exists()
                         and "code" in (extra := read_manifest(Path(p))[2])), None)
    blocks = document(comp, files, title or default_title,
                      analysis + bench_blocks + provenance_blocks(groups, comp.baseline, out_dir, trained_with))
    files["report_md"] = out_dir / "report.md"
    files["report_md"].write_text(render_markdown(blocks), encoding="utf-8")
    files["report_html"] = out_dir / "report.html"
    files["report_html"].write_text(render_html(blocks, out_dir), encoding="utf-8")
    return files


__all__ = ["build_report", "figures", "passk_curve", "step_series", "write_summary"]
