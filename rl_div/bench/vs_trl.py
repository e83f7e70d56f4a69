"""``rl-div bench --vs-trl``: rl_div's GRPO against TRL's GRPOTrainer on the same work, side by side.

Both sides get the same policy (the demo's bootstrapped model, or a ~20M-parameter Llama on the same
tokenizer), the same prompts in the same order (rl_div's seeded PromptStream; TRL with
shuffle_dataset=False), 16 prompts x 8 samples per step, 4 new tokens at temperature 1, AdamW at a
constant lr, one optimizer step per batch, token-mean loss, no KL,
float32, one torch thread per process, and the same verifier (the task's, in rl_div's killable
worker: TRL calls it through ``trl_reward``). Each run is a fresh process, launched as ``rl-div
train`` / a TRL script would be; runs are paired and interleaved (ABBA), and every pair reports the
load average, since other work on the machine moves both numbers.

Settings (``micro_batches``): the 128 rows of a step in one forward (micro-batch 128, one TRL
micro-step) or in two micro-batches of 64 (TRL: per_device_train_batch_size 64, gradient accumulation
and steps_per_generation 2; one optimizer step per 128 rows on both sides). rl_div runs twice per
pair: with a separate rollout actor (the default) and with ``rollout.colocate`` (the learner samples
with its own module, as TRL does).

Measured per run: steady-state step time (median over the steps after the first two), whole-run
wall time (launch to exit) and the per-stage split. The ratios are rl_div / TRL (below 1 = rl_div
faster), with min / median / max over the pairs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rl_div.bench.common import REPO

PROMPTS, GROUP, NEW_TOKENS = 16, 8, 4
TRL_STAGES = ("rollout", "reward", "prep", "fwd_bwd", "other")
RLDIV_STAGES = ("rollout", "reward", "learner_forward", "learner_update", "sync", "other")


def demo_model() -> str:
    """The demo's bootstrapped model (trained and cached on first use)."""
    from rl_div.config import load_config
    from rl_div.train.model_path import resolve_model_path

    return resolve_model_path(load_config(REPO / "configs" / "demo.yaml", []))


def llama_20m(out_dir: Path) -> str:
    """A randomly initialised ~21M-parameter Llama (5 layers, width 512) on the demo's tokenizer."""
    from rl_div.models.loading import count_parameters, load_tokenizer, make_tiny_llama, save_policy

    path = out_dir / "llama_20m"
    if not (path / "config.json").exists():
        tok = load_tokenizer(demo_model())
        model = make_tiny_llama(tok, hidden_size=512, num_layers=5, num_heads=8, intermediate_size=2048)
        assert 15e6 < count_parameters(model) < 30e6
        save_policy(model, tok, path)
    return str(path)


def _overrides(model_path: str, steps: int, lr: float, out: str, micro_rows: int = PROMPTS * GROUP) -> list[str]:
    return [f"model.path={model_path}", f"train.steps={steps}", f"train.lr={lr}",
            f"train.micro_batch_size={micro_rows}",
            f"rollout.prompts_per_step={PROMPTS}", f"rollout.group_size={GROUP}",
            f"rollout.max_new_tokens={NEW_TOKENS}", "rollout.temperature=1.0", "model.dtype=float32",
            "run.torch_threads=1", "algo=grpo", "eval.at_start=false", "eval.at_end=false", "eval.every=0",
            "checkpoint.every=0", "tracking.progress=false", "tracking.tensorboard=false", f"run.output_dir={out}"]


def _launch(cmd: list[str], log: Path, repo: Path = REPO) -> tuple[float, list[float]]:
    """Run cmd in a fresh process on the checkout ``repo``; (wall seconds launch -> exit, load
    average at start and end). A run whose Ray node did not start (Ray gives its raylet 30 s, which
    a loaded machine can miss) is launched once more and said so."""
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    for attempt in range(2):
        load = [os.getloadavg()[0]]
        start = time.perf_counter()
        with log.open("w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=repo, check=False)
        wall = time.perf_counter() - start
        load.append(os.getloadavg()[0])
        if proc.returncode == 0:
            return wall, load
        if attempt == 0 and "timed out during startup" in log.read_text():
            print(f"Ray did not start in time (load {load}); launching again", flush=True)
            continue
        break
    raise RuntimeError(f"{cmd[:4]} failed (exit {proc.returncode}); see {log}")


def _steady(values: list[float], skip: int = 2) -> float:
    return statistics.median(values[skip:] if len(values) > skip else values)


def run_rl_div(model_path: str, steps: int, lr: float, work: Path, config: str = "demo.yaml",
               repo: Path = REPO, micro_rows: int = PROMPTS * GROUP, colocate: bool = False) -> dict[str, Any]:
    """One fresh ``rl-div train`` of configs/<config> (GRPO unless another config names its method)
    from the checkout ``repo`` (default this one), micro-batches of micro_rows rows, colocated or not."""
    out = work / f"rl_div_{time.time_ns()}"
    overrides = [o for o in _overrides(model_path, steps, lr, str(out), micro_rows)
                 if config == "demo.yaml" or o != "algo=grpo"] + (["rollout.colocate=true"] if colocate else [])
    wall, load = _launch([sys.executable, "-m", "rl_div.cli", "train", str(repo / "configs" / config), *overrides],
                         work / "rl_div.log", repo)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("kind", "train") == "train"]
    step_s = [b["time"] - a["time"] for a, b in zip(rows, rows[1:], strict=False)]
    stages = {s: _steady([float(r.get(f"time/{s}", 0.0)) for r in rows[1:]]) for s in RLDIV_STAGES if s != "other"}
    stages["other"] = max(_steady(step_s) - sum(stages.values()), 0.0)
    return {"wall_seconds": wall, "load": load, "step_seconds": _steady(step_s), "stages": stages,
            "steps_timed": len(step_s)}


