"""``rl-div bench --methods``: each method's steady step over plain GRPO's, side by side in one run.

Issue 15's goals: arm and steer <= 1.03x grpo, novelty <= 1.10x grpo, on the ~21M-parameter Llama.
Every method runs as a fresh ``rl-div train`` of its demo config (configs/demo_<method>.yaml) with the
work of ``rl-div bench --vs-trl`` (rl_div/bench/vs_trl.py: 16 prompts x 8 samples, 4 new tokens, one
optimizer step per batch, float32, one torch thread). A round runs every method once, the order
rotated from round to round; the ratio is taken inside a round (method / that round's grpo) and
reported with min / median / max over the rounds and the load average of each run.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from rl_div.bench.vs_trl import RLDIV_STAGES, _spread, demo_model, llama_20m, run_rl_div

METHOD_CONFIGS = {"grpo": "demo_grpo.yaml", "arm": "demo_arm.yaml", "steer": "demo_steer.yaml",
                  "novelty": "demo_novelty.yaml",
                  # issue 23
                  "entropy_advantage": "demo_entropy_advantage.yaml", "repo": "demo_repo.yaml",
                  "target_entropy": "demo_target_entropy.yaml", "entropic": "demo_entropic.yaml",
                  "outcome_ucb": "demo_outcome_ucb.yaml", "dra": "demo_dra.yaml",
                  # issue 23's advantages (goal <= 1.05x grpo: reward-only, no extra forward)
                  **{m: f"demo_{m}.yaml" for m in ("w_reinforce", "nsr", "psr", "maxrl", "qae", "best_of_group",
                                                   "pkpo")}}


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
    from rl_div.bench.common import table

    print(f"\nsteady step / grpo's, {r['model']} model ({r['steps']} steps per run, {len(r['runs'])} rounds)")
    print(table(["method", "min", "median", "max"],
                 [[m, s["min"], s["median"], s["max"]] for m, s in r["ratio_to_grpo"].items()]))
    methods = list(r["runs"][0])
    rows = [[st, *(statistics.median(run[m]["stages"][st] for run in r["runs"]) for m in methods)]
            for st in RLDIV_STAGES]
    rows.append(["step", *(statistics.median(run[m]["step_seconds"] for run in r["runs"]) for m in methods)])
    print("median seconds per steady step; loads " + ", ".join(
        f"{m} {[run[m]['load'] for run in r['runs']]}" for m in methods))
    print(table(["stage", *methods], rows))


# ---- the learner's work per step, in one process: separate forward + update vs the fused update ----
def _learner_step(learner: Any, batch: Any, cfg: Any, fused: bool) -> None:
    """One step of learner work as the trainer runs it (rl_div.learner.onpolicy decides which path)."""
    from rl_div.learner.onpolicy import needs_prompt_logprobs
    from rl_div.train.advantage_stage import compute_advantages

    if not fused:
        stats = learner.policy_stats(batch, with_prompt=needs_prompt_logprobs(cfg))
        batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
        batch.prompt_logprobs, batch.ref_logprobs = stats.get("prompt_logprobs"), stats.get("ref_logprobs")
    batch.advantages, _ = compute_advantages(batch, cfg)
    if fused:
        learner.update_on_policy(batch)
    else:
        learner.update(batch)


def bench_learner_work(model: str = "demo", repeats: int = 3) -> dict[str, Any]:
    """CPU seconds (and wall seconds) of the learner's work per step on one sampled batch of the
    --vs-trl work (16 prompts x 8, 4 new tokens, one torch thread): grpo and arm with the separate
    forward (the path before issue 15), grpo / steer / arm fused (arm's shaping finished in the
    update's forward, rl_div.learner.fused_advantage), interleaved, ``repeats`` rounds.
    Process CPU time is what a loaded machine distorts least; ratios are to fused grpo per round."""
    import copy
    import os
    import time

    import torch

    from rl_div.bench.common import REPO
    from rl_div.bench.vs_trl import GROUP, NEW_TOKENS, PROMPTS, _overrides
    from rl_div.config import load_config
    from rl_div.learner.single import Learner
    from rl_div.rollout.base import SamplingSpec
    from rl_div.rollout.hf import HFRolloutWorker
    from rl_div.train.prompts import PromptStream, load_splits

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="rl_div_learner_work_"))
    path, lr = (llama_20m(work), 1e-8) if model == "20m" else (demo_model(), 1e-8)
    cases = {"grpo_separate": ("demo_grpo.yaml", False), "grpo": ("demo_grpo.yaml", True),
             "steer": ("demo_steer.yaml", True), "arm": ("demo_arm.yaml", True),
             "arm_separate": ("demo_arm.yaml", False)}
    overrides = [o for o in _overrides(path, 1, lr, str(work)) if o != "algo=grpo"]
    cfgs = {name: load_config(REPO / "configs" / config, overrides) for name, (config, _) in cases.items()}
    prompts = PromptStream(load_splits(cfgs["grpo"].data, 0)[0].records, 0).next_batch(PROMPTS)
    batch = HFRolloutWorker(path, device="cpu").generate(prompts, SamplingSpec(n=GROUP, max_new_tokens=NEW_TOKENS,
                                                                                seed=0))
    batch.rewards = (torch.arange(batch.size) % 3 == 0).float()  # mixed groups: every step has signal
    batch.correct = batch.rewards.clone()
    learners = {name: Learner(cfg, path) for name, cfg in cfgs.items()}
    rounds: list[dict[str, dict[str, float]]] = []
    names = list(cases)
    for r in range(repeats + 1):  # round 0 warms up and is dropped
        done: dict[str, dict[str, float]] = {}
        for name in names[r % len(names):] + names[: r % len(names)]:
            load, cpu, wall = os.getloadavg()[0], time.process_time(), time.perf_counter()
            _learner_step(learners[name], copy.deepcopy(batch), cfgs[name], fused=cases[name][1])
            done[name] = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall, "load": load}
        if r:
            rounds.append(done)
            print(f"[learner work round {r}/{repeats}] " + "; ".join(
                f"{n} {d['cpu_s']:.3f} cpu-s (load {d['load']:.1f})" for n, d in done.items()), flush=True)
    ratios = {f"{n}/grpo": _spread([rd[n]["cpu_s"] / rd["grpo"]["cpu_s"] for rd in rounds]) for n in names
              if n != "grpo"}
    return {"model": model, "model_path": path, "rows": batch.size, "response_tokens": batch.response_ids.shape[1],
            "rounds": rounds, "cpu_ratio": ratios,
            "cpu_seconds": {n: _spread([rd[n]["cpu_s"] for rd in rounds]) for n in names}}


def print_learner_work(r: dict[str, Any]) -> None:
    from rl_div.bench.common import table

    print(f"\nlearner work per step, {r['model']} model, {r['rows']} rows, {len(r['rounds'])} rounds "
          f"(process CPU seconds; loads {[round(d['load'], 1) for rd in r['rounds'] for d in rd.values()]})")
    rows = []
    for n, cpu in r["cpu_seconds"].items():
        ratio = r["cpu_ratio"].get(f"{n}/grpo", {"min": 1.0, "median": 1.0, "max": 1.0})
        rows.append([n, cpu["median"], ratio["min"], ratio["median"], ratio["max"]])
    print(table(["case", "cpu s median", "/ fused grpo: min", "median", "max"], rows))
