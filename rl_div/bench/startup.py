"""``startup`` bench section: where the demo's start-up goes, from launch to the end of its first training step.

Each run is a fresh ``rl-div train configs/demo.yaml`` process (the demo as a user starts it: step-0
evaluation included, the bootstrapped base model already cached), stopped after one step. The phases
come from the run's own records, relative to the launch: train.log's first line (the CLI's imports,
the config checks and the Ray start are behind it), each actor's ``started after`` line (process,
imports, model load; rl_div.cluster.actors.wait_started), the step-0 evaluation's and the first step's
rows in metrics.jsonl (each row's wall ``time``). The imports alone are timed in fresh interpreters:
``import rl_div.cli`` (what every command pays) and ``import rl_div.train.loop`` (torch, transformers,
Ray). Modes: a separate rollout actor (the default) and ``rollout.colocate``; with ``baseline`` (another
checkout, e.g. main's) its default mode runs in every round too, for before/after side by side. Rounds
are rotated, and each run records the load average at its launch.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rl_div.bench.common import REPO

MODES = {"separate": [], "colocated": ["rollout.colocate=true"]}
IMPORTS = {"import rl_div.cli": "import rl_div.cli", "import rl_div.train.loop": "import rl_div.train.loop"}
PHASES = ("trainer_start", "actors_ready", "eval_step0_done", "first_step_done", "exit")


def _env(repo: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}


def import_seconds(repo: Path = REPO) -> dict[str, float]:
    """Wall seconds of each import in IMPORTS, in a fresh interpreter (its own start-up subtracted)."""
    def timed(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=_env(repo), cwd=repo, check=True)
        return time.perf_counter() - start

    bare = timed("pass")
    return {name: timed(code) - bare for name, code in IMPORTS.items()}


def log_times(log_file: Path) -> tuple[float, dict[str, float]]:
    """train.log -> (epoch time of its first line, {actor: epoch time of its 'started after' line})."""
    first, actors = None, {}
    for line in log_file.read_text().splitlines():
        try:
            stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        first = stamp if first is None else first
        message = line[24:].split(" ", 1)[-1]
        if " started after " in message:
            actors[message.split(" started after ")[0]] = stamp
    assert first is not None, f"{log_file} holds no log line"
    return first, actors


def run_once(mode: str, work: Path, repo: Path = REPO) -> dict[str, Any]:
    """One fresh demo run of one step; seconds from launch to each phase (PHASES), per actor, and the load."""
    out = work / f"{mode}_{time.time_ns()}"
    cmd = [sys.executable, "-m", "rl_div.cli", "train", str(repo / "configs" / "demo.yaml"), "train.steps=1",
           "checkpoint.every=0", "eval.at_end=false", "tracking.progress=false", "tracking.tensorboard=false",
           f"run.output_dir={out}", *MODES[mode]]
    load = os.getloadavg()[0]
    launch = time.time()
    with (work / f"{out.name}.log").open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(repo), cwd=repo, check=False)
    exit_s = time.time() - launch
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} start-up run failed (exit {proc.returncode}); see {work / f'{out.name}.log'}")
    first, actors = log_times(out / "train.log")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    eval0 = next(r for r in rows if r.get("kind") == "eval" and r["step"] == 0)
    step1 = next(r for r in rows if r.get("kind", "train") == "train" and r["step"] == 1)
    # a checkout from before the per-actor log lines (a baseline) has none: its actors_ready is NaN
    ready = max(actors.values()) - launch if actors else math.nan
    phases = {"trainer_start": first - launch, "actors_ready": ready,
              "eval_step0_done": eval0["time"] - launch, "first_step_done": step1["time"] - launch, "exit": exit_s}
    return {"mode": mode, "load": load, "phases": phases, "actors": {k: v - launch for k, v in actors.items()},
            "eval_rollout_s": eval0.get("time/eval_rollout"), "first_step_s": sum(
                v for k, v in step1.items() if k.startswith("time/"))}


def bench_startup(repeats: int = 3, baseline: str | Path | None = None,
                  work_dir: str | Path | None = None) -> dict[str, Any]:
    """``repeats`` rounds, each running every mode once (order rotated per round); min/median/max of
    every phase per mode, and the imports in fresh interpreters."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="rl_div_startup_"))
    work.mkdir(parents=True, exist_ok=True)
    sides = [(m, REPO) for m in MODES] + ([("separate", Path(baseline))] if baseline else [])
    names = [m if r == REPO else f"baseline {m}" for m, r in sides]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for i in range(repeats):
        order = list(range(len(sides)))
        order = order[i % len(order):] + order[: i % len(order)]
        for j in order:
            mode, repo = sides[j]
            runs[names[j]].append(run_once(mode, work, repo))
            print(f"[startup round {i + 1}/{repeats}] {names[j]}: first step done "
                  f"{runs[names[j]][-1]['phases']['first_step_done']:.1f} s after launch "
                  f"(load {runs[names[j]][-1]['load']:.2f})", flush=True)
    summary = {n: {p: spread([r["phases"][p] for r in rs]) for p in PHASES} for n, rs in runs.items()}
    imports = {"current": import_seconds(REPO), **({"baseline": import_seconds(Path(baseline))} if baseline else {})}
    return {"repeats": repeats, "runs": runs, "phases": summary, "imports": imports, "cpus": os.cpu_count(),
            "baseline": str(baseline) if baseline else None}


def spread(values: list[float]) -> dict[str, float]:
    """min/median/max of the values that were measured (NaN: not measured)."""
    values = [v for v in values if not math.isnan(v)] or [math.nan]
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def print_startup(r: dict[str, Any]) -> None:
    from rl_div.bench.common import table

    print(f"\nstart-up of the demo, seconds after launch (fresh processes, {r['repeats']} rounds; min/median/max)")
    rows = [[name, phase, s["min"], s["median"], s["max"]] for name, phases in r["phases"].items()
            for phase, s in phases.items()]
    print(table(["run", "phase", "min", "median", "max"], rows))
    print("loads at launch: " + "; ".join(f"{n} {[round(x['load'], 2) for x in rs]}" for n, rs in r["runs"].items()))
    print(table(["checkout", "import", "seconds"], [[side, name, s] for side, imp in r["imports"].items()
                                                    for name, s in imp.items()]))
