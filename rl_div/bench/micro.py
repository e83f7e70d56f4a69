"""The micro sections of ``rl-div bench``: chunked entropy, vectorised pass@k, one training step's
stages, batched novelty embeddings."""


from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_div.bench.common import MMAP_THRESHOLD, REPO, median_seconds, peak_rss_delta, table
from rl_div.metrics import default_ks, logprobs_and_entropy, pass_at_k

STAGES = ("rollout", "reward", "learner_forward", "learner_update", "sync")
MODES = {"forward": False, "forward_backward": True}  # mode -> with autograd



def naive_logprobs_and_entropy(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: upcast all of [N, T, V] to float32 and do log_softmax + entropy at once.

    No clamp (unlike the library) so the baseline is as lean as the textbook formula allows.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


RunFn = Callable[[str, bool], tuple[torch.Tensor, ...]]


def _entropy_case(rows: int, seq_len: int, vocab: int, chunk_rows: int, seed: int) -> tuple[list[int], RunFn]:
    """Seeded bf16 logits [rows/seq_len, seq_len, V] and ``run(impl, grad)`` over them.

    run(impl, False): forward under no_grad (rollout-side / eval stats). run(impl, True): forward +
    backward of a weighted sum of both outputs (what the learner does); returns (logp, ent, grad).
    """
    g = torch.Generator().manual_seed(seed)
    n = max(1, rows // seq_len)
    logits = (torch.randn(n, seq_len, vocab, generator=g) * 3).to(torch.bfloat16)
    ids = torch.randint(0, vocab, (n, seq_len), generator=g)
    w_logp, w_ent = torch.randn(n, seq_len, generator=g), torch.randn(n, seq_len, generator=g)
    impls: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
        "naive": naive_logprobs_and_entropy,
        "chunked": lambda x, i: logprobs_and_entropy(x, i, chunk_rows),
    }

    def run(name: str, grad: bool) -> tuple[torch.Tensor, ...]:
        if not grad:
            with torch.no_grad():
                return impls[name](logits, ids)
        x = logits.detach().requires_grad_(True)
        logp, ent = impls[name](x, ids)
        (logp * w_logp + ent * w_ent).sum().backward()
        assert x.grad is not None
        return logp.detach(), ent.detach(), x.grad

    return [n, seq_len, vocab], run


def entropy_peak_memory(rows: int, seq_len: int, vocab: int, chunk_rows: int, seed: int) -> dict[str, dict]:
    """{mode: {impl: peak RSS delta bytes}}; meant for a fresh process (see _entropy_memory_subprocess)."""
    _, run = _entropy_case(rows, seq_len, vocab, chunk_rows, seed)
    out: dict[str, dict] = {}
    for mode, grad in MODES.items():
        out[mode] = {}
        for name in ("naive", "chunked"):
            run(name, grad)  # warm-up: one-off allocations (thread pools, autograd engine) are not the impl's
            with peak_rss_delta() as mem:
                run(name, grad)
            out[mode][name] = mem["peak_delta"]
    return out


def _entropy_memory_subprocess(rows: int, seq_len: int, vocab: int, chunk_rows: int, seed: int) -> dict[str, dict]:
    """Run entropy_peak_memory in a fresh interpreter whose glibc serves every block >= 1 MiB by mmap.

    Otherwise glibc raises its mmap threshold up to 32 MiB as big blocks are freed, so chunk-sized
    float32 buffers come from the heap, and the pages each chunk touches stay resident after free:
    RSS would charge the chunked code for memory it no longer holds. A separate process also keeps
    the timings (taken here, under default malloc settings) untouched by that setting.
    """
    code = (f"import json; from rl_div.bench.micro import entropy_peak_memory; "
            f"print(json.dumps(entropy_peak_memory({rows}, {seq_len}, {vocab}, {chunk_rows}, {seed})))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_entropy(rows: int = 4096, seq_len: int = 512, vocab: int = 32000, chunk_rows: int = 1024,
                  repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Time and peak memory of naive vs chunked log-prob + entropy (see _entropy_case for the modes).

    Agreement: max abs difference of both outputs and of the logits gradient between the two.
    """
    shape, run = _entropy_case(rows, seq_len, vocab, chunk_rows, seed)
    # Agreement first (this also warms both code paths up before anything is timed).
    ref, new = run("naive", True), run("chunked", True)
    agreement = {f"max_abs_diff_{k}": float((a.float() - b.float()).abs().max())
                 for k, a, b in zip(("logp", "entropy", "grad"), ref, new, strict=True)}
    del ref, new

    block_rows = (chunk_rows // seq_len) * seq_len if seq_len <= chunk_rows else chunk_rows
    out: dict[str, Any] = {
        "shape": shape, "dtype": "bfloat16", "chunk_rows": chunk_rows, "repeats": repeats,
        "memory_method": "measured: peak process RSS above the RSS just before the call (logits already "
        "allocated), sampled every 0.5 ms by a psutil thread, in a fresh process with "
        "MALLOC_MMAP_THRESHOLD_=1MiB so freed buffers leave RSS (CPU torch has no allocator stats); "
        "analytic: bytes of one float32 [rows, V] buffer (every float32 intermediate has this size)",
        "analytic_fp32_buffer_bytes": {"naive": 4 * shape[0] * seq_len * vocab, "chunked": 4 * block_rows * vocab},
        **agreement,
    }
    for mode, grad in MODES.items():
        out[mode] = {name: {"seconds": median_seconds(lambda name=name, grad=grad: run(name, grad), repeats)}
                     for name in ("naive", "chunked")}
    memory = _entropy_memory_subprocess(rows, seq_len, vocab, chunk_rows, seed)
    for mode in MODES:
        res = out[mode]
        for name in ("naive", "chunked"):
            res[name]["peak_rss_delta_bytes"] = float(memory[mode][name])
        res["ratio_naive_over_chunked"] = {
            "time": res["naive"]["seconds"] / res["chunked"]["seconds"],
            "memory": res["naive"]["peak_rss_delta_bytes"] / max(res["chunked"]["peak_rss_delta_bytes"], 1.0)}
    a = out["analytic_fp32_buffer_bytes"]
    out["analytic_ratio"] = a["naive"] / a["chunked"]
    return out


def print_entropy(r: dict[str, Any]) -> None:
    mib = 2.0 ** 20
    print(f"\n1. log-prob + entropy, bf16 logits {r['shape']}, chunk_rows={r['chunk_rows']} "
          f"(median of {r['repeats']})")
    rows = []
    for mode in ("forward", "forward_backward"):
        m = r[mode]
        rows.append([mode, m["naive"]["seconds"], m["chunked"]["seconds"], m["ratio_naive_over_chunked"]["time"],
                     m["naive"]["peak_rss_delta_bytes"] / mib, m["chunked"]["peak_rss_delta_bytes"] / mib,
                     m["ratio_naive_over_chunked"]["memory"]])
    print(table(["mode", "naive s", "chunked s", "time naive/chunked", "naive peak MiB", "chunked peak MiB",
                  "mem naive/chunked"], rows))
    a = r["analytic_fp32_buffer_bytes"]
    print(f"analytic float32 buffer: naive {a['naive'] / mib:.1f} MiB, chunked {a['chunked'] / mib:.1f} MiB "
          f"(ratio {r['analytic_ratio']:.3g})")
    print(f"memory: {r['memory_method']}")
    print(f"agreement chunked vs naive, max |diff|: logp {r['max_abs_diff_logp']:.3g}, "
          f"entropy {r['max_abs_diff_entropy']:.3g}, grad {r['max_abs_diff_grad']:.3g}")


# ---- 2. pass@k: vectorised vs math.comb loop --------------------------------------------------
def pass_at_k_loop(n: int, c: int, k: int) -> float:
    """The textbook formula with exact integers; Python's int / int rounds the ratio correctly."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def bench_passk(problems: int = 10_000, n: int = 1024, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """pass@k for every k in default_ks(n) over ``problems`` problems, vectorised vs a Python loop.

    c ~ Binomial(n, p), p ~ Beta(0.5, 2): most problems hard with a few easy ones, as in RLVR evals.
    """
    rng = np.random.default_rng(seed)
    c = rng.binomial(n, rng.beta(0.5, 2.0, size=problems))
    ks = default_ks(n)
    k_arr = np.asarray(ks)[None, :]
    vec = np.asarray(pass_at_k(n, c[:, None], k_arr))
    vec_s = median_seconds(lambda: pass_at_k(n, c[:, None], k_arr), repeats)
    start = time.perf_counter()  # one loop pass: it is slow and its time barely varies
    loop = np.array([[pass_at_k_loop(n, int(ci), k) for k in ks] for ci in c])
    loop_s = time.perf_counter() - start
    return {"problems": problems, "n": n, "ks": ks, "values": int(vec.size), "vectorised_seconds": vec_s,
            "loop_seconds": loop_s, "ratio_loop_over_vectorised": loop_s / vec_s,
            "max_abs_diff": float(np.abs(vec - loop).max())}


def print_passk(r: dict[str, Any]) -> None:
    print(f"\n2. pass@k, {r['problems']} problems, n={r['n']}, k in {r['ks']} ({r['values']} values)")
    print(table(["vectorised s", "math.comb loop s", "time loop/vectorised", "max |diff|"],
                 [[r["vectorised_seconds"], r["loop_seconds"], r["ratio_loop_over_vectorised"], r["max_abs_diff"]]]))


# ---- 3. one training step through Ray ---------------------------------------------------------
def bench_train_step(steps: int = 10, config: str | Path | None = None) -> dict[str, Any]:
    """Median stage times of ``steps`` real train_step() calls on the tiny bootstrapped model."""
    import ray

    from rl_div.config import load_config
    from rl_div.train.loop import Trainer

    path = Path(config) if config is not None else Path("configs/demo.yaml")
    if not path.exists():  # run from outside the repo: use the checkout's demo config
        path = REPO / "configs" / "demo.yaml"
    with tempfile.TemporaryDirectory(prefix="rl_div_bench_") as tmp:
        cfg = load_config(path, [f"run.output_dir={tmp}", "eval.at_start=false", "tracking.progress=false",
                                 f"train.steps={steps}"])
        start = time.perf_counter()
        trainer = Trainer(cfg)
        startup_s = time.perf_counter() - start
        totals, per_stage = [], {s: [] for s in STAGES}
        try:
            for _ in range(steps):
                start = time.perf_counter()
                metrics = trainer.train_step()
                totals.append(time.perf_counter() - start)
                for s in STAGES:
                    per_stage[s].append(float(metrics.get(f"time/{s}", 0.0)))  # learner_forward: only when it runs
        finally:
            trainer.close()
            ray.shutdown()
    step_s = statistics.median(totals)
    medians = {s: statistics.median(v) for s, v in per_stage.items()}
    # "other" = driver-side work outside the timed stages: advantages, step metrics, tracker write.
    medians["other"] = max(step_s - sum(medians.values()), 0.0)
    return {"config": str(path), "steps": steps, "startup_seconds": startup_s, "first_step_seconds": totals[0],
            "median_step_seconds": step_s, "median_stage_seconds": medians,
            "stage_share_of_step": {s: v / step_s for s, v in medians.items()}}


def print_train_step(r: dict[str, Any]) -> None:
    print(f"\n3. train_step through Ray, {r['config']}, median of {r['steps']} steps "
          f"(startup {r['startup_seconds']:.3g} s, first step {r['first_step_seconds']:.3g} s)")
    rows = [[s, r["median_stage_seconds"][s], f"{100 * r['stage_share_of_step'][s]:.1f}%"]
            for s in r["median_stage_seconds"]]
    rows.append(["step", r["median_step_seconds"], "100%"])
    print(table(["stage", "median s", "share of step"], rows))


# ---- 4. group rewards: per-group embedding calls vs one call per batch ----------------------------
def bench_group_embedding(groups: int = 16, group_size: int = 8, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Novelty over a batch like the demo's (numeric answers, many repeats): each group embedded in its
    own call (the old way) vs the batch's distinct texts in one call (``prepare_batch``). The cache
    is cleared before every repetition, so no text is reused across steps."""
    from rewards import REWARDS
    from rewards.embedding import clear_embedding_cache, get_embedder
    from rl_div.data import PromptRecord

    get_embedder(None)  # load outside the timing
    rng = np.random.default_rng(seed)
    answers = [str(int(a)) for a in rng.integers(1, 40, size=groups * group_size)]
    correct = [float(int(a) % 3 == 0) for a in answers]
    completions = [f"{a}" for a in answers]
    records = [PromptRecord(f"q{g}", "0") for g in range(groups) for _ in range(group_size)]
    group_index = [g for g in range(groups) for _ in range(group_size)]
    fn = REWARDS["novelty"]

    def per_group(prepare: bool) -> list[float]:
        out: list[float] = []
        clear_embedding_cache()
        if prepare:
            fn.prepare_batch(completions, answers, correct, records, group_index)
        for g in range(groups):
            if not prepare:
                clear_embedding_cache()  # the old embed: every group encodes all its texts
            rows = slice(g * group_size, (g + 1) * group_size)
            out += fn(completions[rows], answers[rows], correct[rows], records[rows])
        return out

    diff = float(np.max(np.abs(np.array(per_group(False)) - np.array(per_group(True)))))
    old = median_seconds(lambda: per_group(False), repeats)
    new = median_seconds(lambda: per_group(True), repeats)
    clear_embedding_cache()
    return {"groups": groups, "group_size": group_size, "distinct_texts": len(set(answers)),
            "per_group_seconds": old, "batched_seconds": new, "ratio_per_group_over_batched": old / new,
            "max_abs_diff": diff}


def print_group_embedding(r: dict[str, Any]) -> None:
    print(f"\n4. novelty over {r['groups']} groups x {r['group_size']} ({r['distinct_texts']} distinct answers)")
    print(table(["per-group calls s", "one batch call s", "time per-group/batched", "max |diff|"],
                 [[r["per_group_seconds"], r["batched_seconds"], r["ratio_per_group_over_batched"],
                   r["max_abs_diff"]]]))


