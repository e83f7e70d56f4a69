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
from rl_div.config import Config
from rl_div.data import PromptRecord
from rl_div.metrics.large_k import maj_credit, pass_hat_k
from rl_div.metrics.passk import default_ks
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
    out = []
    for name in cfg.eval.benchmarks:
        bench = load_benchmark(name, b.root, path=b.paths.get(name), hub=b.hub, limit=cfg.eval.benchmark_limit)
        records = benchmark_records(bench, b.prompt_style, b.instruction, b.extractor, b.chat)
        out.append(BenchmarkPrompts(name, records, benchmark_sampling(cfg, name, bench.sampling), len(bench.skipped)))
    return out


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


def evaluate_benchmarks(trainer: Any, step: int) -> dict[str, float]:
    """Sample, score (benchmark_verify, through the record's verifier) and summarise every benchmark;
    writes eval/<benchmark>/step_<step>.json and returns ``eval/<benchmark>/<metric>`` values."""
    out: dict[str, float] = {}
    for bench in trainer.benchmarks:
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
    return out
