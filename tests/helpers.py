"""What several test modules share: the small-run config builders and the synthetic comparison folder.

The builders keep each test's exact overrides; they differ only in what the test needs (a learner
group, bucketed sync, the guard firing at once, placement), so they live here side by side instead
of in test files that import each other.
"""

from __future__ import annotations

import json
import random
from math import comb
from pathlib import Path

import numpy as np
import yaml

from rl_div.config import Config, load_config
from rl_div.report.results import RunRef, write_manifest

REPO = Path(__file__).resolve().parent.parent
QUIET = ["tracking.progress=false", "tracking.tensorboard=false"]
NO_EVAL = ["eval.every=0", "eval.at_start=false", "eval.at_end=false", "eval.embedding_metrics=false"]
FSDP2 = ["train.strategy=fsdp2", "train.num_learners=2"]
SYNC_BUCKET_MB = 0.1  # the tiny Llama (~0.5 MB in float32) then travels in several buckets


# ---- small runs --------------------------------------------------------------------------------
def run_config(model_path: str | Path, out: str | Path, *overrides: str, base: str | Path | None = None) -> Config:
    """A config for model_path writing to out: base (default: the built-in defaults) plus overrides."""
    return load_config(None if base is None else str(base),
                       [f"model.path={model_path}", f"run.output_dir={out}", *overrides])


def group_run_config(out: Path, base_model: str, *overrides: str) -> Config:
    """A small run on the bootstrapped model: 4 prompts x 4 samples, a checkpoint every step, room for
    two learner ranks (cluster.num_cpus=4)."""
    return run_config(base_model, out, "rollout.prompts_per_step=4", "rollout.group_size=4", *NO_EVAL,
                      "data.num_eval_prompts=4", *QUIET, "cluster.num_cpus=4", "checkpoint.every=1",
                      "checkpoint.keep=10", *overrides)


def rank_job_config(model_path: str, out: str, extra: list[str]) -> Config:
    """What a 2-rank gloo job (tests/dist_jobs.py) builds its learner from."""
    return run_config(model_path, out, "train.lr=0.001", "rollout.max_new_tokens=8", *extra)


def sync_config(model_path: str, out: str, *extra: str) -> Config:
    """Weight sync in several buckets, with room for two learner ranks."""
    return run_config(model_path, out, "cluster.num_cpus=4", f"rollout.weight_sync_chunk_mb={SYNC_BUCKET_MB}", *extra)


def guard_run_config(out: Path, base_model: str, *overrides: str) -> Config:
    """configs/demo_guard.yaml with thresholds that fire at once (every smoothed entropy change counts;
    any distinct-correct drop) and a large coef_step, so the coefficient is non-zero within 4 steps."""
    return run_config(base_model, out, "rollout.prompts_per_step=4", "rollout.group_size=4", "eval.n=4",
                      "eval.every=2", "eval.embedding_metrics=false", "data.num_eval_prompts=4", *QUIET,
                      "cluster.num_cpus=2", "checkpoint.every=2", "train.lr=0.01", "guard.smooth_steps=1",
                      "guard.entropy_window=1", "guard.entropy_max_drop=1e-9", "guard.distinct_fraction=1.0",
                      "guard.coef_step=0.05", "guard.coef_max=0.2", *overrides, base=REPO / "configs/demo_guard.yaml")


def placement_config(tmp_path: Path, model_path: str, *overrides: str) -> Config:
    """No training steps, no evaluation: start the actors, place them, sync once."""
    return run_config(model_path, tmp_path / "run", "train.steps=0", "eval.at_start=false", "eval.at_end=false",
                      "data.num_eval_prompts=2", *QUIET, "cluster.num_cpus=2", "rollout.weight_sync_timeout_s=20",
                      *overrides)


# ---- a synthetic comparison folder (no training) ---------------------------------------------------
N, P, STEPS = 8, 6, (0, 2, 4)
VARIANTS = {"grpo": 0.25, "arm": 0.45}  # variant -> probability of a correct sample after training


def tiny_prime_gap_llama(folder: Path, seed: int) -> str:
    """A tiny random Llama with the prime_gap task's character tokenizer, saved under folder/tiny."""
    from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy
    from rl_div.tasks import TASKS

    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    return str(save_policy(make_tiny_llama(tok, seed=seed), tok, folder / "tiny"))


