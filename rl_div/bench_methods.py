"""``rl-div bench --methods``: each method's steady step over plain GRPO's, side by side in one run.

Issue 15's goals: arm and steer <= 1.03x grpo, novelty <= 1.10x grpo, on the ~21M-parameter Llama.
Every method runs as a fresh ``rl-div train`` of its demo config (configs/demo_<method>.yaml) with the
work of ``rl-div bench --vs-trl`` (rl_div/bench_trl.py: 16 prompts x 8 samples, 4 new tokens, one
optimizer step per batch, float32, one torch thread). A round runs every method once, the order
rotated from round to round; the ratio is taken inside a round (method / that round's grpo) and
reported with min / median / max over the rounds and the load average of each run.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from rl_div.bench_trl import RLDIV_STAGES, _spread, demo_model, llama_20m, run_rl_div

METHOD_CONFIGS = {"grpo": "demo_grpo.yaml", "arm": "demo_arm.yaml", "steer": "demo_steer.yaml",
                  "novelty": "demo_novelty.yaml"}


def bench_methods(methods: tuple[str, ...] = ("grpo", "arm", "steer", "novelty"), rounds: int = 2,
                  model: str = "20m", steps: int = 6, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Rounds of one fresh run per method; ratios method / grpo per round (lr 1e-8 on the 20M model,
    so every method generates the same lengths; 1e-3 on the demo model)."""
    unknown = [m for m in methods if m not in METHOD_CONFIGS]
    if unknown or "grpo" not in methods:
        raise ValueError(f"--methods: give grpo and any of {sorted(METHOD_CONFIGS)}; unknown: {unknown}")
    work = Path(work_dir or tempfile.mkdtemp(prefix="rl_div_methods_"))
    work.mkdir(parents=True, exist_ok=True)
    path, lr = (llama_20m(work), 1e-8) if model == "20m" else (demo_model(), 1e-3)
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        done = {m: run_rl_div(path, steps, lr, work, config=METHOD_CONFIGS[m]) for m in order}
        runs.append(done)
        print(f"[round {r + 1}/{rounds}] " + "; ".join(
            f"{m} {done[m]['step_seconds']:.3f}s (load {done[m]['load'][0]:.1f}-{done[m]['load'][1]:.1f})"
            for m in methods), flush=True)
    ratios = {m: _spread([run[m]["step_seconds"] / run["grpo"]["step_seconds"] for run in runs])
              for m in methods if m != "grpo"}
    return {"work_dir": str(work), "model": model, "model_path": path, "steps": steps, "lr": lr, "runs": runs,
            "ratio_to_grpo": ratios}


def print_methods(r: dict[str, Any]) -> None:
    from rl_div.bench import _table

    print(f"\nsteady step / grpo's, {r['model']} model ({r['steps']} steps per run, {len(r['runs'])} rounds)")
    print(_table(["method", "min", "median", "max"],
                 [[m, s["min"], s["median"], s["max"]] for m, s in r["ratio_to_grpo"].items()]))
    methods = list(r["runs"][0])
    rows = [[st, *(statistics.median(run[m]["stages"][st] for run in r["runs"]) for m in methods)]
            for st in RLDIV_STAGES]
    rows.append(["step", *(statistics.median(run[m]["step_seconds"] for run in r["runs"]) for m in methods)])
    print("median seconds per steady step; loads " + ", ".join(
        f"{m} {[run[m]['load'] for run in r['runs']]}" for m in methods))
    print(_table(["stage", *methods], rows))
