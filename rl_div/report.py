"""The comparison report: tidy CSV/JSON, summary with bands, PNG plots and a one-page Markdown + HTML.

``build_report(paths)`` reads run directories (see rl_div.results) and writes, into one folder:
    metrics_tidy.csv/.json   every logged value: variant, seed, role, step, kind, metric, k, value
    summary.csv/.json        per variant at its final evaluation: mean over seeds, bootstrap CI over
                             problems, seed min/max (rl_div.summarize); plus the collapse decomposition
    passk_vs_k.png           pass@k against k per variant, with the base / reference model
    training_curves.png      pass@1, pass@K, entropy and distinct correct answers over steps
    diversity_curves.png     the held-out diversity metrics over steps
    report.md, report.html   one page: setup, results table, pass@k table, collapse table, figures
Everything is regenerated from files, so ``rl-div report DIR`` after a crash or on a copied folder
gives the same page.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_div.plots import Curve, curves_figure, passk_figure, save_figure
from rl_div.results import RunData, discover_runs, load_run, tidy_rows, write_tidy
from rl_div.summarize import Band, EvalPoint, collapse_over_seeds, passk_keys, step_curve, summarize_evals, table_k

SEED_BAND_NOTE = "bands: min-max over seeds"
CI_NOTE = ("95% bootstrap CI over problems (1000 resamples within each seed, averaged over seeds); "
           "† = min–max over seeds (no per-problem values)")
# (column title, metric key); the K of pass@K is filled in per report.
TABLE_COLUMNS = [("pass@1", "pass@1"), ("pass@K", "pass@K"), ("maj@n", "maj@n"), ("entropy", "policy/entropy"),
                 ("distinct correct answers", "div/distinct_correct_answers"), ("emb. diversity", "div/emb_diversity"),
                 ("Vendi", "div/vendi")]
COLLAPSE_KEYS = ["d_all_ref", "d_all_model", "d_correct_ref", "d_correct_model", "total", "residual",
                 "quality_control"]
TRAIN_PANELS = [("eval", "pass@1", "pass@1 (held-out)"), ("eval", "pass@K", "pass@K (held-out)"),
                ("train", "policy/entropy", "policy entropy (training batches)"),
                ("train", "div/distinct_correct_answers", "distinct correct answers / prompt (training)")]
DIVERSITY_PANELS = ["div/emb_diversity", "div/vendi", "div/distinct_answers", "div/num_classes", "div/distinct_4",
                    "policy/entropy"]


@dataclass
class Comparison:
    kind: str
    variants: list[str]
    final_step: dict[str, int]
    final: dict[str, dict[str, Band]]
    base_label: str | None = None
    base: dict[str, Band] | None = None
    collapse: dict[str, dict[str, float]] = field(default_factory=dict)
    k: int = 1
    notes: list[str] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)


def _final_step(runs: list[RunData], notes: list[str], variant: str) -> int:
    """The last evaluation every seed has; a seed that stopped early must not bias the comparison."""
    steps = [set(r.evals) for r in runs]
    common = set.intersection(*steps)
    if common:
        return max(common)
    notes.append(f"{variant}: no evaluation step common to all seeds; using each seed's last one")
    return max(set.union(*steps))


def build_comparison(runs: list[RunData], kind: str = "compare") -> Comparison:
    """Each variant at its final evaluation, the base/reference model, and the collapse of each variant."""
    variants: dict[str, list[RunData]] = {}
    for r in runs:
        if r.ref.role == "variant" and r.evals:
            variants.setdefault(r.ref.variant, []).append(r)
    references = [r for r in runs if r.ref.role == "reference" and r.evals]
    if not variants:
        raise ValueError("no evaluations found: nothing to report (did the runs reach their first eval?)")
    comp = Comparison(kind, list(variants), {}, {})
    for name, group in variants.items():
        step = comp.final_step[name] = _final_step(group, comp.notes, name)
        comp.final[name] = summarize_evals([r.evals.get(step) or r.evals[max(r.evals)] for r in group])
    _add_base(comp, variants, references)
    for name, group in variants.items():
        _add_collapse(comp, name, group, references)
    comp.k = table_k([*comp.final.values(), *([comp.base] if comp.base else [])])
    comp.setup = _setup(variants[comp.variants[0]], variants, references)
    return comp


def _add_base(comp: Comparison, variants: dict[str, list[RunData]], references: list[RunData]) -> None:
    """The reference runs of rl-div eval, else the step-0 evaluations of a comparison."""
    if references:
        comp.base_label = references[0].ref.variant
        comp.base = summarize_evals([r.evals[max(r.evals)] for r in references])
        return
    if not any(step > 0 for step in comp.final_step.values()):
        return  # the variants are their own step 0: a base row would repeat them
    # One step-0 evaluation per seed (the first variant that has it): every variant's step 0 is the
    # same base model on the same problems and sampling seed, so any one stands for all.
    starts: dict[int, EvalPoint] = {}
    for group in variants.values():
        for r in group:
            if 0 in r.evals:
                starts.setdefault(r.ref.seed, r.evals[0])
    if starts:
        comp.base_label = "base (step 0)"
        comp.base = summarize_evals([starts[s] for s in sorted(starts)])
    models = {json.dumps([r.config.get("model"), r.config.get("bootstrap")], sort_keys=True)
              for g in variants.values() for r in g}
    if len(models) > 1:
        comp.notes.append("variants start from different models; the base row is each seed's first variant's step 0")


def _add_collapse(comp: Comparison, name: str, group: list[RunData], references: list[RunData]) -> None:
    """Final evaluation against the reference model (rl-div eval) or the run's own step 0 (compare)."""
    step = comp.final_step[name]
    model = {r.ref.seed: r.evals[step].problems for r in group if step in r.evals and r.evals[step].problems}
    if references:
        ref = {r.ref.seed: r.evals[max(r.evals)].problems for r in references if r.evals[max(r.evals)].problems}
    elif step > 0:
        ref = {r.ref.seed: r.evals[0].problems for r in group if 0 in r.evals and r.evals[0].problems}
    else:
        return
    try:
        report = collapse_over_seeds(model, ref)  # type: ignore[arg-type]
    except ValueError as err:  # evaluated on different problems: say so instead of failing the report
        comp.notes.append(f"{name}: no collapse decomposition ({err})")
        return
    if report is not None:
        comp.collapse[name] = report


