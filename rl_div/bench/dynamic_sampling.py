"""``rl-div bench --sections dynamic_sampling``: what dynamic sampling costs and buys on the demo.

A Trainer on configs/demo.yaml runs ``steps`` timed train_step() calls with rollout.dynamic_sampling
= off and then = filter (after ``warmup`` untimed steps each), one after the other in the same
process. Reported per mode: step wall seconds and seconds per informative group trained (step seconds
/ sampling/groups_kept; a step without one is left out and counted), min/median/max, the rounds drawn
per step, and the 1-minute load average before and after (this machine's other jobs share its cores).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

from rl_div.bench.common import REPO, table

MODES = ("off", "filter")


def _mode_times(mode: str, steps: int, warmup: int, max_rounds: int, overrides: list[str],
                ) -> dict[str, list[float]]:
    """Per timed step: wall seconds, informative groups trained, rounds drawn."""
    import ray

    from rl_div.config import load_config
    from rl_div.train.loop import Trainer

    with tempfile.TemporaryDirectory(prefix="rl_div_bench_dynamic_") as tmp:
        cfg = load_config(REPO / "configs" / "demo.yaml",
                          [f"run.output_dir={tmp}", "eval.at_start=false", "eval.at_end=false", "eval.every=0",
                           "tracking.progress=false", "tracking.tensorboard=false", "checkpoint.every=0",
                           f"train.steps={steps + warmup}", f"rollout.dynamic_sampling={mode}",
                           f"rollout.dynamic_sampling_max_rounds={max_rounds}", *overrides])
        trainer = Trainer(cfg)
        out: dict[str, list[float]] = {"seconds": [], "kept": [], "rounds": []}
        try:
            for i in range(steps + warmup):
                start = time.perf_counter()
                metrics = trainer.train_step()
                if i >= warmup:
                    out["seconds"].append(time.perf_counter() - start)
                    out["kept"].append(float(metrics["sampling/groups_kept"]))
                    out["rounds"].append(float(metrics["sampling/rounds"]))
        finally:
            trainer.close()
            ray.shutdown()
    return out


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else {}


def bench_dynamic_sampling(steps: int = 8, warmup: int = 2, max_rounds: int = 4,
                           overrides: list[str] | None = None) -> dict[str, Any]:
    """Per mode: step seconds and seconds per informative group (min/median/max), rounds per step.
    overrides: config overrides on top of configs/demo.yaml (e.g. model.path of a cached base model)."""
    overrides = list(overrides or [])
    out: dict[str, Any] = {"steps": steps, "warmup": warmup, "max_rounds": max_rounds, "overrides": overrides,
                           "modes": {}}
    for mode in MODES:
        load_before = os.getloadavg()[0]
        got = _mode_times(mode, steps, warmup, max_rounds, overrides)
        per_group = [s / k for s, k in zip(got["seconds"], got["kept"], strict=True) if k > 0]
        out["modes"][mode] = {"step_seconds": _spread(got["seconds"]), "seconds_per_informative_group":
                              _spread(per_group), "steps_without_informative_group": len(got["kept"]) - len(per_group),
                              "rounds": _spread(got["rounds"]), "informative_groups": _spread(got["kept"]),
                              "raw": got, "load_avg_1min_before": load_before,
                              "load_avg_1min_after": os.getloadavg()[0]}
    return out


def print_dynamic_sampling(r: dict[str, Any]) -> None:
    print(f"\ndynamic_sampling: configs/demo.yaml, {r['steps']} steps after {r['warmup']} warm-up, "
          f"filter with max_rounds {r['max_rounds']}, overrides {r.get('overrides', [])}")
    rows = []
    for mode, m in r["modes"].items():
        step, per = m["step_seconds"], m["seconds_per_informative_group"]
        rows.append([mode, step["min"], step["median"], step["max"], per.get("min", "-"), per.get("median", "-"),
                     per.get("max", "-"), m["rounds"]["median"], m["informative_groups"]["median"],
                     f"{m['load_avg_1min_before']:.1f} -> {m['load_avg_1min_after']:.1f}"])
    print(table(["mode", "step min s", "median", "max", "s/informative group min", "median", "max",
                 "rounds median", "informative groups median", "load avg"], rows))
