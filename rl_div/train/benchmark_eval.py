"""Evaluation on the standard benchmarks (``eval.benchmarks``), beside the held-out split: each
benchmark's prompts as the field writes them, its own sampling, ``benchmark_verify`` scoring, and the
large-k metrics logged as ``eval/<benchmark>/<metric>``.

Per-problem results are kept small: answers as counts (with how many of them were correct) and each
problem's majority-vote credit per k, never the response texts; that is all the paired comparison
of ``rl-div eval`` needs (pass@k from n and c, maj@k per problem).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from rl_div.benchmarks import benchmark_records, load_benchmark
from rl_div.benchmarks.verbalized import parse_vs
from rl_div.config import Config
from rl_div.data import PromptRecord
from rl_div.metrics.large_k import maj_credit, pass_hat_k
from rl_div.metrics.passk import default_ks, pass_at_k_curve
from rl_div.rollout.base import SamplingSpec
from rl_div.run.checkpoint import write_text_atomic
from rl_div.train.step_stats import eval_summary


@dataclass
class BenchmarkPrompts:
    """One benchmark ready to sample: its records, sampling and skipped-row count."""

    name: str
    records: list[PromptRecord]
    spec: SamplingSpec
    skipped_rows: int


def benchmark_sampling(cfg: Config, name: str, defaults: Any) -> SamplingSpec:
    """The benchmark's sampling: benchmarks.sampling.<name>, else the benchmark's own defaults."""
    own = cfg.benchmarks.sampling.get(name)

    def pick(field: str) -> Any:
        value = getattr(own, field) if own is not None else None
        return getattr(defaults, field) if value is None else value

    return SamplingSpec(n=pick("n"), temperature=pick("temperature"), top_p=pick("top_p"), top_k=0,
                        max_new_tokens=pick("max_new_tokens"), stop=list(cfg.rollout.stop), seed=cfg.run.seed + 7_919)


def load_benchmark_prompts(cfg: Config) -> list[BenchmarkPrompts]:
    """Every benchmark of ``eval.benchmarks`` (the first eval.benchmark_limit problems of each)."""
    b = cfg.benchmarks
    vs = b.vs_candidates if b.strategy == "vs" else None
    out = []
    for name in cfg.eval.benchmarks:
        bench = load_benchmark(name, b.root, path=b.paths.get(name), hub=b.hub, limit=cfg.eval.benchmark_limit)
        records = benchmark_records(bench, b.prompt_style, b.instruction, b.extractor, b.chat, vs_candidates=vs)
        spec = benchmark_sampling(cfg, name, bench.sampling)
        if vs is not None:  # n samples = n // k generations of k candidates each
            spec = dataclasses.replace(spec, n=max(1, spec.n // vs))
        out.append(BenchmarkPrompts(name, records, spec, len(bench.skipped)))
    return out


def expand_vs(texts: list[str], records: list[PromptRecord], group_index: list[int],
              k: int) -> tuple[list[str], list[PromptRecord], list[int], dict[str, float]]:
    """Each Verbalized Sampling generation as its k candidates (rows [B] -> [B * k], groups kept), and
    the counts of malformed, missing and extra candidates (rl_div.benchmarks.verbalized.parse_vs)."""
    out_texts: list[str] = []
    counts = {"vs/malformed": 0.0, "vs/missing": 0.0, "vs/extra": 0.0}
    for text in texts:
        parsed = parse_vs(text, k)
        out_texts += parsed.texts
        counts["vs/malformed"] += parsed.malformed
        counts["vs/missing"] += parsed.missing
        counts["vs/extra"] += parsed.extra
    return (out_texts, [r for r in records for _ in range(k)], [g for g in group_index for _ in range(k)], counts)


def vs_problems(records: list[PromptRecord], group_index: list[int], correct: list[float],
                answers: list[str | None]) -> list[dict[str, Any]]:
    """eval_summary-style problem rows (uid, n, c, answers, correct) of expanded VS samples; a
    candidate whose verifier failed (NaN) is left out of n and c, as eval_summary does."""
    rows: dict[int, dict[str, Any]] = {}
    for record, g, ok, answer in zip(records, group_index, correct, answers, strict=True):
        row = rows.setdefault(g, {"uid": record.uid, "n": 0, "c": 0, "answers": [], "correct": []})
        if ok != ok:  # NaN: unscored
            continue
        row["n"] += 1
        row["c"] += int(ok == 1.0)
        row["answers"].append(answer)
        row["correct"].append(ok == 1.0)
    return [rows[g] for g in sorted(rows) if rows[g]["n"]]


def vs_metrics(trainer: Any, bench: BenchmarkPrompts) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Sample VS generations, read their candidates as samples, score them; pass@k, the large-k metrics,
    distinct answers and the parse counts (no token-level metrics: candidates share one generation)."""
    k = int(bench.records[0].meta["vs_candidates"])
    batch = trainer.pipeline.generate(bench.records, bench.spec, salt=0)
    texts, records, groups, counts = expand_vs(batch.response_texts, batch.prompts, batch.group_index.tolist(), k)
    result = trainer.call_reward_actor("score_verified", (texts, records, groups))
    if result is None:
        return {"eval/unscored": float(len(texts)), **counts}, []
    problems = vs_problems(records, groups, list(result.correct), list(result.answers))
    if not problems:
        return {"eval/unscored": float(len(texts)), **counts}, []
    n, c = np.array([p["n"] for p in problems]), np.array([p["c"] for p in problems])
    metrics: dict[str, float] = {f"pass@{kk}": v for kk, v in pass_at_k_curve(n, c).items()}
    metrics["div/distinct_answers"] = float(np.mean([len({a for a in p["answers"] if a}) for p in problems]))
    metrics["div/distinct_correct_answers"] = float(np.mean(
        [len({a for a, ok in zip(p["answers"], p["correct"], strict=True) if ok and a}) for p in problems]))
    metrics["eval/unscored"] = float(sum(1 for x in result.correct if x != x))
    return {**metrics, **counts}, problems