def _ks(bands: dict[str, Band]) -> list[int]:
    return passk_keys(dict.fromkeys(bands, 0.0))


def _setup(first: list[RunData], variants: dict[str, list[RunData]], references: list[RunData]) -> dict[str, Any]:
    cfg = first[0].config
    point = first[0].evals[max(first[0].evals)]
    data = cfg.get("data", {})
    return {
        "data": data.get("task") if data.get("source") == "task" else data.get("path"),
        "model": cfg.get("model", {}).get("path"),
        "reference": references[0].config.get("model", {}).get("path") if references else None,
        "seeds": sorted({r.ref.seed for g in variants.values() for r in g}),
        "train_steps": {v: g[0].config.get("train", {}).get("steps") for v, g in variants.items()},
        "eval_n": point.metrics.get("n"),
        "eval_problems": len(point.problems) if point.problems else None,
        "eval_temperature": cfg.get("eval", {}).get("temperature"),
        "group_size": cfg.get("rollout", {}).get("group_size"),
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


# ---- tables and the page ---------------------------------------------------------------------------
def fmt(band: Band | None) -> str:
    """'0.123 [0.100, 0.150]' with a bootstrap CI, '... †' with a seed range, '0.123' without a band."""
    if band is None or math.isnan(band.mean):
        return "–"
    lo, hi = band.interval()
    if math.isnan(lo) or f"{lo:.3f}" == f"{hi:.3f}":  # no band, or none visible at this precision
        return f"{band.mean:.3f}"
    return f"{band.mean:.3f} [{lo:.3f}, {hi:.3f}]" + ("" if band.has_ci else " †")


def _rows(comp: Comparison) -> list[tuple[str, int | None, dict[str, Band]]]:
    rows: list[tuple[str, int | None, dict[str, Band]]] = []
    if comp.base and comp.base_label:
        rows.append((comp.base_label, 0 if comp.kind == "compare" else None, comp.base))
    # rl-div eval evaluates each model once (as "step 0" of its eval run): a step column would mislead.
    rows += [(v, None if comp.kind == "eval" else comp.final_step[v], comp.final[v]) for v in comp.variants]
    return rows


def results_table(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    cols = [(t.replace("K", str(comp.k)), m.replace("K", str(comp.k))) for t, m in TABLE_COLUMNS
            if any(m.replace("K", str(comp.k)) in b for _, _, b in _rows(comp))]
    header = ["variant", "step", *[t for t, _ in cols]]
    body = [[name, "" if step is None else str(step), *[fmt(b.get(m)) for _, m in cols]]
            for name, step, b in _rows(comp)]
    return header, body


def passk_table(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    ks = sorted({k for _, _, b in _rows(comp) for k in _ks(b)})
    body = [[name, *[f"{b[f'pass@{k}'].mean:.3f}" if f"pass@{k}" in b else "–" for k in ks]]
            for name, _, b in _rows(comp)]
    return ["variant", *[f"k={k}" for k in ks]], body


def collapse_table(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "D_all ref → model", "D_correct ref → model", "total", "residual", "quality control"]
    body = []
    for v, c in comp.collapse.items():
        body.append([v, f"{c['d_all_ref']:.3f} → {c['d_all_model']:.3f}",
                     f"{c['d_correct_ref']:.3f} → {c['d_correct_model']:.3f}",
                     f"{c['total']:.3f}", f"{c['residual']:.3f}", f"{c['quality_control']:.3f}"])
    return header, body


def document(comp: Comparison, files: dict[str, Path], title: str) -> list[tuple[Any, ...]]:
    s = comp.setup
    steps = ", ".join(f"{v}: {n}" for v, n in s["train_steps"].items())
    what = (f"Model {s['model']} against reference {s['reference']}" if comp.kind == "eval" and s["reference"]
            else f"Variants: {', '.join(comp.variants)} (training steps {steps}), base model {s['model']}")
    setup = (f"{what}. Task/data: {s['data']}. Seeds: {', '.join(map(str, s['seeds']))}. Held-out evaluation: "
             f"{s['eval_problems'] or '?'} problems × n = {s['eval_n']} samples at temperature "
             f"{s['eval_temperature']}; pass@k is the unbiased estimator (Chen et al. 2021).")
    blocks: list[tuple[Any, ...]] = [("h1", title), ("p", setup), ("h2", "Results"), ("table", *results_table(comp)),
                                     ("p", f"Mean over seeds [{CI_NOTE}]. Entropy: mean token entropy of the "
                                           "held-out samples; distinct correct answers: per problem, averaged.")]
    blocks += [("h2", "pass@k curve (mean over seeds)"), ("table", *passk_table(comp))]
    if comp.collapse:
        blocks += [("h2", "Diversity collapse against the reference"), ("table", *collapse_table(comp)),
                   ("p", "Answer-level pairwise diversity (probability that two samples of a problem give "
                         "different answers), averaged over problems (D_correct: problems with ≥ 2 correct "
                         "samples) and seeds. total = D_all(ref) − D_all(model); residual = D_correct(ref) − "
                         "D_correct(model) (collapse among correct solutions); quality control = total − "
                         "residual (diversity lost by dropping wrong answers). Reference: "
                         + ("the reference model." if comp.kind == "eval" else "each run's step-0 evaluation."))]
    blocks.append(("h2", "Figures"))
    blocks += [("img", path.name, name.replace("_", " ")) for name, path in files.items() if path.suffix == ".png"]
    if comp.notes:
        blocks += [("h2", "Notes"), *[("p", n) for n in comp.notes]]
    data_files = ", ".join(p.name for k, p in files.items() if p.suffix != ".png")
    blocks.append(("p", f"Data: {data_files} (beside this page)."))
    return blocks


def render_markdown(blocks: list[tuple[Any, ...]]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            header, body = block[1], block[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            out.append("\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[tuple[Any, ...]], folder: Path) -> str:
    """A self-contained page: images are embedded (base64), so the one file can be mailed or uploaded."""
    esc = html.escape
    parts = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{esc(block[1])}</{kind}>")
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in block[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((folder / block[1]).read_bytes()).decode()
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block[2])}">'
                         f"<figcaption>{esc(block[2])} ({esc(block[1])})</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #bbb;"
             "padding:.25em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}figcaption{font-size:80%;color:#555}")
    title = esc(next((b[1] for b in blocks if b[0] == "h1"), "rl_div report"))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")


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
    for name, step, bands in _rows(comp):
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


__all__ = ["Comparison", "EvalPoint", "build_comparison", "build_report"]
