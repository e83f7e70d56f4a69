"""``rl-div bench --sections off_policy``: step time with rollouts one step ahead vs the synchronous loop.

For each setting (the demo, and a longer-generation one where rollout and update take similar time)
a Trainer runs ``steps`` timed train_step() calls with rollout.max_off_policy_steps = 0 and then = 1
(after ``warmup`` untimed steps each), one after the other in the same process. Reported: per-step
wall seconds min/median/max per lag, the ratio of the medians (lag 1 / lag 0), and the 1-minute
load average before and after, since this machine's other jobs share its cores.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rl_div.bench.common import REPO, table

SETTINGS: dict[str, list[str]] = {
    "demo": [],
    # longer responses, fewer prompts: sampling 48 tokens one at a time costs about what the update does
    "long_generation": ["rollout.max_new_tokens=48", "rollout.prompts_per_step=8", "rollout.stop=[]"],
}


STAGES = ("rollout", "reward", "learner_forward", "learner_update", "sync")


def _step_times(overrides: list[str], lag: int, steps: int, warmup: int) -> tuple[list[float], dict[str, float]]:
    """Wall seconds of each timed step, and the median seconds of each stage (time/<stage>)."""
    import ray

    from rl_div.config import load_config
    from rl_div.train.loop import Trainer

    with tempfile.TemporaryDirectory(prefix="rl_div_bench_async_") as tmp:
        cfg = load_config(REPO / "configs" / "demo.yaml",
                          [f"run.output_dir={tmp}", "eval.at_start=false", "eval.at_end=false", "eval.every=0",
                           "tracking.progress=false", "tracking.tensorboard=false", "checkpoint.every=0",
                           f"train.steps={steps + warmup}", f"rollout.max_off_policy_steps={lag}", *overrides])
        trainer = Trainer(cfg)
        times, stages = [], {s: [] for s in STAGES}
        try:
            for i in range(steps + warmup):
                start = time.perf_counter()
                metrics = trainer.train_step()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
                    for s in STAGES:
                        stages[s].append(float(metrics[f"time/{s}"]))
        finally:
            trainer.close()
            ray.shutdown()
    return times, {s: statistics.median(v) for s, v in stages.items()}


def bench_off_policy(steps: int = 6, warmup: int = 2, settings: list[str] | None = None) -> dict[str, Any]:
    """Per setting and lag: step seconds min/median/max, and median(lag 1) / median(lag 0)."""
    out: dict[str, Any] = {"steps": steps, "warmup": warmup, "settings": {}}
    for name in settings or list(SETTINGS):
        load_before = os.getloadavg()[0]
        per_lag = {lag: _step_times(SETTINGS[name], lag, steps, warmup) for lag in (0, 1)}
        stats = {str(lag): {"min": min(t), "median": statistics.median(t), "max": max(t), "all": t,
                            "median_stage_seconds": st} for lag, (t, st) in per_lag.items()}
        out["settings"][name] = {"overrides": SETTINGS[name], "seconds": stats,
                                 "ratio_median_lag1_over_lag0": stats["1"]["median"] / stats["0"]["median"],
                                 "load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0]}
    return out


def print_off_policy(r: dict[str, Any]) -> None:
    print(f"\noff_policy: step seconds, rollout.max_off_policy_steps 0 vs 1, {r['steps']} steps after "
          f"{r['warmup']} warm-up ({Path(REPO / 'configs' / 'demo.yaml').name} + overrides)")
    rows = []
    for name, s in r["settings"].items():
        for lag in ("0", "1"):
            t = s["seconds"][lag]
            rows.append([name, lag, t["min"], t["median"], t["max"],
                         f"{s['ratio_median_lag1_over_lag0']:.3f}" if lag == "1" else "",
                         f"{s['load_avg_1min_before']:.1f} -> {s['load_avg_1min_after']:.1f}"])
    print(table(["setting", "lag", "min s", "median s", "max s", "lag1/lag0", "load avg"], rows))
    stage_rows = [[name, lag, *[s["seconds"][lag]["median_stage_seconds"][st] for st in STAGES]]
                  for name, s in r["settings"].items() for lag in ("0", "1")]
    print("median stage seconds (with lag 1, rollout is the wait for a batch launched a step earlier, and sync "
          "includes the wait for the one in flight)")
    print(table(["setting", "lag", *STAGES], stage_rows))
