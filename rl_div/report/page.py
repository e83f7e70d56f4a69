"""The one-page report: results, pass@k and collapse tables, rendered as Markdown and as a
self-contained HTML page."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any

from rl_div.report.comparison import Comparison, _ks
from rl_div.report.intervals import marked
from rl_div.report.summarize import Band

CI_NOTE = "95% bootstrap CI over problems (1000 resamples within each seed, averaged over seeds)"
SEED_RANGE_NOTE = "; † = min–max over seeds (no per-problem values)"
DIFF_NOTE = ("Paired differences: on the same problems and sampling seeds, variant minus the other, averaged "
             "over problems and seeds; [95% interval: t with the seeds x problems variance and "
             "Welch-Satterthwaite degrees of freedom, or the t interval over seeds for metrics without "
             "per-problem values (evaluations saved before issue 28); rl_div.report.intervals]; * = the "
             "interval excludes 0, shown from 2 seeds on; one seed gives no interval.")
# (column title, metric key); the K of pass@K is filled in per report.
TABLE_COLUMNS = [("pass@1", "pass@1"), ("pass@K", "pass@K"), ("maj@n", "maj@n"), ("entropy", "policy/entropy"),
                 ("distinct correct answers", "div/distinct_correct_answers"), ("emb. diversity", "div/emb_diversity"),
                 ("Vendi", "div/vendi")]
FIGURE_CAPTIONS = {"passk_vs_k": "pass@k against k", "training_curves": "held-out and training metrics over steps",
                   "diversity_curves": "held-out diversity over steps",
                   "passk_over_steps": "held-out pass@1 and pass@K over steps, per variant"}
COLLAPSE_KEYS = ["d_all_ref", "d_all_model", "d_correct_ref", "d_correct_model", "total", "residual",
                 "quality_control"]


# ---- tables and the page ---------------------------------------------------------------------------
def fmt(band: Band | None) -> str:
    """'0.123 [0.100, 0.150]' with a bootstrap CI, '... †' with a seed range, '0.123' without a band."""
    if band is None or math.isnan(band.mean):
        return "–"
    lo, hi = band.interval()
    if math.isnan(lo) or f"{lo:.3f}" == f"{hi:.3f}":  # no band, or none visible at this precision
        return f"{band.mean:.3f}"
    return f"{band.mean:.3f} [{lo:.3f}, {hi:.3f}]" + ("" if band.has_ci else " †")


def fmt_diff(band: Band | None) -> str:
    """'+0.012 [-0.004, +0.028]' (paired difference and its 95% CI); '*' when the CI excludes 0."""
    if band is None or math.isnan(band.mean):
        return "–"
    lo, hi = band.ci_lo, band.ci_hi  # never the seed range: one seed's [x, x] is no interval
    if math.isnan(lo):
        return f"{band.mean:+.3f}"
    beyond = "*" if marked(lo, hi, band.n_seeds) else ""
    return f"{band.mean:+.3f} [{lo:+.3f}, {hi:+.3f}]{beyond}"


def table_rows(comp: Comparison) -> list[tuple[str, int | None, dict[str, Band]]]:
    rows: list[tuple[str, int | None, dict[str, Band]]] = []
    if comp.base and comp.base_label:
        rows.append((comp.base_label, 0 if comp.kind == "compare" else None, comp.base))
    # rl-div eval evaluates each model once (as "step 0" of its eval run): a step column would mislead.
    rows += [(v, None if comp.kind == "eval" else comp.final_step[v], comp.final[v]) for v in comp.variants]
    return rows


def results_table(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    cols = [(t.replace("K", str(comp.k)), m.replace("K", str(comp.k))) for t, m in TABLE_COLUMNS
            if any(m.replace("K", str(comp.k)) in b for _, _, b in table_rows(comp))]
    header = ["variant", "step", *[t for t, _ in cols]]
    body = [[name, "" if step is None else str(step), *[fmt(b.get(m)) for _, m in cols]]
            for name, step, b in table_rows(comp)]
    return header, body


def passk_table(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    ks = sorted({k for _, _, b in table_rows(comp) for k in _ks(b)})
    body = [[name, *[fmt(b.get(f"pass@{k}")) for k in ks]] for name, _, b in table_rows(comp)]
    return ["variant", *[f"k={k}" for k in ks]], body


def diff_table(comp: Comparison, against: str) -> tuple[list[str], list[list[str]]]:
    """Each variant minus ``against`` in the results table's metrics."""
    diffs = comp.diffs[against]
    cols = [(t.replace("K", str(comp.k)), m.replace("K", str(comp.k))) for t, m in TABLE_COLUMNS
            if any(m.replace("K", str(comp.k)) in d for d in diffs.values())]
    header = ["variant", *[f"Δ {t}" for t, _ in cols]]
    return header, [[f"{v} − {against}", *[fmt_diff(d.get(m)) for _, m in cols]] for v, d in diffs.items()]


