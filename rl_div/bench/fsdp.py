"""``rl-div bench`` sections "fsdp" and "fsdp_50m": per-update time of the FSDP2 learner with 1 and 2
ranks against the single learner, on the demo model (the tiny Llama of the prime_gap task) or a
random ~50M-parameter Llama (rl_div.bench.sync's), side by side in one run. Every
variant runs in spawned processes (gloo between ranks), on the same scored batch; reported as
min / median / max seconds per update and as the median's ratio to single's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from rl_div.data import RolloutBatch

OVERRIDES = ["train.micro_batch_size=16", "train.lr=0.001", "rollout.max_new_tokens=8"]


def _cfg(model_path: str, out: str, extra: list[str]) -> Any:
    from rl_div.config import load_config

    return load_config(None, [f"model.path={model_path}", f"run.output_dir={out}", *OVERRIDES, *extra])


def _time_updates(rank: int, world: int, port: int, model_path: str, out: str, strategy: str,
                  batch: RolloutBatch, repeats: int) -> list[float]:
    """Seconds of each of `repeats` updates on this rank (after one warm-up update)."""
    from rl_div.learner.plan import plan_batch

    torch.set_num_threads(1)
    if strategy == "single":
        from rl_div.learner.single import Learner

        learner = Learner(_cfg(model_path, out, []), model_path)
        step: Any = lambda: learner.update(batch)  # noqa: E731
    else:
        import torch.distributed as dist

        from rl_div.learner.fsdp2 import ShardedLearner

        cfg = _cfg(model_path, out, ["train.strategy=fsdp2", f"train.num_learners={world}"])
        learner = ShardedLearner(cfg, model_path, rank, world)
        learner.setup(("127.0.0.1", port))
        step = lambda: learner.run_plans(batch, plan_batch(batch, cfg, world, learner.version))  # noqa: E731
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if strategy != "single":
        dist.barrier()
        dist.destroy_process_group()
    return times


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scored_batch(model_path: str, out: str, prompts: int, group_size: int) -> RolloutBatch:
    from rl_div.learner.single import Learner
    from rl_div.rollout.base import SamplingSpec
    from rl_div.rollout.hf import HFRolloutWorker
    from rl_div.tasks import TASKS

    worker = HFRolloutWorker(model_path, dtype="float32", device="cpu")
    batch = worker.generate(TASKS["prime_gap"].make_prompts("train", prompts, seed=0),
                            SamplingSpec(n=group_size, max_new_tokens=8, seed=0))
    stats = Learner(_cfg(model_path, out, []), model_path).policy_stats(batch)
    batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
    batch.advantages = torch.linspace(-1.0, 1.0, batch.size)
    return batch


def bench_fsdp(repeats: int = 10, prompts: int = 16, group_size: int = 8, size: str = "demo") -> dict[str, Any]:
    """single vs fsdp2 N=1 vs fsdp2 N=2 per-update seconds on one batch of prompts x group_size rows,
    on the model of `size` ("demo" or "50m")."""
    from rl_div.bench.sync import bench_model

    with tempfile.TemporaryDirectory() as tmp:
        model_path, params = bench_model(tmp, size)
        batch = _scored_batch(model_path, tmp, prompts, group_size)
        load_before = os.getloadavg()
        out: dict[str, Any] = {"rows": batch.size, "repeats": repeats, "parameters": params}
        with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
            for name, strategy, world in (("single", "single", 1), ("fsdp2_n1", "fsdp2", 1),
                                          ("fsdp2_n2", "fsdp2", 2)):
                port = _port()
                futures = [pool.submit(_time_updates, r, world, port, model_path, tmp, strategy, batch, repeats)
                           for r in range(world)]
                times = [f.result() for f in futures][0]
                out[name] = {"min_s": min(times), "median_s": statistics.median(times), "max_s": max(times)}
        for name in ("fsdp2_n1", "fsdp2_n2"):
            out[name]["median_vs_single"] = out[name]["median_s"] / out["single"]["median_s"]
        out["loadavg_before"], out["loadavg_after"] = list(load_before), list(os.getloadavg())
    return out


def print_fsdp(r: dict[str, Any]) -> None:
    print(f"\nfsdp: seconds per update, {r['parameters'] / 1e6:.1f}M parameters, {r['rows']} rows, "
          f"{r['repeats']} updates each "
          f"(load average {r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f})")
    for name in ("single", "fsdp2_n1", "fsdp2_n2"):
        v = r[name]
        ratio = f"  x{v['median_vs_single']:.2f} of single" if "median_vs_single" in v else ""
        print(f"  {name:9s} min {v['min_s']:.3f}  median {v['median_s']:.3f}  max {v['max_s']:.3f}{ratio}")
