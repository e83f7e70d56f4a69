"""One comparison: every variant at its final evaluation (bands over problems and seeds), the
base/reference model, and each variant's collapse decomposition, built from loaded runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rl_div.config import ConfigError
from rl_div.report.results import RunData
from rl_div.report.summarize import (
    Band,
    EvalPoint,
    collapse_over_seeds,
    paired_differences,
    passk_keys,
    summarize_evals,
    table_k,
)


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
    # Per-seed evaluations behind ``final`` and ``base`` (for paired differences).
    points: dict[str, list[EvalPoint]] = field(default_factory=dict)
    base_points: list[EvalPoint] = field(default_factory=list)
    baseline: str | None = None
    # {against: {variant: {metric: Band of variant - against}}}; against = the baseline variant
    # and the base/reference model.
    diffs: dict[str, dict[str, dict[str, Band]]] = field(default_factory=dict)


class MixedEvalSets(ConfigError):
    """Runs evaluated on different sets (problems, n, temperature, eval seed) cannot share a table."""


def eval_set(run: RunData) -> tuple[Any, ...]:
    """What a run's evaluations were drawn from: the problem ids (from its eval files, else the
    configured count), n, temperature, data.eval_seed and the sampling limits. Two runs with equal
    sets give comparable numbers; the sampling seed (run.seed) may differ."""
    cfg_eval, data, rollout = (run.config.get(k) or {} for k in ("eval", "data", "rollout"))
    uids = next((tuple(p["uid"] for p in e.problems) for _, e in sorted(run.evals.items()) if e.problems), None)
    n = cfg_eval.get("n", next((e.metrics.get("n") for e in run.evals.values()), None))
    return (uids or data.get("num_eval_prompts"), n, cfg_eval.get("temperature"), data.get("eval_seed"),
            rollout.get("top_p"), rollout.get("top_k"), rollout.get("max_new_tokens"))


def describe_eval_set(key: tuple[Any, ...]) -> str:
    problems, n, temperature, eval_seed, top_p, top_k, max_new = key
    count = len(problems) if isinstance(problems, tuple) else problems
    ids = f" ({', '.join(map(str, problems[:3]))}, ...)" if isinstance(problems, tuple) else ""
    return (f"{count} problems{ids} x n = {n} at temperature {temperature}, eval_seed {eval_seed}, "
            f"top_p {top_p}, top_k {top_k}, max_new_tokens {max_new}")


def check_one_eval_set(runs: list[RunData]) -> None:
    """Raise MixedEvalSets, naming each set and its runs, when the runs were not all evaluated on
    the same problems with the same sampling: their pass@k curves and tables would not be comparable."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for r in runs:
        if r.evals:
            groups.setdefault(eval_set(r), []).append(f"{r.ref.variant}/seed{r.ref.seed}")
    if len(groups) > 1:
        parts = [f"[{describe_eval_set(key)}: {', '.join(names)}]" for key, names in groups.items()]
        raise MixedEvalSets(f"these runs were evaluated on {len(groups)} different evaluation sets and cannot "
                            f"share one report: {'; '.join(parts)}. Report each set separately "
                            "(rl-div report on its run folders)")


def _final_step(runs: list[RunData], notes: list[str], variant: str) -> int:
    """The last evaluation every seed has; a seed that stopped early must not bias the comparison."""
    steps = [set(r.evals) for r in runs]
    common = set.intersection(*steps)
    if common:
        return max(common)
    notes.append(f"{variant}: no evaluation step common to all seeds; using each seed's last one")
    return max(set.union(*steps))


def build_comparison(runs: list[RunData], kind: str = "compare", baseline: str | None = None) -> Comparison:
    """Each variant at its final evaluation, the base/reference model, the collapse of each variant,
    and paired differences against ``baseline`` (default: the first variant) and the base model."""
    variants: dict[str, list[RunData]] = {}
    for r in runs:
        if r.ref.role == "variant" and r.evals:
            variants.setdefault(r.ref.variant, []).append(r)
    references = [r for r in runs if r.ref.role == "reference" and r.evals]
    if not variants:
        raise ValueError("no evaluations found: nothing to report (did the runs reach their first eval?)")
    check_one_eval_set(runs)
    comp = Comparison(kind, list(variants), {}, {})
    for name, group in variants.items():
        step = comp.final_step[name] = _final_step(group, comp.notes, name)
        comp.points[name] = [r.evals.get(step) or r.evals[max(r.evals)] for r in group]
        comp.final[name] = summarize_evals(comp.points[name])
    _add_base(comp, variants, references)
    for name, group in variants.items():
        _add_collapse(comp, name, group, references)
    _add_differences(comp, baseline)
    comp.k = table_k([*comp.final.values(), *([comp.base] if comp.base else [])])
    comp.setup = _setup(variants[comp.variants[0]], variants, references)
    return comp


def _add_base(comp: Comparison, variants: dict[str, list[RunData]], references: list[RunData]) -> None:
    """The reference runs of rl-div eval, else the step-0 evaluations of a comparison."""
    if references:
        comp.base_label = references[0].ref.variant
        comp.base_points = [r.evals[max(r.evals)] for r in references]
        comp.base = summarize_evals(comp.base_points)
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
        comp.base_points = [starts[s] for s in sorted(starts)]
        comp.base = summarize_evals(comp.base_points)
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


def _add_differences(comp: Comparison, baseline: str | None) -> None:
    """Every other variant minus the baseline variant, and every variant minus the base model,
    paired by seed and problem (rl_div.report.summarize.paired_differences)."""
    if baseline is not None and baseline not in comp.final:
        raise ConfigError(f"--baseline {baseline!r} is not a variant of this comparison ({', '.join(comp.variants)})")
    comp.baseline = baseline or (comp.variants[0] if len(comp.variants) > 1 else None)
    if comp.baseline is not None:
        against = comp.points[comp.baseline]
        comp.diffs[comp.baseline] = {v: d for v in comp.variants if v != comp.baseline
                                     and (d := paired_differences(comp.points[v], against))}
    if comp.base_label and comp.base_points:
        comp.diffs[comp.base_label] = {v: d for v in comp.variants
                                       if (d := paired_differences(comp.points[v], comp.base_points))}
    comp.diffs = {k: v for k, v in comp.diffs.items() if v}


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
