"""Rollout backends side by side: hf (transformers generate) vs vllm on the same batch, one process.

    .venv-vllm/bin/python launch/bench_rollout.py                      # the lane's tiny model
    .venv-vllm/bin/python launch/bench_rollout.py --hidden-size 256 --layers 4 --heads 4
    .venv-vllm/bin/python launch/bench_rollout.py --model PATH --prompts 16 --n 8

Measures start-up of each backend, rollout seconds per step (median over --repeats seeds after a
warm-up call), object-store weight-sync time into each backend, and vLLM's log-prob gap to the
learner's forward pass after a sync (and, for contrast, with the sync skipped). Prints a table and
one JSON line. torch threads are the same for both backends (--threads; the trainer's default
actor setting is 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a saved policy directory (default: bootstrap the lane's tiny model)")
    p.add_argument("--hidden-size", type=int, help="instead: a random Llama of this width (char tokenizer)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4, help="vLLM on CPU needs head size (hidden/heads) >= 32")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def make_model(args: argparse.Namespace, workdir: Path) -> tuple[str, str]:
    """(model path, description)."""
    if args.model:
        return args.model, args.model
    if args.hidden_size:
        from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, model_summary, save_policy

        tok = build_char_tokenizer()
        model = make_tiny_llama(tok, hidden_size=args.hidden_size, num_layers=args.layers, num_heads=args.heads,
                                intermediate_size=4 * args.hidden_size, max_position_embeddings=256)
        return str(save_policy(model, tok, workdir / "random")), f"random llama {model_summary(model)}"
    from rl_div.models.bootstrap import bootstrap_base_model

    path = bootstrap_base_model("prime_gap", workdir / "bootstrap", steps=40, seed=0, num_heads=1, log=None)
    return str(path), "tiny prime_gap bootstrap (hidden 64, 2 layers, 1 head)"


def timed(fn: Any, *a: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - start, out


def main() -> None:
    args = parse_args()
    # Both backends get the same intra-op threads; vLLM keeps an external OMP_NUM_THREADS.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from rl_div.data import PromptRecord
    from rl_div.learner.single import policy_forward
    from rl_div.rollout.base import SamplingSpec
    from rl_div.rollout.hf import HFRolloutWorker
    from rl_div.rollout.vllm import VLLMRolloutWorker
    from rl_div.tasks import get_task
    from rl_div.train.step_stats import rollout_health

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    path, described = make_model(args, workdir)
    records = get_task("prime_gap").make_prompts("train", args.prompts, seed=0) if not args.hidden_size else [
        PromptRecord(prompt=f"{i} + {i} = ", answer="") for i in range(args.prompts)]
    specs = [SamplingSpec(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=s)
             for s in range(args.repeats + 1)]
    results: dict[str, Any] = {"model": described, "prompts": args.prompts, "n": args.n,
                               "max_new_tokens": args.max_new_tokens, "threads": args.threads}

    # hf first: vLLM replaces torch.set_num_threads in-process once its engine starts.
    t_hf_start, hf = timed(HFRolloutWorker, path)
    hf_times, hf_tokens = rollout_times(hf, records, specs)
    learner = hf.model  # stands in for the learner: same weights, and we perturb it below
    t_vllm_start, vl = timed(VLLMRolloutWorker, path)
    vllm_times, vllm_tokens = rollout_times(vl, records, specs)

    # A learner step (a deterministic perturbation of every weight), then sync into both backends.
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for p in learner.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    stale = vl.generate(records, specs[0])  # sync skipped
    sync_vllm = [timed(vl.set_weights, state, i + 1)[0] for i in range(args.repeats)]
    sync_hf = [timed(hf.set_weights, state, i + 1)[0] for i in range(args.repeats)]
    fresh = vl.generate(records, specs[0])
    for name, batch in (("gap_after_sync", fresh), ("gap_sync_skipped", stale)):
        with torch.no_grad():
            batch.old_logprobs = policy_forward(learner, batch, chunk_rows=1024)[0]
        health = rollout_health(batch)
        results[f"{name}_mean"] = health["sync/logprob_gap_mean"]
        results[f"{name}_max"] = health["sync/logprob_gap_max"]

    results.update({
        "hf_startup_s": t_hf_start, "vllm_startup_s": t_vllm_start,
        "hf_rollout_s": statistics.median(hf_times), "vllm_rollout_s": statistics.median(vllm_times),
        "hf_tokens_per_step": hf_tokens, "vllm_tokens_per_step": vllm_tokens,
        "hf_sync_s": statistics.median(sync_hf), "vllm_sync_s": statistics.median(sync_vllm),
        "state_dict_mb": sum(t.numel() * t.element_size() for t in state.values()) / 2**20,
    })
    results["rollout_speedup_vllm_over_hf"] = results["hf_rollout_s"] / results["vllm_rollout_s"]
    print_table(results)
    print(json.dumps(results))


def rollout_times(worker: Any, records: list, specs: list) -> tuple[list[float], float]:
    """Seconds per generate() for specs[1:] after a warm-up with specs[0]; mean sampled tokens."""
    worker.generate(records, specs[0])
    times, tokens = [], []
    for spec in specs[1:]:
        seconds, batch = timed(worker.generate, records, spec)
        times.append(seconds)
        tokens.append(int(batch.response_mask.sum()))
    return times, statistics.mean(tokens)


def print_table(r: dict[str, Any]) -> None:
    print(f"\nmodel: {r['model']}; batch {r['prompts']} prompts x {r['n']} samples, <= {r['max_new_tokens']} "
          f"new tokens; torch threads {r['threads']}")
    print(f"{'':24}{'hf':>12}{'vllm':>12}")
    print(f"{'start-up (s)':24}{r['hf_startup_s']:12.2f}{r['vllm_startup_s']:12.2f}")
    print(f"{'rollout / step (s)':24}{r['hf_rollout_s']:12.3f}{r['vllm_rollout_s']:12.3f}")
    print(f"{'sampled tokens / step':24}{r['hf_tokens_per_step']:12.0f}{r['vllm_tokens_per_step']:12.0f}")
    print(f"{'weight sync (s)':24}{r['hf_sync_s']:12.4f}{r['vllm_sync_s']:12.4f}")
    print(f"rollout speed-up vllm/hf: {r['rollout_speedup_vllm_over_hf']:.2f}x; state dict {r['state_dict_mb']:.2f} MB")
    print(f"vllm log-prob gap after sync: mean {r['gap_after_sync_mean']:.2e}, max {r['gap_after_sync_max']:.2e}; "
          f"sync skipped: mean {r['gap_sync_skipped_mean']:.2e}, max {r['gap_sync_skipped_max']:.2e}\n")


if __name__ == "__main__":
    main()