def diff_passk_table(comp: Comparison, against: str) -> tuple[list[str], list[list[str]]]:
    """Each variant minus ``against`` in pass@k at every k."""
    diffs = comp.diffs[against]
    ks = sorted({k for d in diffs.values() for k in _ks(d)})
    return (["variant", *[f"Δ k={k}" for k in ks]],
            [[f"{v} − {against}", *[fmt_diff(d.get(f"pass@{k}")) for k in ks]] for v, d in diffs.items()])


def diff_blocks(comp: Comparison) -> list[tuple[Any, ...]]:
    blocks: list[tuple[Any, ...]] = []
    for against in comp.diffs:
        blocks += [("h2", f"Paired differences against {against}"), ("table", *diff_table(comp, against)),
                   ("table", *diff_passk_table(comp, against))]
    if blocks:
        blocks.append(("p", DIFF_NOTE))
    return blocks


def collapse_table(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "D_all ref → model", "D_correct ref → model", "total", "residual", "quality control"]
    body = []
    for v, c in comp.collapse.items():
        body.append([v, f"{c['d_all_ref']:.3f} → {c['d_all_model']:.3f}",
                     f"{c['d_correct_ref']:.3f} → {c['d_correct_model']:.3f}",
                     f"{c['total']:.3f}", f"{c['residual']:.3f}", f"{c['quality_control']:.3f}"])
    return header, body


def document(comp: Comparison, files: dict[str, Path], title: str,
             provenance: list[tuple[Any, ...]] | None = None) -> list[tuple[Any, ...]]:
    s = comp.setup
    steps = ", ".join(f"{v}: {n}" for v, n in s["train_steps"].items())
    what = (f"Model {s['model']} against reference {s['reference']}" if comp.kind == "eval" and s["reference"]
            else f"Variants: {', '.join(comp.variants)} (training steps {steps}), base model {s['model']}")
    setup = (f"{what}. Task/data: {s['data']}. Seeds: {', '.join(map(str, s['seeds']))}. Held-out evaluation: "
             f"{s['eval_problems'] or '?'} problems × n = {s['eval_n']} samples at temperature "
             f"{s['eval_temperature']}; pass@k is the unbiased estimator (Chen et al. 2021).")
    seed_note = SEED_RANGE_NOTE if len(s["seeds"]) > 1 else ""
    blocks: list[tuple[Any, ...]] = [("h1", title), ("p", setup), ("h2", "Results"), ("table", *results_table(comp)),
                                     ("p", f"Mean over seeds [{CI_NOTE}{seed_note}]. Entropy: mean token entropy "
                                           "of the held-out samples; distinct correct answers: per problem, averaged.")]
    blocks += [("h2", "pass@k curve (mean over seeds)"), ("table", *passk_table(comp))]
    blocks += diff_blocks(comp)
    if comp.collapse:
        blocks += [("h2", "Diversity collapse against the reference"), ("table", *collapse_table(comp)),
                   ("p", "Answer-level pairwise diversity (probability that two samples of a problem give "
                         "different answers), averaged over problems (D_correct: problems with ≥ 2 correct "
                         "samples) and seeds. total = D_all(ref) − D_all(model); residual = D_correct(ref) − "
                         "D_correct(model) (collapse among correct solutions); quality control = total − "
                         "residual (diversity lost by dropping wrong answers). Reference: "
                         + ("the reference model." if comp.kind == "eval" else "each run's step-0 evaluation."))]
    blocks.append(("h2", "Figures"))
    blocks += [("img", path.name, FIGURE_CAPTIONS.get(name, name.replace("_", " ")))
               for name, path in files.items() if path.suffix == ".png"]
    blocks += provenance or []
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


_MD_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _links(escaped: str) -> str:
    """Markdown links [text](href) in an already escaped cell -> <a href>."""
    return _MD_LINK.sub(r'<a href="\2">\1</a>', escaped)


# A number with its interval ('0.123 [0.100, 0.150] †', '+0.012 [-0.004, +0.028]*', '0.1 → 0.2', a crossover
# k 'none [8, none]'): kept on one line.
_NUMBER_CELL = re.compile(r"(?:[+\-−–]?[\d.,]+%?|none)( \[[^\]]+\])?[ †*]*( → [\d.,]+)?")


def _cell(text: str) -> str:
    escaped = _links(html.escape(text))
    if _NUMBER_CELL.fullmatch(text):
        return f'<td class="n">{escaped}</td>'
    # one word (a time stamp, a name) stays whole; text (a command, a config difference) reads left to right
    return f'<td class="w">{escaped}</td>' if " " not in text and len(text) <= 40 else f"<td>{escaped}</td>"


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
            rows = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in block[2])
            parts.append(f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")
        elif kind == "img":
            data = base64.b64encode((folder / block[1]).read_bytes()).decode()
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block[2])}">'
                         f"<figcaption>{esc(block[2])} ({esc(block[1])})</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;line-height:1.4}div.wide{overflow-x:auto}"
             "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #bbb;"
             "padding:.25em .6em;text-align:left}th,td.n{text-align:right}td.w{white-space:nowrap}"
             "th:first-child{text-align:left}"
             "td.n,td:first-child{white-space:nowrap}img{max-width:100%}figcaption{font-size:80%;color:#555}")
    title = esc(next((b[1] for b in blocks if b[0] == "h1"), "rl_div report"))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")
