"""``rl-div bench --sections parity``: verifier parity on real gold, every row of every benchmark.

Each case (rl_div.benchmarks.parity: reference solutions, golds, equivalent and wrong forms) is
scored through ``rewards.RewardScorer`` in the isolated worker with its real timeout, once by
``benchmark_verify`` (what benchmark evaluation uses) and, for the reference solutions, once by the
whole-completion ``math_verify`` reward (what training used before). The README's parity table is
this section's output. Needs the benchmark folder: ``RL_DIV_BENCHMARKS`` or ../shared/data/benchmarks.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rl_div.bench.common import REPO, table

SETS = ("aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench", "gsm8k")
KINDS = ("solution", "gold", "equivalent", "wrong")


def benchmarks_root() -> Path:
    """$RL_DIV_BENCHMARKS, else the first ../shared/data/benchmarks above the repository."""
    env = os.environ.get("RL_DIV_BENCHMARKS")
    above = (REPO.parent, REPO.parent.parent)
    candidates = [Path(env)] if env else [p / "shared" / "data" / "benchmarks" for p in above]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"no benchmark folder (looked in {[str(c) for c in candidates]}); set RL_DIV_BENCHMARKS")


def _score(reward: str, cases: list[Any], timeout_s: float, workers: int) -> tuple[list[float], dict[str, int], float]:
    from rewards import RewardScorer, RewardSpec

    with RewardScorer([RewardSpec(reward)], timeout_s=timeout_s, workers=workers, items_per_call=64) as scorer:
        start = time.perf_counter()
        result = scorer.score([c.completion for c in cases], [c.record for c in cases], list(range(len(cases))))
        return result.correct, result.errors, time.perf_counter() - start


def bench_parity(sets: tuple[str, ...] = SETS, every: int = 1, timeout_s: float = 10.0, workers: int = 1,
                 root: str | Path | None = None) -> dict[str, Any]:
    """Per set and kind: cases, agreements with the known verdict, timeouts, errors, disagreements."""
    from rl_div.benchmarks.parity import parity_cases

    base = Path(root) if root is not None else benchmarks_root()
    out: dict[str, Any] = {"every": every, "timeout_s": timeout_s, "workers": workers, "sets": {}}
    for name in sets:
        cases = parity_cases(name, base, every=every)
        got, errors, seconds = _score("benchmark_verify", cases, timeout_s, workers)
        agree, total = Counter(), Counter()
        disagreements = []
        for case, score in zip(cases, got, strict=True):
            total[case.kind] += 1
            if score == case.expected:
                agree[case.kind] += 1
            else:
                disagreements.append({"kind": case.kind, "uid": case.record.uid, "got": score,
                                      "golds": case.record.meta["golds"], "completion_tail": case.completion[-80:]})
        entry = {"cases": len(cases), "seconds": seconds, "responses_per_s": len(cases) / seconds,
                 "agree": dict(agree), "total": dict(total), "timeouts": errors.get("benchmark_verify/timeouts", 0),
                 "errors": errors.get("benchmark_verify/errors", 0), "disagreements": disagreements}
        solutions = [c for c in cases if c.kind == "solution"]
        if solutions:  # the whole-completion reward on the same solutions, for comparison
            mv, mv_errors, _ = _score("math_verify", solutions, timeout_s, workers)
            entry["math_verify_solutions"] = {"accepted": sum(1 for s in mv if s == 1.0), "total": len(solutions),
                                              "timeouts": mv_errors.get("math_verify/timeouts", 0)}
        out["sets"][name] = entry
    return out


def print_parity(r: dict[str, Any]) -> None:
    print(f"\nverifier parity on real gold (benchmark_verify, isolated, {r['workers']} worker, "
          f"timeout {r['timeout_s']:g} s, every {r['every']} row)")
    rows = []
    for name, e in r["sets"].items():
        cells = [f"{e['agree'].get(k, 0)}/{e['total'][k]}" if k in e["total"] else "-" for k in KINDS]
        mv = e.get("math_verify_solutions")
        old = f"{mv['accepted']}/{mv['total']} ({mv['timeouts']} t/o)" if mv else "-"
        rows.append([name, *cells, e["timeouts"], e["errors"], old, f"{e['responses_per_s']:.0f}"])
    print(table(["set", *KINDS, "timeouts", "errors", "math_verify on solutions", "responses/s"], rows))
    for name, e in r["sets"].items():
        for d in e["disagreements"]:
            print(f"  {name} {d['kind']} {d['uid']}: got {d['got']}, golds {d['golds']}, ...{d['completion_tail']!r}")