def large_k_summary(problems: list[dict[str, Any]]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """avg@n, pass^k and maj@k for k = 1, 2, 4, ..., n over eval_summary's problem rows, and those rows
    made small (answer counts, per-k majority credit; no texts).

    problems: rows with n, c, answers and correct (scored samples only). Returns (metrics, rows).
    """
    n = np.array([p["n"] for p in problems])
    c = np.array([p["c"] for p in problems])
    ks = default_ks(int(n.min()))
    metrics = {"avg@n": float(np.mean(c / n))}
    small = []
    for p in problems:
        counts: dict[str, list[int]] = {}
        for answer, ok in zip(p["answers"], p["correct"], strict=True):
            entry = counts.setdefault(str(answer) if answer is not None else "", [0, 0])
            entry[0] += 1
            entry[1] += int(bool(ok))
        k_votes = {str(k): maj_credit(p["answers"], p["correct"], k) for k in ks}
        small.append({"uid": p["uid"], "n": p["n"], "c": p["c"], "answer_counts": counts, "maj": k_votes})
    for k in ks:
        metrics[f"maj@{k}"] = float(np.mean([row["maj"][str(k)] for row in small]))
        metrics[f"pass^{k}"] = float(np.mean(pass_hat_k(n, c, k)))
    return metrics, small


Evaluation = tuple[dict[str, Any], list[dict[str, Any]]]  # (metrics, per-problem rows with n and c)


def guard_view(cfg: Config, held_out: Evaluation, each_benchmark: dict[str, Evaluation]) -> Evaluation:
    """What the collapse guard watches: the held-out split, or with guard.benchmark that benchmark's
    own metrics (pass@k, distinct correct answers) and problems."""
    return each_benchmark[cfg.guard.benchmark] if cfg.guard.benchmark else held_out


def evaluate_benchmarks(trainer: Any, step: int) -> tuple[dict[str, float], dict[str, Evaluation]]:
    """Sample, score (benchmark_verify, through the record's verifier) and summarise every benchmark;
    writes eval/<benchmark>/step_<step>.json and returns the ``eval/<benchmark>/<metric>`` values and
    each benchmark's own (metrics, problems)."""
    out: dict[str, float] = {}
    each: dict[str, Evaluation] = {}
    for bench in trainer.benchmarks:
        if bench.records and "vs_candidates" in bench.records[0].meta:
            metrics, problems = vs_metrics(trainer, bench)
        else:
            batch = trainer.pipeline.generate(bench.records, bench.spec, salt=0)
            batch = trainer.score(batch, counter_prefix="eval/", method="score_verified")
            batch = trainer.policy_stats(batch, temperature=bench.spec.temperature)
            metrics, problems = eval_summary(batch, None, trainer.vocab_size, trainer.tokenize)
        if problems:
            large, problems = large_k_summary(problems)
            metrics.update(large)
        metrics["skipped_rows"] = float(bench.skipped_rows)
        folder = trainer.out / "eval" / bench.name
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / f"step_{step:06d}.json", json.dumps(
            {"step": step, "benchmark": bench.name, "sampling": dataclasses.asdict(bench.spec),
             "metrics": metrics, "problems": problems}))
        out.update({f"eval/{bench.name}/{k.removeprefix('eval/')}": float(v) for k, v in metrics.items()
                    if isinstance(v, (int, float))})
        each[bench.name] = (metrics, problems)
    return out, each
