"""The comparison report: tidy CSV/JSON, summary with bands, PNG plots and a one-page Markdown + HTML.

``build_report(paths)`` reads run directories (see rl_div.report.results) and writes, into one folder:
    metrics_tidy.csv/.json   every logged value: variant, seed, role, step, kind, metric, k, value
    summary.csv/.json        per variant at its final evaluation: mean over seeds, bootstrap CI over
                             problems, seed min/max (rl_div.report.summarize); plus the collapse decomposition
    passk_vs_k.png           pass@k against k per variant, with the base / reference model
    training_curves.png      pass@1, pass@K, entropy and distinct correct answers over steps
    diversity_curves.png     the held-out diversity metrics over steps
    report.md, report.html   one page: setup, results table, pass@k table, collapse table, figures
Everything is regenerated from files, so ``rl-div report DIR`` after a crash or on a copied folder
gives the same page.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from rl_div.report.comparison import Comparison, _ks, build_comparison
from rl_div.report.page import SEED_BAND_NOTE, document, render_html, render_markdown, table_rows
from rl_div.report.plots import Curve, curves_figure, passk_figure, save_figure
from rl_div.report.results import RunData, discover_runs, load_run, tidy_rows, write_tidy
from rl_div.report.summarize import Band, step_curve

TRAIN_PANELS = [("eval", "pass@1", "pass@1 (held-out)"), ("eval", "pass@K", "pass@K (held-out)"),
                ("train", "policy/entropy", "policy entropy (training batches)"),
                ("train", "div/distinct_correct_answers", "distinct correct answers / prompt (training)")]
DIVERSITY_PANELS = ["div/emb_diversity", "div/vendi", "div/distinct_answers", "div/num_classes", "div/distinct_4",
                    "policy/entropy"]


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


def figures(comp: Comparison, runs: list[RunData], out: Path) -> dict[str, Path]:
    files = {}
    base = (comp.base_label, passk_curve(comp.base)) if comp.base and comp.base_label else None
    note = "bands: " + ("95% bootstrap CI over problems" if all(
        b.get("pass@1", Band(0, 0, 0, 0)).has_ci for b in comp.final.values()) else "min-max over seeds")
    steps = ", ".join(sorted({str(s) for s in comp.final_step.values()}, key=int))
    fig = passk_figure({v: passk_curve(comp.final[v]) for v in comp.variants}, base,
                       title=f"pass@k at the final evaluation (step {steps})", band_note=note)
    files["passk_vs_k"] = save_figure(fig, out / "passk_vs_k.png")
    by_variant = {v: [r for r in runs if r.ref.variant == v and r.ref.role == "variant"] for v in comp.variants}
    if not any(len(r.evals) + len(r.train) > 1 for g in by_variant.values() for r in g):
        return files  # a single evaluation per run (rl-div eval): nothing to draw over steps
    panels = [(title.replace("pass@K", f"pass@{comp.k}"),
               {v: step_series(g, kind, metric.replace("pass@K", f"pass@{comp.k}")) for v, g in by_variant.items()})
              for kind, metric, title in TRAIN_PANELS]
    files["training_curves"] = save_figure(curves_figure(panels, comp.variants, SEED_BAND_NOTE),
                                           out / "training_curves.png")
    present = [m for m in DIVERSITY_PANELS if any(m in b for b in comp.final.values())]
    panels = [(f"{m} (held-out)", {v: step_series(g, "eval", m) for v, g in by_variant.items()}) for m in present]
    if panels:
        files["diversity_curves"] = save_figure(curves_figure(panels, comp.variants, SEED_BAND_NOTE),
                                                out / "diversity_curves.png")
    return files


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
    })
    json_path = out / "summary.json"
    json_path.write_text(json.dumps(clean, indent=1))
    return csv_path, json_path


def build_report(paths: list[str | Path], out: str | Path | None = None, title: str | None = None) -> dict[str, Path]:
    """Read the runs under ``paths`` and write every export into ``out`` (default: <first path>/report)."""
    kind, refs = discover_runs(paths)
    out_dir = Path(out) if out is not None else Path(paths[0]) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(r) for r in refs]
    files: dict[str, Path] = {}
    files["metrics_tidy_csv"], files["metrics_tidy_json"] = write_tidy(tidy_rows(runs), out_dir)
    comp = build_comparison(runs, kind)
    files["summary_csv"], files["summary_json"] = write_summary(comp, out_dir)
    files.update(figures(comp, runs, out_dir))
    default_title = "Evaluation report" if kind == "eval" else "GRPO vs re-weighted variants: pass@k and diversity"
    blocks = document(comp, files, title or default_title)
    files["report_md"] = out_dir / "report.md"
    files["report_md"].write_text(render_markdown(blocks), encoding="utf-8")
    files["report_html"] = out_dir / "report.html"
    files["report_html"].write_text(render_html(blocks, out_dir), encoding="utf-8")
    return files


__all__ = ["build_report", "figures", "passk_curve", "step_series", "write_summary"]
