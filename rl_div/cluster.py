"""Ray: start locally or connect to a cluster, and place the rollout, reward and learner actors.

Every actor imports the run's plugin modules before it reads a registry, so a user-registered
advantage, loss or reward works inside Ray workers as it does in the driver.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import ray

from rl_div.config import Config

log = logging.getLogger("rl_div")

# Per-actor weight-loading progress bars would drown the run's own progress bar.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "RAY_DEDUP_LOGS": "1"}


def init_ray(cfg: Config) -> None:
    """Connect to cfg.cluster.address / RAY_ADDRESS if set, else start a local Ray (no dashboard)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    env_vars = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"), "TOKENIZERS_PARALLELISM": "false",
                **QUIET_ENV}
    if address:
        # On a cluster, code and plugins travel with `ray job submit --working-dir` (launch/).
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True)
        return
    # Locally the workers see the driver's import path, so plugin modules next to the run resolve.
    paths = [p for p in [os.getcwd(), *sys.path] if p and os.path.isdir(p)]
    env_vars["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    ray.init(num_cpus=cfg.cluster.num_cpus, include_dashboard=False, runtime_env={"env_vars": env_vars},
             log_to_driver=True, logging_level=logging.WARNING)


class RolloutHost:
    """Ray actor body for one rollout worker of any backend."""

    def __init__(self, backend: str, plugins: list[str], torch_threads: int, **worker_kwargs: Any) -> None:
        import torch

        from rl_div.registry import import_plugins
        from rl_div.rollout import make_rollout_worker

        import_plugins(plugins)
        torch.set_num_threads(torch_threads)
        self.worker = make_rollout_worker(backend, **worker_kwargs)

    def generate(self, prompts: list, spec: Any) -> Any:
        return self.worker.generate(prompts, spec)

    def set_weights(self, weights: Any, version: int) -> int:
        self.worker.set_weights(weights, version)
        return version

    def policy_version(self) -> int:
        return self.worker.policy_version()

    def pid(self) -> int:
        return os.getpid()


class RewardHost:
    """Ray actor body that scores batches; keeps its isolated verifier process alive across steps."""

    def __init__(self, cfg: Config) -> None:
        from rewards import RewardScorer, RewardSpec
        from rl_div.registry import import_plugins

        import_plugins(cfg.run.plugins)
        specs = [RewardSpec(name=r.name, weight=r.weight, params=dict(r.params)) for r in cfg.reward.rewards]
        r = cfg.reward
        self.scorer = RewardScorer(specs, timeout_s=r.timeout_s, isolated=r.isolated, plugins=list(cfg.run.plugins),
                                   workers=r.num_workers or min(usable_cpus(), 16),
                                   items_per_call=r.items_per_call, group_timeout_s=r.group_timeout_s)

    def score(self, completions: list[str], records: list, group_index: list[int]) -> Any:
        return self.scorer.score(completions, records, group_index)

    def embed(self, texts: list[str]) -> Any:
        from rewards.embedding import embed

        return embed(texts)

    def close(self) -> None:
        self.scorer.close()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def rollout_actor_options(cfg: Config) -> dict[str, Any]:
    return {"num_cpus": cfg.rollout.num_cpus_per_worker, "num_gpus": cfg.rollout.num_gpus_per_worker,
            "max_restarts": 0}


def start_rollout_worker(cfg: Config, model_path: str) -> Any:
    """A new rollout actor holding the policy at model_path (weights are pushed after start)."""
    actor_cls = ray.remote(RolloutHost).options(**rollout_actor_options(cfg))
    return actor_cls.remote(
        cfg.rollout.backend, list(cfg.run.plugins), cfg.run.torch_threads,
        model_path=model_path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code,
        use_chat_template=cfg.model.use_chat_template, prompt_template=cfg.data.prompt_template,
        **({"tensor_parallel_size": cfg.rollout.tensor_parallel_size,
            "gpu_memory_utilization": cfg.rollout.gpu_memory_utilization, "seed": cfg.run.seed,
            "weight_sync": cfg.rollout.weight_sync, "sync_chunk_mb": cfg.rollout.weight_sync_chunk_mb,
            "sync_timeout_s": cfg.rollout.weight_sync_timeout_s}
           if cfg.rollout.backend == "vllm" else {"max_batch_rows": cfg.rollout.max_batch_rows}),
    )


def start_learner(cfg: Config, model_path: str) -> Any:
    from rl_div.learner import Learner

    return ray.remote(Learner).options(num_cpus=cfg.train.num_cpus, num_gpus=cfg.train.num_gpus).remote(
        cfg, model_path)


def start_reward_worker(cfg: Config) -> Any:
    # No CPU reservation: scoring alternates with rollout and learning within a step.
    return ray.remote(RewardHost).options(num_cpus=0).remote(cfg)
