"""``rl-div bench`` section "lora" (the ~21M Llama) and "lora_50m": full fine-tuning vs LoRA r = 8 / 64.

One process, one sampled batch of the --vs-trl work (16 prompts x 8 samples, 4 new tokens, float32,
one torch thread); for each case a learner on the same model:
- update CPU seconds per step (policy_stats + update, as the trainer runs them with a KL reference),
  interleaved rounds with the order rotated, ratios to full fine-tuning taken inside each round;
- peak RSS growth of the first update (gradients + AdamW state allocated; CPU torch has no allocator
  statistics, see rl_div.bench.common.peak_rss_delta);
- sync bytes (what the object-store buckets carry, in model.dtype) and the learner-side seconds to
  stream and pack them (LoRA ships adapters to hf workers; 'merged' for vLLM ships full-size tensors).
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

CASES = {"full": [], "lora_r8": ["train.lora.enabled=true", "train.lora.rank=8", "train.lora.alpha=16"],
         "lora_r64": ["train.lora.enabled=true", "train.lora.rank=64", "train.lora.alpha=128"]}


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def bench_lora(size: str = "20m", repeats: int = 3) -> dict[str, Any]:
    import torch

    from rl_div.bench.common import REPO, peak_rss_delta
    from rl_div.bench.sync import bench_model
    from rl_div.bench.vs_trl import GROUP, NEW_TOKENS, PROMPTS, _overrides, llama_20m
    from rl_div.config import load_config
    from rl_div.learner.single import Learner
    from rl_div.models.loading import count_parameters, load_policy
    from rl_div.rollout.base import SamplingSpec
    from rl_div.rollout.hf import HFRolloutWorker
    from rl_div.sync.buckets import pack_bucket
    from rl_div.train.prompts import PromptStream, load_splits

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="rl_div_lora_"))
    path = llama_20m(work) if size == "20m" else bench_model(str(work), size)[0]  # "demo" (tests) or "50m"
    base = [*_overrides(path, 1, 1e-4, str(work)), "train.use_ref_model=true", "algo.loss_params={kl_coef: 0.01}"]
    cfgs = {name: load_config(REPO / "configs" / "demo_grpo.yaml", [o for o in base if o != "algo=grpo"] + extra)
            for name, extra in CASES.items()}
    prompts = PromptStream(load_splits(cfgs["full"].data, 0)[0].records, 0).next_batch(PROMPTS)
    batch = HFRolloutWorker(path, device="cpu").generate(prompts, SamplingSpec(n=GROUP, max_new_tokens=NEW_TOKENS))
    batch.advantages = torch.linspace(-1, 1, batch.size)
    out: dict[str, Any] = {"model": size, "parameters": count_parameters(load_policy(path)[0]), "rows": batch.size}

    def step(learner: Learner) -> None:
        b = copy.deepcopy(batch)
        stats = learner.policy_stats(b)
        b.old_logprobs, b.old_entropy, b.ref_logprobs = stats["old_logprobs"], stats["old_entropy"], \
            stats["ref_logprobs"]
        learner.update(b)

    learners, cases = {}, {}
    for name, cfg in cfgs.items():
        learner = learners[name] = Learner(cfg, path)
        with peak_rss_delta() as peak:
            step(learner)  # the first update allocates gradients and AdamW state
        trainable = sum(p.numel() for p in learner.model.parameters() if p.requires_grad)
        start = time.perf_counter()
        payload = learner.get_weight_buckets(put=pack_bucket)
        sync_s = time.perf_counter() - start
        sync_bytes = sum(t.numel() * t.element_size() for _, t in learner.sync_tensors())
        cases[name] = {"trainable": trainable, "first_update_peak_mb": peak["peak_private_delta"] / 2**20,
                       "sync_mb": sync_bytes / 2**20, "sync_tensors": sum(len(n) for n in payload.names),
                       "sync_build_s": sync_s}
    rounds: list[dict[str, dict[str, float]]] = []
    names = list(CASES)
    for r in range(repeats):
        done = {}
        for name in names[r % len(names):] + names[: r % len(names)]:
            load, cpu = os.getloadavg()[0], time.process_time()
            step(learners[name])
            done[name] = {"cpu_s": time.process_time() - cpu, "load": load}
        rounds.append(done)
        print(f"[lora round {r + 1}/{repeats}] " + "; ".join(f"{n} {d['cpu_s']:.3f} cpu-s (load {d['load']:.1f})"
                                                             for n, d in done.items()), flush=True)
    for name in names:
        cases[name]["update_cpu_s"] = _spread([rd[name]["cpu_s"] for rd in rounds])
        cases[name]["update_vs_full"] = _spread([rd[name]["cpu_s"] / rd["full"]["cpu_s"] for rd in rounds])
        cases[name]["sync_bytes_vs_full"] = cases[name]["sync_mb"] / cases["full"]["sync_mb"]
        cases[name]["trainable_fraction"] = cases[name]["trainable"] / out["parameters"]
    out.update(cases=cases, loads=[d["load"] for rd in rounds for d in rd.values()])
    return out


def print_lora(r: dict[str, Any]) -> None:
    from rl_div.bench.common import table

    print(f"\nfull fine-tuning vs LoRA, {r['model']} model ({r['parameters'] / 1e6:.1f}M parameters, {r['rows']} rows; "
          f"update = policy_stats + update with a KL reference, process CPU seconds; loads "
          f"{[round(x, 1) for x in r['loads']]})")
    rows = []
    for name, c in r["cases"].items():
        u, v = c["update_cpu_s"], c["update_vs_full"]
        rows.append([name, c["trainable_fraction"], u["median"], v["min"], v["median"], v["max"],
                     c["first_update_peak_mb"], c["sync_mb"], c["sync_bytes_vs_full"], c["sync_build_s"]])
    print(table(["case", "trainable", "update s", "/full min", "median", "max", "1st update peak MB", "sync MB",
                 "sync/full", "sync build s"], rows))
