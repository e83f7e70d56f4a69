"""``rl-div bench --methods M,M --interleave``: each method's training-step work over GRPO's, the methods
interleaved step by step in one process and timed in process CPU seconds.

Why not fresh ``rl-div train`` runs (rl_div/bench/methods.py) on a shared machine: a run lasts minutes,
the load moves between the runs of one round, and wall time counts the other users' time slices, so the
per-round ratios of 6-step runs spread 0.96-1.36 for methods whose extra work is a few milliseconds.
Here every round runs one step of every method back to back on the same sampled batch (the order rotated
from round to round) and times each with ``time.process_time`` (one torch thread, rewards in-process):
CPU seconds do not count the time other processes hold the cores. Each ratio is method / grpo in the
same round; min / median / max over the rounds after a dropped warm-up round, with the load average.

One step of a method, as the trainer runs it minus Ray: its rewards (RewardScorer in-process, a stateful
reward's tables kept across rounds), the separate pi_old forward where the method needs it, its
advantage and the update (fused or not: rl_div.learner.onpolicy), then its collapse guard / entropy
controller observing the step's entropy, whose coefficient the next update gets. The sampled batch is
generated once per round (the methods sample identically: same model, lr 1e-8, same seed) and its CPU
time is added to every method's step, so the ratios are of whole steps. Every method shares one Learner
(the methods' model and train sections are checked equal, so its construction is the same), given the
method's config for its step.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rl_div.bench.methods import METHOD_CONFIGS
from rl_div.bench.vs_trl import GROUP, NEW_TOKENS, PROMPTS, _overrides, _spread, demo_model, llama_20m


class MethodStep:
    """One method's config, reward scorer, reward tables and guard; :meth:`run` does one step's work."""

    def __init__(self, name: str, cfg: Any) -> None:
        from rewards import RewardScorer, RewardSpec
        from rl_div.train.guard import CollapseGuard

        self.name, self.cfg = name, cfg
        specs = [RewardSpec(name=r.name, weight=r.weight, params=dict(r.params)) for r in cfg.reward.rewards]
        self.scorer = RewardScorer(specs, timeout_s=cfg.reward.timeout_s, isolated=False)
        self.tables: dict[str, dict[str, Any]] = {}
        self.guard = CollapseGuard(cfg)
        self.steps = 0

    def run(self, learner: Any, batch: Any) -> None:
        """One step on ``batch`` (consumed) with ``learner`` set to this method's config."""
        import torch

        from rewards.runner import merge_state, state_for
        from rl_div.learner.onpolicy import fuses_policy_forward, needs_prompt_logprobs, separate_forward
        from rl_div.train.advantage_stage import compute_advantages, scored_rows, trained_rows

        cfg = self.cfg
        learner.cfg, learner.loss_params = cfg, dict(cfg.algo.loss_params)
        result = self.scorer.score(batch.response_texts, batch.prompts, batch.group_index.tolist(),
                                   state_for(self.tables, [p.prompt for p in batch.prompts]))
        merge_state(self.tables, result.state)
        batch.rewards = torch.tensor(result.total, dtype=torch.float32)
        batch.correct = torch.tensor(result.correct, dtype=torch.float32)
        batch.answers = list(result.answers)
        fused = fuses_policy_forward(cfg, learner.active_dropout())[0]
        if separate_forward(fused, batch.rewards, trained_rows(batch, cfg)):
            stats = learner.policy_stats(batch, with_prompt=needs_prompt_logprobs(cfg))
            batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
            batch.prompt_logprobs, batch.ref_logprobs = stats.get("prompt_logprobs"), stats.get("ref_logprobs")
        batch.advantages, _ = compute_advantages(batch, cfg, self.steps)
        overrides = self.guard.loss_overrides()
        if batch.old_logprobs is not None:
            learner.update(scored_rows(batch, cfg), overrides)
        else:
            _, stats = learner.update_on_policy(batch, overrides)
            batch.old_entropy = stats["old_entropy"]
        mask = batch.response_mask.bool()
        self.steps += 1
        self.guard.observe_train(self.steps, {"policy/entropy": float(batch.old_entropy[mask].mean())})