def run_trl(model_path: str, steps: int, lr: float, work: Path, micro_rows: int = PROMPTS * GROUP) -> dict[str, Any]:
    result = work / f"trl_{time.time_ns()}.json"
    args = {"model_path": model_path, "steps": steps, "lr": lr, "out": str(result), "micro_rows": micro_rows}
    wall, load = _launch([sys.executable, "-m", "rl_div.bench.vs_trl", json.dumps(args)], work / "trl.log")
    r = json.loads(result.read_text())
    stages = {s: _steady(r["stages"][s]) for s in TRL_STAGES}
    return {"wall_seconds": wall, "load": load, "step_seconds": _steady(r["step_seconds"]), "stages": stages,
            "steps_timed": len(r["step_seconds"])}


SIDES = {"rl_div": {}, "colocated": {"colocate": True}, "trl": None}  # rl_div's runs' keywords; TRL's own


def bench_vs_trl(models: tuple[str, ...] = ("demo", "20m"), pairs: int = 3, steps: int = 40,
                 steps_20m: int = 12, work_dir: str | Path | None = None,
                 baseline: str | Path | None = None, micro_batches: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Interleaved fresh-process runs per model and setting (micro_batches: the step's rows in 1 or 2
    micro-batches); in every pair rl_div separate, rl_div colocated and TRL, order rotated per pair.
    Ratios per pair: each rl_div mode over TRL, colocated over separate. With ``baseline`` (another
    checkout, e.g. main's), its rl_div (separate) runs in every pair too, for before/after ratios."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="rl_div_vs_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    # lr 1e-3 trains the demo model as the demo does; the random 20M model gets 1e-8 so that both
    # sides keep generating the same lengths (a trained policy's lengths would differ run to run).
    setups = {"demo": (demo_model, 1e-3, steps), "20m": (lambda: llama_20m(work), 1e-8, steps_20m)}
    out: dict[str, Any] = {"work_dir": str(work), "cpus": os.cpu_count(), "models": {}}
    sides = (*SIDES, "baseline") if baseline else tuple(SIDES)
    for name in models:
        make, lr, n = setups[name]
        path = make()
        for k in micro_batches:
            rows = PROMPTS * GROUP // k
            runs: list[dict[str, Any]] = []
            for pair in range(pairs):
                order = sides[pair % len(sides):] + sides[: pair % len(sides)]
                done = {side: run_trl(path, n, lr, work, rows) if side == "trl" else
                        run_rl_div(path, n, lr, work, repo=Path(baseline) if side == "baseline" else REPO,
                                   micro_rows=rows, **(SIDES.get(side) or {}))
                        for side in order}
                runs.append(done)
                print(f"[{name}, {k} micro-batch(es) of {rows}, pair {pair + 1}/{pairs}] steady step / whole run: "
                      + "; ".join(f"{side} {done[side]['step_seconds']:.3f}s / {done[side]['wall_seconds']:.1f}s "
                                  f"(load {done[side]['load']})" for side in sides), flush=True)
            ratios = {f"{kind} {a}/{b}": _spread([r[a][f"{kind}_seconds"] / r[b][f"{kind}_seconds"] for r in runs])
                      for kind in ("step", "wall") for a, b in _ratio_pairs(sides)}
            out["models"][f"{name}, {k}x{rows} rows"] = {"model_path": path, "lr": lr, "steps": n,
                                                         "micro_batches": k, "runs": runs, "ratios": ratios}
    out["baseline"] = str(baseline) if baseline else None
    return out


def _ratio_pairs(sides: tuple[str, ...]) -> list[tuple[str, str]]:
    """Which ratios a pair gives: every rl_div run over TRL, colocated over separate, and (with a
    baseline) this checkout over it."""
    pairs = [(a, "trl") for a in sides if a != "trl"] + [("colocated", "rl_div")]
    return pairs + ([("rl_div", "baseline"), ("colocated", "baseline")] if "baseline" in sides else [])


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def print_vs_trl(r: dict[str, Any]) -> None:
    from rl_div.bench.common import table

    for name, m in r["models"].items():
        print(f"\nrl_div vs TRL, {name} ({m['steps']} steps, lr {m['lr']}, {len(m['runs'])} interleaved pairs)")
        print(table(["ratio", "min", "median", "max"],
                    [[k, v["min"], v["median"], v["max"]] for k, v in m["ratios"].items()]))
        for side in m["runs"][0]:
            stages = TRL_STAGES if side == "trl" else RLDIV_STAGES
            rows = [[st, statistics.median(run[side]["stages"].get(st, 0.0) for run in m["runs"])] for st in stages]
            rows.append(["step", statistics.median(run[side]["step_seconds"] for run in m["runs"])])
            rows.append(["wall", statistics.median(run[side]["wall_seconds"] for run in m["runs"])])
            print(f"{side}: median seconds per steady step (loads {[run[side]['load'] for run in m['runs']]})")
            print(table(["stage", "seconds"], rows))


# ---- the TRL side: runs in its own process ---------------------------------------------------------
def _trl_main(args: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(1)
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl_div.config import load_config
    from rl_div.integrations.trl import trl_reward
    from rl_div.models.loading import load_policy
    from rl_div.train.prompts import PromptStream, load_prompts

    micro_rows = args.get("micro_rows", PROMPTS * GROUP)
    micro_steps = PROMPTS * GROUP // micro_rows  # micro-steps per optimizer step (one generation feeds them all)
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      _overrides(args["model_path"], args["steps"], args["lr"], "x", micro_rows))
    stream = PromptStream(load_prompts(cfg.data, "train", cfg.run.seed).records, cfg.run.seed)
    records = [r for _ in range(args["steps"]) for r in stream.next_batch(PROMPTS)]  # rl_div's order
    data = Dataset.from_list([{"prompt": cfg.data.prompt_template.format(prompt=r.prompt), "answer": r.answer,
                               "meta": r.meta} for r in records])
    model, tok = load_policy(args["model_path"], dtype="float32")
    times: dict[str, list[float]] = {s: [] for s in (*TRL_STAGES, "step", "score", "train_step", "prepare")}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[name].append(time.perf_counter() - start)
        return wrapper

    class Timed(GRPOTrainer):
        def _generate(self, *a: Any, **k: Any) -> Any:
            return timed("rollout", super()._generate)(*a, **k)

        def _calculate_rewards(self, *a: Any, **k: Any) -> Any:
            return timed("reward", super()._calculate_rewards)(*a, **k)

        def _generate_and_score_completions(self, *a: Any, **k: Any) -> Any:
            return timed("score", super()._generate_and_score_completions)(*a, **k)

        def _prepare_inputs(self, *a: Any, **k: Any) -> Any:
            return timed("prepare", super()._prepare_inputs)(*a, **k)

        def training_step(self, *a: Any, **k: Any) -> Any:
            return timed("train_step", super().training_step)(*a, **k)

    class StepClock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times["step"].append(time.perf_counter() - self.start)

    reward = trl_reward("task_verifier", timeout_s=cfg.reward.timeout_s)
    r = cfg.rollout
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_bench_"), per_device_train_batch_size=micro_rows,
        num_generations=GROUP, steps_per_generation=micro_steps, gradient_accumulation_steps=micro_steps,
        num_iterations=1,
        max_completion_length=NEW_TOKENS, max_steps=args["steps"], learning_rate=args["lr"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=cfg.train.weight_decay,
        adam_beta1=cfg.train.betas[0], adam_beta2=cfg.train.betas[1], max_grad_norm=cfg.train.max_grad_norm,
        beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, temperature=r.temperature, top_p=r.top_p,
        top_k=r.top_k, bf16=False, use_cpu=True, report_to=[], save_strategy="no", logging_steps=args["steps"],
        shuffle_dataset=False, seed=cfg.run.seed, disable_tqdm=True, log_completions=False)
    try:
        Timed(model=model, processing_class=tok, reward_funcs=[reward], args=config, train_dataset=data,
              callbacks=[StepClock()]).train()
    finally:
        reward.close()
    n = len(times["step"])
    prep = [s - g - w for s, g, w in zip(times["score"], times["rollout"], times["reward"], strict=True)]

    def per_step(values: list[float]) -> list[float]:
        """Micro-step entries summed per optimizer step."""
        return [sum(values[i * micro_steps:(i + 1) * micro_steps]) for i in range(n)]

    fwd_bwd = per_step([t - p for t, p in zip(times["train_step"], times["prepare"], strict=True)])
    stages = {"rollout": times["rollout"][:n], "reward": times["reward"][:n], "prep": prep[:n], "fwd_bwd": fwd_bwd,
              "other": [st - t for st, t in zip(times["step"], per_step(times["train_step"]), strict=True)]}
    Path(args["out"]).write_text(json.dumps({"step_seconds": times["step"], "stages": stages}))


if __name__ == "__main__":
    _trl_main(json.loads(sys.argv[1]))
