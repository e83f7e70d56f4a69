"""``rl-div bench`` sections "sync" (the demo-sized tiny Llama) and "sync_50m" (a random ~50M-parameter
Llama): object_store weight sync from a single learner and from a 2-rank FSDP2 learner to one hf
rollout worker, through real Ray actors, in size-capped buckets (rl_div.sync.buckets)
against the old full state dict (learner.get_weights), side by side in one run.

Each sync runs as push_weights runs it, timed from the driver: the learner group's call until its
payload is ready (for fsdp2 that includes the group's gather of rank 0's value), then the worker's
set_weights (fetch and load). Reported per variant: min / median / max seconds end to end, the
median of each stage, the learner's own seconds inside the rank-0 actor (the same work run again,
apart), and rank 0's peak RSS above its baseline during that work, all pages and private pages
(shared object-store pages left out; MALLOC_MMAP_THRESHOLD_=1 MiB in every Ray process, so freed
buffers leave RSS). The variants' repeats interleave, so load drifts hit them alike.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

VARIANTS = (("single_full", "single", "full"), ("single_buckets", "single", "buckets"),
            ("fsdp2_n2_full", "fsdp2", "full"), ("fsdp2_n2_buckets", "fsdp2", "buckets"))


def _inside_learner(actor: Any, mode: str) -> tuple[float, dict[str, int]]:
    """Runs on each learner rank: seconds and peak RSS of building and putting the payload inside
    the actor (Ray's calls around it left out); the payload is dropped."""
    import ray

    from rl_div.bench.common import peak_rss_delta

    with peak_rss_delta() as mem:
        start = time.perf_counter()
        payload = actor.get_weight_buckets() if mode == "buckets" else ray.put(actor.get_weights())
        seconds = time.perf_counter() - start
    del payload
    return seconds, dict(mem)


def sync_once(group: Any, worker: Any, mode: str, version: int) -> dict[str, Any]:
    """One sync as push_weights runs it (the group's get_weight_buckets, or the old path: its
    get_weights), then the worker's set_weights on that ref (rank 0's), timed from the driver; then
    the same learner work again inside each rank for its time and peak RSS (rank 0's reported)."""
    import ray

    start = time.perf_counter()
    ref = group.get_weight_buckets() if mode == "buckets" else group.get_weights()
    ray.wait([ref], timeout=600)
    learner_s = time.perf_counter() - start
    ray.get(worker.set_weights.remote(ref, version), timeout=600)
    total_s = time.perf_counter() - start
    inside_s, mem = ray.get(group.on_every_rank(_inside_learner, mode))
    return {"total_s": total_s, "learner_s": learner_s, "worker_s": total_s - learner_s,
            "learner_inside_s": inside_s, "rss_peak_mb": mem["peak_delta"] / 2**20,
            "rss_private_peak_mb": mem["peak_private_delta"] / 2**20,
            "buckets": len(ray.get(ref).refs) if mode == "buckets" else 1}


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def measure_sync(groups: dict[str, Any], worker: Any, repeats: int) -> dict[str, Any]:
    """groups: "single" -> a LearnerGroup of one Learner, "fsdp2" -> one of 2 ShardedLearner ranks.
    One warm-up sync per variant, then `repeats` rounds of every variant."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in VARIANTS}
    version = 0
    for rnd in range(repeats + 1):
        for name, strategy, mode in VARIANTS:
            version += 1
            got = sync_once(groups[strategy], worker, mode, version)
            if rnd:
                runs[name].append(got)
    out: dict[str, Any] = {}
    for name, got in runs.items():
        out[name] = {"total_s": _spread([g["total_s"] for g in got]), "buckets": got[0]["buckets"],
                     **{k: statistics.median(g[k] for g in got) for k in ("learner_s", "worker_s",
                                                                          "learner_inside_s")},
                     **{k: max(g[k] for g in got) for k in ("rss_peak_mb", "rss_private_peak_mb")}}
    for strategy in ("single", "fsdp2_n2"):
        full, buckets = out[f"{strategy}_full"], out[f"{strategy}_buckets"]
        buckets["median_vs_full"] = buckets["total_s"]["median"] / full["total_s"]["median"]
        buckets["rss_private_vs_full"] = buckets["rss_private_peak_mb"] / max(full["rss_private_peak_mb"], 1e-9)
    out["fsdp2_n2_buckets"]["median_vs_single_buckets"] = (out["fsdp2_n2_buckets"]["total_s"]["median"]
                                                           / out["single_buckets"]["total_s"]["median"])
    return out


def bench_model(out_dir: str, size: str) -> tuple[str, int]:
    """The tiny Llama of the demo (~0.1M parameters) or a random 12-layer, width-512 one (~50M)."""
    from rl_div.models.loading import build_char_tokenizer, count_parameters, make_tiny_llama, save_policy
    from rl_div.tasks import TASKS

    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    shape = {} if size == "demo" else {"hidden_size": 512, "num_layers": 12, "num_heads": 8,
                                       "intermediate_size": 2048}
    model = make_tiny_llama(tok, seed=0, **shape)
    return str(save_policy(model, tok, os.path.join(out_dir, size))), count_parameters(model)


def bench_sync(size: str = "demo", repeats: int = 5, chunk_mb: float = 64.0) -> dict[str, Any]:
    """Start Ray (4 logical CPUs), one single learner, one 2-rank fsdp2 learner and one hf rollout
    worker on a fresh model of `size`, and measure every variant (see the module docstring)."""
    import ray

    from rl_div.bench.common import MMAP_THRESHOLD
    from rl_div.cluster.actors import init_ray, start_learner, start_rollout_worker, wait_started
    from rl_div.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path, params = bench_model(tmp, size)
        base = [f"model.path={path}", f"run.output_dir={tmp}", "cluster.num_cpus=4", "run.torch_threads=1",
                f"rollout.weight_sync_chunk_mb={chunk_mb}"]
        cfg = load_config(None, base)
        if ray.is_initialized():
            ray.shutdown()
        # Ray's workers inherit it: freed buffers then leave RSS, as in the entropy section
        before = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
        try:
            init_ray(cfg)
            groups = {"single": start_learner(cfg, path),
                      "fsdp2": start_learner(load_config(None, [*base, "train.strategy=fsdp2",
                                                                "train.num_learners=2"]), path)}
            worker = start_rollout_worker(cfg, path)
            actors = {f"{k} rank {i}": a for k, g in groups.items() for i, a in enumerate(g.actors)}
            wait_started({**actors, "rollout worker": worker}, timeout_s=600)
            ray.get(groups["fsdp2"].setup)
            load_before = os.getloadavg()
            out = measure_sync(groups, worker, repeats)
            load_after = os.getloadavg()
        finally:
            ray.shutdown()
            os.environ.pop("MALLOC_MMAP_THRESHOLD_")
            if before is not None:
                os.environ["MALLOC_MMAP_THRESHOLD_"] = before
    return {"model": size, "parameters": params, "chunk_mb": chunk_mb, "repeats": repeats, **out,
            "loadavg_before": list(load_before), "loadavg_after": list(load_after)}


def print_sync(r: dict[str, Any]) -> None:
    print(f"\nweight sync (object_store, 1 hf worker): {r['model']} model, {r['parameters'] / 1e6:.1f}M parameters, "
          f"buckets of {r['chunk_mb']:g} MB, {r['repeats']} syncs each (load average "
          f"{r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f})")
    print("  variant            total s: min  median  max   learner s (inside)  worker s  buckets  "
          "rank-0 peak RSS MB (private)")
    for name, _, _ in VARIANTS:
        v, t = r[name], r[name]["total_s"]
        print(f"  {name:17s} {t['min']:11.3f} {t['median']:7.3f} {t['max']:6.3f} {v['learner_s']:10.3f} "
              f"({v['learner_inside_s']:.3f}) {v['worker_s']:9.3f} {v['buckets']:8d}  {v['rss_peak_mb']:8.1f} "
              f"({v['rss_private_peak_mb']:.1f})")
    for name in ("single_buckets", "fsdp2_n2_buckets"):
        v = r[name]
        print(f"  {name}: median x{v['median_vs_full']:.2f} of full dict, private peak RSS "
              f"x{v['rss_private_vs_full']:.2f} of full dict")
    print(f"  fsdp2_n2_buckets: median x{r['fsdp2_n2_buckets']['median_vs_single_buckets']:.2f} of single_buckets")
