"""``rl-div bench`` sections on a realistic workload: Qwen's 151,936-entry vocabulary, GSM8K-style
rewards, 256+-token generations (sections ``lm_head``, ``rewards``, ``long_step`` of rl_div.bench.run).

Every number is a ratio against a baseline measured in the same run, or a share of a whole, with
min / median / max over repeats. Tests check only agreement fields, never timings.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rl_div.bench.common import MMAP_THRESHOLD, REPO, peak_rss_delta, table
from rl_div.metrics.entropy import logprobs_and_entropy
from rl_div.metrics.lm_head import head_logprobs_and_entropy

GSM8K_DIR = REPO.parent / "shared" / "data" / "gsm8k"
QWEN_VOCAB = 151_936


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """min / median / max seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return spread(times)


def rates(n: int, seconds: dict[str, float]) -> dict[str, float]:
    """Items/s spread from a seconds spread (the fastest repeat is the max rate)."""
    return {"min": n / seconds["max"], "median": n / seconds["median"], "max": n / seconds["min"]}


# ---- lm_head: log-probs + entropy from hidden states vs the full-logits path ---------------------
def _head_case(rows: int, tokens: int, hidden: int, vocab: int, chunk_rows: int, seed: int):
    """Seeded fp32 hidden [rows*tokens, D], head [V, D], ids; ``run(impl)`` = forward + backward of a
    weighted sum of log-probs and entropies; returns (logp, entropy, grad hidden, grad weight)."""
    g = torch.Generator().manual_seed(seed)
    n = rows * tokens
    h = torch.randn(n, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) / hidden**0.5 * 3
    ids = torch.randint(0, vocab, (n,), generator=g)
    w_logp, w_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)

    def full_logits(hh: torch.Tensor, ww: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The previous policy_forward: the model builds [B, T, V] logits, then chunked log-softmax.
        logits = torch.nn.functional.linear(hh, ww).view(rows, tokens, vocab)
        lp, ent = logprobs_and_entropy(logits, ids.view(rows, tokens), chunk_rows)
        return lp.reshape(-1), ent.reshape(-1)

    impls = {"full_logits": full_logits,
             "chunked_head": lambda hh, ww: head_logprobs_and_entropy(hh, ww, ids, chunk_rows=chunk_rows)}

    # Parameters and their gradient buffers exist before a step starts (as in the learner), so what a
    # run adds to memory is what the log-prob/entropy computation itself costs.
    hh, ww = h.requires_grad_(True), w.requires_grad_(True)
    hh.grad, ww.grad = torch.zeros_like(h), torch.zeros_like(w)

    def run(name: str) -> tuple[torch.Tensor, ...]:
        hh.grad.zero_()
        ww.grad.zero_()
        lp, ent = impls[name](hh, ww)
        (lp * w_logp + ent * w_ent).sum().backward()
        return lp.detach(), ent.detach(), hh.grad, ww.grad

    return run


def lm_head_peak_memory(rows: int, tokens: int, hidden: int, vocab: int, chunk_rows: int, seed: int,
                        repeats: int) -> dict[str, list[int]]:
    """{impl: [peak RSS delta bytes per repeat]} of forward+backward (outputs and gradients included);
    meant for a fresh process whose glibc returns freed blocks >= 1 MiB at once (see bench_lm_head)."""
    run = _head_case(rows, tokens, hidden, vocab, chunk_rows, seed)
    out: dict[str, list[int]] = {"full_logits": [], "chunked_head": []}
    for _ in range(repeats):
        for name in out:
            with peak_rss_delta() as mem:
                run(name)
            out[name].append(mem["peak_delta"])
    return out


def bench_lm_head(rows: int = 8, tokens: int = 512, hidden: int = 64, vocab: int = QWEN_VOCAB,
                  chunk_rows: int = 256, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Forward + backward of log-prob and entropy of every response token: the model's full logits
    [rows, tokens, V] then chunked log-softmax (the previous learner path) vs the LM head applied
    chunk by chunk to hidden states (rl_div.metrics.lm_head). Default D = 64 (tiny_qwen); Qwen2.5-0.5B
    has D = 896, where the matmuls weigh more and the recompute in backward costs ~1/3 more of them.
    Peak memory excludes the parameters and their gradient buffers (allocated before each run)."""
    run = _head_case(rows, tokens, hidden, vocab, chunk_rows, seed)
    ref = [t.clone() for t in run("full_logits")]  # also warms both paths up
    new = run("chunked_head")
    agreement = {f"max_abs_diff_{k}": float((a - b).abs().max())
                 for k, a, b in zip(("logp", "entropy", "grad_hidden", "grad_weight"), ref, new, strict=True)}
    del ref, new
    times = {name: timed(lambda name=name: run(name), repeats) for name in ("full_logits", "chunked_head")}
    code = (f"import json; from rl_div.bench.workload import lm_head_peak_memory; print(json.dumps("
            f"lm_head_peak_memory({rows}, {tokens}, {hidden}, {vocab}, {chunk_rows}, {seed}, {repeats})))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    mems = json.loads(done.stdout.strip().splitlines()[-1])
    memory = {name: spread([float(v) for v in values]) for name, values in mems.items()}
    return {
        "shape": {"rows": rows, "tokens": tokens, "hidden": hidden, "vocab": vocab}, "chunk_rows": chunk_rows,
        "repeats": repeats, "seconds": times, "peak_rss_delta_bytes": memory,
        "ratio_full_over_chunked": {
            "time_median": times["full_logits"]["median"] / times["chunked_head"]["median"],
            "memory_median": memory["full_logits"]["median"] / max(memory["chunked_head"]["median"], 1.0)},
        "analytic_fp32_logits_bytes": {"full_logits": 4 * rows * tokens * vocab,
                                       "chunked_head": 4 * chunk_rows * vocab},
        **agreement,
    }


def print_lm_head(r: dict[str, Any]) -> None:
    s, mib = r["shape"], 2.0**20
    print(f"\n4. log-prob + entropy with gradient at V={s['vocab']}: [{s['rows']} rows x {s['tokens']} tokens], "
          f"D={s['hidden']}, fp32, chunk_rows={r['chunk_rows']} (min/median/max of {r['repeats']})")
    rows = []
    for name in ("full_logits", "chunked_head"):
        t, m = r["seconds"][name], r["peak_rss_delta_bytes"][name]
        rows.append([name, f"{t['min']:.3g}/{t['median']:.3g}/{t['max']:.3g}",
                     f"{m['min'] / mib:.0f}/{m['median'] / mib:.0f}/{m['max'] / mib:.0f}"])
    print(table(["path", "seconds", "peak RSS MiB"], rows))
    ratio = r["ratio_full_over_chunked"]
    print(f"full/chunked: time {ratio['time_median']:.3g}x, peak memory {ratio['memory_median']:.3g}x; agreement "
          f"max |diff| logp {r['max_abs_diff_logp']:.2g}, entropy {r['max_abs_diff_entropy']:.2g}, "
          f"grad h {r['max_abs_diff_grad_hidden']:.2g}, grad W {r['max_abs_diff_grad_weight']:.2g}")


# ---- rewards: isolated pool vs in-process ------------------------------------------------------------
def gsm8k_completions(n: int, data_dir: Path = GSM8K_DIR, seed: int = 0) -> list[tuple[str, Any]]:
    """GSM8K-style model solutions: the reference reasoning (calculator annotations removed) ending in
    "A: <number>", the gold for even rows and gold + 1 for odd rows; with its PromptRecord."""
    from rl_div.data import PromptRecord

    path = data_dir / "test.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"GSM8K data not found at {path} (../shared/data/gsm8k)")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    items = []
    for i in range(n):
        row = rows[(seed + i) % len(rows)]
        body, gold = row["answer"].split("####")
        gold = gold.strip().replace(",", "")
        shown = gold if i % 2 == 0 else str(int(float(gold)) + 1)
        text = re.sub(r"<<[^>]*>>", "", body).strip()
        items.append((f"{text}\nA: {shown}", PromptRecord(row["question"], gold, meta={"extractor": "math"})))
    return items


def bench_rewards(n_items: int = 800, workers: tuple[int, ...] = (1, 2), items_per_call: int = 16,
                  repeats: int = 3) -> dict[str, Any]:
    """math_verify items/s on GSM8K-style completions: in-process (one core) vs the isolated pool."""
    return scorer_throughput("math_verify", gsm8k_completions(n_items), workers, items_per_call, repeats)


def bench_benchmark_scoring(every: int = 1, workers: tuple[int, ...] = (1, 2), items_per_call: int = 64,
                            repeats: int = 3) -> dict[str, Any]:
    """benchmark_verify items/s on MATH-500's parity cases (reference solutions, golds, equivalent and
    wrong forms: what `rl-div eval --benchmarks` scores at n = 256-1024), in-process vs the isolated pool
    (reward.num_workers = 1, 2). Needs the benchmark folder (rl_div.bench.parity.benchmarks_root)."""
    from rl_div.bench.parity import benchmarks_root
    from rl_div.benchmarks.parity import parity_cases

    cases = parity_cases("math500", benchmarks_root(), every=every)
    return scorer_throughput("benchmark_verify", [(c.completion, c.record) for c in cases], workers,
                             items_per_call, repeats)


def scorer_throughput(reward: str, items: list[tuple[Any, ...]], workers: tuple[int, ...], items_per_call: int,
                      repeats: int) -> dict[str, Any]:
    """``reward`` items/s in this process (one core) and through the isolated pool of each size, with
    the per-worker ratio to in-process (the goal: >= 0.8). The pool's scores must equal in-process."""
    from rewards import IsolatedPool
    from rewards.registry import REWARDS

    fn = REWARDS.get(reward)
    expected = [fn(*item) for item in items]  # also warms the gold-parse cache of this process
    in_process = timed(lambda: [fn(*item) for item in items], repeats)
    n_items = len(items)
    out: dict[str, Any] = {"reward": reward, "items": n_items, "items_per_call": items_per_call, "repeats": repeats,
                           "correct_fraction": sum(expected) / n_items,
                           "in_process_items_per_s": rates(n_items, in_process)}
    for size in workers:
        with IsolatedPool(size=size) as pool:
            got = pool.map(reward, items, timeout_s=30, items_per_call=items_per_call)  # warm-up
            assert [o.value for o in got] == expected, "isolated and in-process scores differ"
            t = timed(lambda pool=pool: pool.map(reward, items, timeout_s=30, items_per_call=items_per_call),
                      repeats)
        rate = rates(n_items, t)
        out[f"isolated_{size}_items_per_s"] = rate
        out[f"ratio_isolated_{size}_per_worker_over_in_process"] = \
            rate["median"] / size / out["in_process_items_per_s"]["median"]
    return out


def print_rewards(r: dict[str, Any]) -> None:
    what = "GSM8K-style completions" if r["reward"] == "math_verify" else "MATH-500 parity cases"
    print(f"\n{r['reward']} on {r['items']} {what} ({r['correct_fraction']:.0%} correct), "
          f"{r['items_per_call']} items per round trip (min/median/max of {r['repeats']})")
    rows = [["in-process", *[r["in_process_items_per_s"][k] for k in ("min", "median", "max")], ""]]
    for key in sorted(k for k in r if k.startswith("isolated_") and k.endswith("_items_per_s")):
        size = key.split("_")[1]
        rows.append([f"isolated x{size}", *[r[key][k] for k in ("min", "median", "max")],
                     f"{r[f'ratio_isolated_{size}_per_worker_over_in_process']:.3g}"])
    print(table(["scorer", "items/s min", "median", "max", "median per worker / in-process"], rows))


# ---- long_step: one rollout + learner step at 256+ new tokens on the tiny Qwen2 -----------------
def bench_long_step(new_tokens: int = 256, prompts: int = 4, group_size: int = 4, repeats: int = 2,
                    cache_dir: str = "~/.cache/rl_div/bootstrap", profile_ops: int = 8) -> dict[str, Any]:
    """Stage times of one GRPO step on the tiny_qwen model without Ray (the stages a train step runs):
    hf rollout, rewards (math_verify + format in-process), learner forward (pi_old), learner update
    (forward + backward + AdamW) and the weight copy; plus the top ops of one rollout by self CPU time.
    EOS is suppressed so every response is exactly ``new_tokens`` long."""
    from rewards import RewardScorer, RewardSpec
    from rl_div.config import load_config
    from rl_div.learner.single import Learner
    from rl_div.models.tiny_qwen import tiny_qwen_model
    from rl_div.rollout.base import SamplingSpec
    from rl_div.rollout.hf import HFRolloutWorker
    from rl_div.train.advantage_stage import compute_advantages

    path = str(tiny_qwen_model(cache_dir))
    cfg = load_config(None, [f"model.path={path}", f"rollout.max_new_tokens={new_tokens}",
                             f"rollout.group_size={group_size}", f"train.micro_batch_size={prompts * group_size}",
                             "train.skip_zero_signal_steps=false", "run.torch_threads=1"])
    torch.set_num_threads(1)
    records = [r for _, r in gsm8k_completions(prompts)]
    worker = HFRolloutWorker(path, device="cpu")
    worker.model.generation_config.suppress_tokens = [worker.tokenizer.eos_token_id]  # full-length answers
    learner = Learner(cfg, path)
    scorer = RewardScorer([RewardSpec("math_verify"), RewardSpec("format", weight=0.1)], isolated=False)
    spec = SamplingSpec(n=group_size, max_new_tokens=new_tokens, seed=0)
    stages: dict[str, list[float]] = {s: [] for s in ("rollout", "reward", "learner_forward", "learner_update",
                                                       "weights")}
    for rep in range(repeats):
        t = time.perf_counter()
        batch = worker.generate(records, spec)
        stages["rollout"].append(time.perf_counter() - t)
        t = time.perf_counter()
        result = scorer.score(batch.response_texts, batch.prompts, batch.group_index.tolist())
        batch.rewards = torch.tensor(result.total)
        batch.correct = torch.tensor(result.correct)
        stages["reward"].append(time.perf_counter() - t)
        t = time.perf_counter()
        stats = learner.policy_stats(batch)
        batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
        stages["learner_forward"].append(time.perf_counter() - t)
        batch.advantages, _ = compute_advantages(batch, cfg)
        batch.advantages = torch.randn(batch.size, generator=torch.Generator().manual_seed(rep))  # a real update
        t = time.perf_counter()
        learner.update(batch)
        stages["learner_update"].append(time.perf_counter() - t)
        t = time.perf_counter()
        worker.set_weights(learner.get_weights(), rep + 1)
        stages["weights"].append(time.perf_counter() - t)
    medians = {k: statistics.median(v) for k, v in stages.items()}
    total = sum(medians.values())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        worker.generate(records[:1], SamplingSpec(n=group_size, max_new_tokens=min(new_tokens, 64), seed=1))
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    op_total = sum(e.self_cpu_time_total for e in ops)
    return {"model": "tiny_qwen (hidden 64, 2 layers, V=151,936)", "prompts": prompts, "group_size": group_size,
            "new_tokens": new_tokens, "prompt_tokens_max": int(batch.prompt_mask.sum(1).max()),
            "repeats": repeats, "stage_seconds": {k: spread(v) for k, v in stages.items()},
            "stage_share": {k: v / total for k, v in medians.items()},
            "rollout_tokens_per_s": prompts * group_size * new_tokens / medians["rollout"],
            "rollout_top_ops_self_cpu_share": {e.key: e.self_cpu_time_total / op_total for e in ops[:profile_ops]}}


def print_long_step(r: dict[str, Any]) -> None:
    print(f"\n6. one GRPO step at {r['new_tokens']} new tokens on {r['model']}: {r['prompts']} GSM8K prompts x "
          f"{r['group_size']} (prompts up to {r['prompt_tokens_max']} tokens; min/median/max of {r['repeats']})")
    rows = [[k, f"{v['min']:.3g}/{v['median']:.3g}/{v['max']:.3g}", f"{100 * r['stage_share'][k]:.1f}%"]
            for k, v in r["stage_seconds"].items()]
    print(table(["stage", "seconds", "share"], rows))
    print(f"rollout: {r['rollout_tokens_per_s']:.4g} tokens/s; top ops of a rollout by self CPU time: "
          + ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["rollout_top_ops_self_cpu_share"].items()))
