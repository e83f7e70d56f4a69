"""``rl-div eval MODEL --benchmarks aime24,math500 --n N --limit L``: the model and its reference on
standard benchmarks, same problems and sampling seeds, and per benchmark:

- ``OUT/benchmarks/<b>.csv`` and ``.json``: pass@k (k = 1, 2, 4, ..., n), avg@n, maj@k, pass^k with
  bootstrap intervals over problems, for the model and the reference, and the paired difference
  (model - reference, the same resample of problems) with its interval; the crossover k at which the
  reference's pass@k overtakes the model's ("none up to n" when it does not);
- ``OUT/benchmarks/passk.png``: one panel per benchmark, pass@k on a log-k axis (reference dashed),
  the paired difference with its band below;
- ``OUT/report/``: the report ``rl-div report`` builds (held-out split and the benchmark tables).

Sampling and scoring are the Trainer's own evaluation (rl_div/train/benchmark_eval.py), run through
rl_div.experiments.evaluate.evaluate_model on rollout workers and the reward worker alone (no learner).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rl_div.experiments.evaluate import default_reference, eval_config, evaluate_model, resolve_target
from rl_div.experiments.sampling_eval import EvalActors
from rl_div.metrics.large_k import bootstrap_mean, crossover_k, per_problem_values
from rl_div.metrics.passk import default_ks
from rl_div.report.results import RunRef, write_manifest


def compare_benchmark(model: dict[str, Any], reference: dict[str, Any] | None, resamples: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """Rows (metric, k, model mean/lo/hi, reference mean/lo/hi, diff mean/lo/hi) and the crossover."""
    by_uid = {p["uid"]: p for p in reference["problems"]} if reference else {}
    problems = [p for p in model["problems"] if not reference or p["uid"] in by_uid]
    ks = default_ks(min(p["n"] for p in problems))
    mine = per_problem_values(problems, ks)
    theirs = per_problem_values([by_uid[p["uid"]] for p in problems], ks) if reference else None
    rows = []
    for metric, values in mine.items():
        k_list = ["n"] if metric == "avg@n" else ks
        m = bootstrap_mean(values, resamples=resamples, seed=seed)
        r = bootstrap_mean(theirs[metric], resamples=resamples, seed=seed) if theirs else None
        d = bootstrap_mean(values - theirs[metric], resamples=resamples, seed=seed) if theirs else None
        for j, k in enumerate(k_list):
            row: dict[str, Any] = {"metric": metric.replace("k", str(k)) if metric != "avg@n" else metric, "k": k,
                                   "model": m[0][j], "model_lo": m[1][j], "model_hi": m[2][j]}
            if r is not None and d is not None:
                row.update({"reference": r[0][j], "reference_lo": r[1][j], "reference_hi": r[2][j],
                            "diff": d[0][j], "diff_lo": d[1][j], "diff_hi": d[2][j],
                            "diff_excludes_0": bool(d[1][j] > 0 or d[2][j] < 0)})
            rows.append(row)
    out: dict[str, Any] = {"benchmark": model["benchmark"], "problems": len(problems), "ks": ks, "rows": rows,
                           "sampling": model["sampling"]}
    if theirs is not None:
        cross = crossover_k(mine["pass@k"], theirs["pass@k"], ks, resamples=resamples, seed=seed)
        out["crossover"] = {"k": cross.k, "lo": cross.lo, "hi": cross.hi, "none_fraction": cross.none_fraction,
                            "text": f"none up to {ks[-1]}" if cross.k is None else str(cross.k)}
    return out


def write_benchmark_files(result: dict[str, Any], folder: Path) -> None:
    """OUT/benchmarks/<b>.json and .csv (one row per metric and k)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = result["benchmark"]
    (folder / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
    fields = list(result["rows"][0])  # every row has the same columns
    with open(folder / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(result["rows"])


def passk_panels(results: list[dict[str, Any]], path: Path, model_label: str, reference_label: str | None) -> Path:
    """One column per benchmark: pass@k vs k (log axis; reference dashed), the paired difference below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(results)
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols, 6.0), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [2, 1]})
    for j, result in enumerate(results):
        rows = [r for r in result["rows"] if r["metric"].startswith("pass@")]
        ks = [r["k"] for r in rows]
        top, bottom = axes[0][j], axes[1][j]
        top.plot(ks, [r["model"] for r in rows], "o-", label=model_label)
        top.fill_between(ks, [r["model_lo"] for r in rows], [r["model_hi"] for r in rows], alpha=0.2)
        if "reference" in rows[0]:
            top.plot(ks, [r["reference"] for r in rows], "s--", color="grey", label=reference_label)
            bottom.plot(ks, [r["diff"] for r in rows], "o-", color="C3")
            bottom.fill_between(ks, [r["diff_lo"] for r in rows], [r["diff_hi"] for r in rows], color="C3", alpha=0.2)
        bottom.axhline(0.0, color="black", lw=0.8)
        top.set_title(f"{result['benchmark']} ({result['problems']} problems)")
        top.set_ylabel("pass@k")
        top.set_ylim(-0.02, 1.02)  # a probability: the same scale in every panel
        bottom.set_ylabel("model - reference")
        bottom.set_xlabel("k")
        bottom.set_xscale("log", base=2)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_benchmark_eval(model: str | Path, benchmarks: list[str], n: int | None = None, limit: int | None = None,
                       config: str | None = None, reference: str | None = None, seed: int | None = None,
                       out: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` and its reference on ``benchmarks``; returns {benchmark: comparison} and writes
    OUT/benchmarks/ (see the module docstring). ``n`` overrides every benchmark's own n."""
    extra = list(overrides or []) + [f"eval.benchmarks=[{', '.join(benchmarks)}]"]
    if limit is not None:
        extra.append(f"eval.benchmark_limit={limit}")
    if n is not None:
        extra += [f"benchmarks.sampling.{b}.n={n}" for b in benchmarks]
    target = resolve_target(model)
    cfg = eval_config(target, config, extra)
    from rl_div.config.checks import check_benchmark_settings

    check_benchmark_settings(cfg)  # unknown names: one clear line before any model loads
    ref_dir = default_reference(target, cfg, reference, config)
    seed = cfg.run.seed if seed is None else seed
    out = Path(out) if out is not None else Path("evals") / f"{target.label.replace('@', '_')}_benchmarks"
    held_out_n = n or cfg.eval.n
    model_run = out / "model" / f"seed{seed}"
    ref_run = None
    actors = EvalActors()  # rollout workers and the reward worker only (rl_div.experiments.sampling_eval)
    try:
        evaluate_model(target.model_dir, cfg, seed, held_out_n, model_run, target.label, actors)
        if ref_dir is not None:
            ref_run = out / "reference" / f"seed{seed}"
            evaluate_model(ref_dir, cfg, seed, held_out_n, ref_run, f"reference ({ref_dir.name})", actors)
    finally:
        actors.close()
    results = {}
    for name in benchmarks:
        mine = json.loads((model_run / "eval" / name / "step_000000.json").read_text())
        theirs = json.loads((ref_run / "eval" / name / "step_000000.json").read_text()) if ref_run else None
        results[name] = compare_benchmark(mine, theirs, seed=seed)
        write_benchmark_files(results[name], out / "benchmarks")
    ref_label = f"reference ({ref_dir.name})" if ref_dir else None
    passk_panels(list(results.values()), out / "benchmarks" / "passk.png", target.label, ref_label)
    refs = [RunRef(target.label, seed, model_run)] + ([RunRef(ref_label, seed, ref_run, role="reference")]
                                                       if ref_run is not None and ref_label else [])
    write_manifest(out, "eval", refs, {"model": str(target.model_dir), "reference": str(ref_dir) if ref_dir else None,
                                       "benchmarks": benchmarks, "seeds": [seed]})
    from rl_div.report import build_report

    build_report([out], out / "report", title=f"Benchmarks of {target.label}")  # report.md/.html as rl-div report
    return results


def print_benchmarks(results: dict[str, Any]) -> None:
    """pass@1 (avg@n), the largest k's pass@k and maj@k per benchmark, with the paired difference."""
    for name, r in results.items():
        ks = r["ks"]
        print(f"\n{name} ({r['problems']} problems, n = {ks[-1]})")
        for metric in ("avg@n", f"pass@{ks[-1]}", f"maj@{ks[-1]}", f"pass^{ks[-1]}"):
            row = next(x for x in r["rows"] if x["metric"] == metric)
            text = f"  {metric:<12} {row['model']:.3f} [{row['model_lo']:.3f}, {row['model_hi']:.3f}]"
            if "diff" in row:
                mark = " *" if row["diff_excludes_0"] else ""
                text += f"   reference {row['reference']:.3f}   diff {row['diff']:+.3f} [{row['diff_lo']:+.3f}, " \
                        f"{row['diff_hi']:+.3f}]{mark}"
            print(text)
        if "crossover" in r:
            c = r["crossover"]
            print(f"  crossover k: {c['text']} (interval {c['lo']}..{c['hi'] if c['hi'] else 'none'})")