def chen_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def fake_problems(rng: random.Random, p_correct: float) -> list[dict]:
    problems = []
    for i in range(P):
        answers, correct = [], []
        for _ in range(N):
            if rng.random() < p_correct:
                answers.append(rng.choice(["2", "4", "6"]))
                correct.append(True)
            else:
                answers.append(rng.choice(["1", "3", None]))
                correct.append(False)
        problems.append({"uid": f"q{i}", "prompt": f"q{i}?", "n": N, "c": sum(correct), "answers": answers,
                         "correct": correct})
    return problems


def logged_metrics(problems: list[dict], rng: random.Random) -> dict:
    out = {f"pass@{k}": float(np.mean([chen_pass_at_k(p["n"], p["c"], k) for p in problems])) for k in (1, 2, 4, 8)}
    out["mean@n"] = float(np.mean([p["c"] / p["n"] for p in problems]))
    maj = []
    for p in problems:
        votes = [a for a in p["answers"] if a is not None]
        top = max(votes, key=lambda a: (votes.count(a), -votes.index(a))) if votes else None
        maj.append(top is not None and p["correct"][p["answers"].index(top)])
    out["maj@n"] = float(np.mean(maj))
    out["n"] = N
    out["policy/entropy"] = rng.uniform(1.0, 2.0)
    out["div/distinct_correct_answers"] = float(np.mean(
        [len({a for a, ok in zip(p["answers"], p["correct"], strict=True) if ok}) for p in problems]))
    out["div/emb_diversity"] = rng.uniform(0.3, 0.6)
    out["sync/logprob_gap_max"] = None  # a NaN logged as null must survive as NaN
    return out


def write_run(run_dir: Path, name: str, seed: int, p_final: float, duplicate_step: bool = False) -> None:
    rng = random.Random(f"{name}-{seed}")
    (run_dir / "eval").mkdir(parents=True)
    cfg = {"run": {"name": name, "seed": seed}, "model": {"path": "base-model"}, "bootstrap": {"steps": 1},
           "data": {"source": "task", "task": "prime_gap"}, "train": {"steps": STEPS[-1]},
           "eval": {"n": N, "temperature": 1.0}, "rollout": {"group_size": 4}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    for step in STEPS:
        # step 0 is the shared base model: same problems and samples for every variant of a seed
        prng = random.Random(f"base-{seed}") if step == 0 else rng
        problems = fake_problems(prng, 0.15 + (p_final - 0.15) * step / STEPS[-1])
        metrics = logged_metrics(problems, random.Random(f"m-{seed}") if step == 0 else rng)
        (run_dir / "eval" / f"step_{step:06d}.json").write_text(
            json.dumps({"step": step, "metrics": metrics, "problems": problems}))
        rows.append({"step": step, "kind": "eval", "time": 0.0, **metrics})
        if step:
            for s in range(step - 1, step + 1):
                rows.append({"step": s, "kind": "train", "time": 0.0, "policy/entropy": 2.0 - 0.1 * s + 0.01 * seed,
                             "div/distinct_correct_answers": 1.0 + s})
    if duplicate_step:  # a resumed run appends steps after its last checkpoint again: the last row wins
        rows.insert(2, {"step": 2, "kind": "train", "time": 0.0, "policy/entropy": 99.0})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_compare_dir(root: Path, duplicate_step_in: tuple[str, int] | None = None) -> Path:
    """A comparison folder as `rl-div compare` leaves it: every variant x seeds 0, 1 and the manifest;
    duplicate_step_in=(variant, seed) logs that run's first step twice (a crashed-and-resumed run)."""
    refs = []
    for name, p in VARIANTS.items():
        for seed in (0, 1):
            write_run(root / name / f"seed{seed}", name, seed, p, duplicate_step=(name, seed) == duplicate_step_in)
            refs.append(RunRef(name, seed, root / name / f"seed{seed}"))
    write_manifest(root, "compare", refs)
    return root


def markdown_table(md: str, first_header: str) -> list[dict[str, str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [h.strip() for h in lines[start].strip("|").split("|")]
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append(dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True)))
    return body


def lora_params_by_shapes(cfg: dict, rank: int, layers_targets: tuple[str, ...]) -> int:
    """r * (in + out) summed over the adapted projections of every layer, from config.json's sizes."""
    h, m, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    head_dim = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, m), "up_proj": (h, m), "down_proj": (m, h)}
    return n_layers * sum(rank * sum(shapes[t]) for t in layers_targets)
