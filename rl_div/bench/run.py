"""``rl-div bench``: speed and memory, always as ratios measured side by side in one run.

Absolute timings depend on the machine and on whatever else shares its cores, so every number here
is paired with its baseline from the same run (chunked vs naive entropy, vectorised vs looped pass@k)
or given as a share of the whole (one training step's stages). Tests check only the numerical
agreement fields, never a timing.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rl_div.bench import SECTIONS
from rl_div.bench.micro import (
    bench_entropy,
    bench_group_embedding,
    bench_passk,
    bench_train_step,
    print_entropy,
    print_group_embedding,
    print_passk,
    print_train_step,
)


def _sections(quick: bool, baseline: str | None = None,
              ) -> dict[str, tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None]]]:
    """Section name -> (run, print). The realistic-workload sections live in rl_div.bench.workload;
    baseline: another checkout that the sections comparing before/after (startup) also run."""
    from rl_div.bench import async_rollout as a
    from rl_div.bench import dynamic_sampling as d
    from rl_div.bench import methods as m
    from rl_div.bench import workload as w
    from rl_div.bench.fsdp import bench_fsdp, print_fsdp
    from rl_div.bench.large_k import bench_large_k, print_large_k
    from rl_div.bench.lora import bench_lora, print_lora
    from rl_div.bench.packing import bench_packing, print_packing
    from rl_div.bench.parity import bench_parity, print_parity
    from rl_div.bench.startup import bench_startup, print_startup
    from rl_div.bench.sync import bench_sync, print_sync
    from rl_div.bench.trim import bench_trim, print_trim

    return {
        "entropy": ((lambda: bench_entropy(rows=1024, seq_len=256, vocab=8000, chunk_rows=256, repeats=2))
                    if quick else bench_entropy, print_entropy),
        "passk": (lambda: bench_passk(problems=1000 if quick else 10_000), print_passk),
        "train_step": (lambda: bench_train_step(steps=3 if quick else 10), print_train_step),
        "group_embedding": (lambda: bench_group_embedding(repeats=2 if quick else 5), print_group_embedding),
        "lm_head": ((lambda: w.bench_lm_head(rows=2, tokens=256, hidden=256, repeats=2)) if quick
                    else w.bench_lm_head, w.print_lm_head),
        "rewards": ((lambda: w.bench_rewards(n_items=200, repeats=2)) if quick else w.bench_rewards,
                    w.print_rewards),
        "scoring": ((lambda: w.bench_benchmark_scoring(every=8, repeats=2)) if quick else w.bench_benchmark_scoring,
                    w.print_rewards),
        "long_step": ((lambda: w.bench_long_step(new_tokens=256, prompts=2, group_size=2, repeats=1)) if quick
                      else w.bench_long_step, w.print_long_step),
        "learner_work": (lambda: m.bench_learner_work("demo", repeats=1 if quick else 3), m.print_learner_work),
        "learner_work_20m": (lambda: m.bench_learner_work("20m", repeats=1 if quick else 3), m.print_learner_work),
        "fsdp": (lambda: bench_fsdp(repeats=3 if quick else 10), print_fsdp),
        "fsdp_50m": (lambda: bench_fsdp(repeats=1 if quick else 5, size="50m"), print_fsdp),
        "sync": (lambda: bench_sync("demo", repeats=2 if quick else 5), print_sync),
        "sync_50m": (lambda: bench_sync("50m", repeats=1 if quick else 5), print_sync),
        "off_policy": ((lambda: a.bench_off_policy(steps=2, warmup=1, settings=["demo"])) if quick
                       else a.bench_off_policy, a.print_off_policy),
        "dynamic_sampling": ((lambda: d.bench_dynamic_sampling(steps=2, warmup=1)) if quick
                             else d.bench_dynamic_sampling, d.print_dynamic_sampling),
        "lora": (lambda: bench_lora("20m", repeats=1 if quick else 3), print_lora),
        "lora_50m": (lambda: bench_lora("50m", repeats=1 if quick else 3), print_lora),
        "trim": (lambda: bench_trim(repeats=2 if quick else 5), print_trim),
        "packing": (lambda: bench_packing(rounds=1 if quick else 3), print_packing),
        "parity": (lambda: bench_parity(every=8 if quick else 1), print_parity),
        "large_k": (lambda: bench_large_k(problems=500 if quick else 5000, repeats=2 if quick else 5), print_large_k),
        "startup": (lambda: bench_startup(repeats=1 if quick else 3, baseline=baseline), print_startup),
    }




def run_bench(quick: bool = False, out: str | Path | None = None,
              sections: list[str] | None = None, baseline: str | None = None) -> dict[str, Any]:
    """The selected benchmarks (default: all; smaller in quick mode), printed as tables and written
    to ``out`` as JSON (baseline: see _sections)."""
    table = _sections(quick, baseline)
    chosen = list(sections or SECTIONS)
    unknown = [s for s in chosen if s not in table]
    if unknown:
        from rl_div.config import ConfigError

        raise ConfigError(f"unknown bench section(s) {unknown} (valid: {', '.join(SECTIONS)})")
    result: dict[str, Any] = {
        "quick": quick, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "platform": platform.platform(), "sections": chosen,
    }
    for name in chosen:
        run, show = table[name]
        result[name] = run()
        show(result[name])
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"\nwrote {out}")
    return result