def bench_method_steps(methods: tuple[str, ...], rounds: int = 6, model: str = "20m",
                       work_dir: str | Path | None = None) -> dict[str, Any]:
    """``rounds`` timed rounds (after one warm-up round) of one step per method, interleaved."""
    import torch

    from rl_div.bench.common import REPO
    from rl_div.config import load_config
    from rl_div.learner.single import Learner
    from rl_div.rollout.base import SamplingSpec
    from rl_div.rollout.hf import HFRolloutWorker
    from rl_div.train.prompts import PromptStream, load_splits

    unknown = [m for m in methods if m not in METHOD_CONFIGS]
    if unknown or "grpo" not in methods:
        raise ValueError(f"--methods: give grpo and any of {sorted(METHOD_CONFIGS)}; unknown: {unknown}")
    torch.set_num_threads(1)
    work = Path(work_dir or tempfile.mkdtemp(prefix="rl_div_method_steps_"))
    work.mkdir(parents=True, exist_ok=True)
    path = llama_20m(work) if model == "20m" else demo_model()
    base = [o for o in _overrides(path, 1000, 1e-8, str(work / "unused")) if o != "algo=grpo"]
    # the random 21M model is never correct: without this a zero-signal grpo step skips its update
    # while a method whose reward varies anyway (outcome_ucb) does not, and the ratio compares the two
    base.append("train.skip_zero_signal_steps=false")
    cfgs = {m: load_config(REPO / "configs" / METHOD_CONFIGS[m], base) for m in methods}
    for m, cfg in cfgs.items():  # one Learner serves every method: what its construction reads must agree
        if cfg.model != cfgs["grpo"].model or cfg.train != cfgs["grpo"].train:
            raise ValueError(f"method {m}: model/train sections differ from grpo's; cannot share the learner")
    learner = Learner(cfgs["grpo"], path)
    steps = {m: MethodStep(m, cfg) for m, cfg in cfgs.items()}
    worker = HFRolloutWorker(path, device="cpu")
    stream = PromptStream(load_splits(cfgs["grpo"].data, 0)[0].records, 0)
    out_rounds: list[dict[str, Any]] = []
    for r in range(rounds + 1):  # round 0 warms up (first calls, caches, the embedder) and is dropped
        prompts = stream.next_batch(PROMPTS)
        start = time.process_time()
        batch = worker.generate(prompts, SamplingSpec(n=GROUP, max_new_tokens=NEW_TOKENS, seed=r))
        rollout_cpu = time.process_time() - start
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        done: dict[str, Any] = {"rollout_cpu_s": rollout_cpu, "load": os.getloadavg()[0], "methods": {}}
        for m in order:
            cpu, wall = time.process_time(), time.perf_counter()
            steps[m].run(learner, copy.deepcopy(batch))
            cpu_s = rollout_cpu + time.process_time() - cpu
            done["methods"][m] = {"cpu_s": cpu_s, "wall_s": time.perf_counter() - wall}
        if r:
            out_rounds.append(done)
            print(f"[round {r}/{rounds}, load {done['load']:.1f}] " + "; ".join(
                f"{m} {done['methods'][m]['cpu_s']:.3f}" for m in methods), flush=True)
    ratios = {m: _spread([rd["methods"][m]["cpu_s"] / rd["methods"]["grpo"]["cpu_s"] for rd in out_rounds])
              for m in methods if m != "grpo"}
    return {"model": model, "model_path": path, "rows": PROMPTS * GROUP, "new_tokens": NEW_TOKENS,
            "rounds": out_rounds, "cpu_ratio_to_grpo": ratios,
            "cpu_seconds": {m: _spread([rd["methods"][m]["cpu_s"] for rd in out_rounds]) for m in methods},
            "loads": [rd["load"] for rd in out_rounds]}


def print_method_steps(r: dict[str, Any]) -> None:
    from rl_div.bench.common import table

    loads = r["loads"]
    print(f"\nstep CPU seconds / grpo's in the same round, {r['model']} model, {r['rows']} rows x {r['new_tokens']} "
          f"new tokens, {len(r['rounds'])} rounds interleaved in one process (load average "
          f"{min(loads):.1f}-{statistics.median(loads):.1f}-{max(loads):.1f} min-median-max)")
    rows = [["grpo", r["cpu_seconds"]["grpo"]["median"], 1.0, 1.0, 1.0]]
    rows += [[m, r["cpu_seconds"][m]["median"], s["min"], s["median"], s["max"]]
             for m, s in r["cpu_ratio_to_grpo"].items()]
    print(table(["method", "cpu s / step, median", "ratio min", "median", "max"], rows))
