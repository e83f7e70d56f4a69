"""A user-style plugin registering a rollout backend by import (tests use "plugins.my_backend").

The echo worker needs no model: it answers every prompt with ``answer_ids`` at log-prob 0 and
records the weights version it was given. One module declares it (worker class, transports, GPU
rule, cluster rule, worker arguments), which is all a new backend takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rl_div.config import Config, RolloutConfig, TrainConfig
from rl_div.config.rollout_backends import RolloutBackend, register_rollout_backend
from rl_div.data import PromptRecord, RolloutBatch
from rl_div.rollout.base import SamplingSpec, build_rollout_batch

PROMPT_IDS = [5, 6]


class EchoRolloutWorker:
    """Prompt tokens PROMPT_IDS, responses answer_ids, log-probs 0: a batch computable by hand."""

    def __init__(self, model_path: str, *, dtype: str = "float32", trust_remote_code: bool = False,
                 use_chat_template: bool | None = None, prompt_template: str = "{prompt}",
                 answer_ids: tuple[int, ...] = (1,)) -> None:
        self.model_path, self.answer_ids, self.version = model_path, list(answer_ids), 0

    def generate(self, prompts: list[PromptRecord], spec: SamplingSpec) -> RolloutBatch:
        rows = len(prompts) * spec.n
        return build_rollout_batch(prompts, [PROMPT_IDS] * len(prompts), [self.answer_ids] * rows,
                                   [[0.0] * len(self.answer_ids)] * rows, ["echo"] * rows, [False] * rows, spec.n,
                                   self.version)

    def set_weights(self, weights: Any, version: int) -> None:
        self.version = version

    def policy_version(self) -> int:
        return self.version


def echo_gpu_problems(rollout: RolloutConfig, train: TrainConfig) -> list[str]:
    if rollout.num_gpus_per_worker > 0:
        return [f"rollout.num_gpus_per_worker={rollout.num_gpus_per_worker:g}: the echo backend runs on CPU (use 0)"]
    return []


def echo_cluster_problems(rollout: RolloutConfig, total: Mapping[str, float]) -> list[str]:
    return [] if total.get("echo", 0.0) > 0 else ["the echo backend needs a cluster with an 'echo' resource"]


def echo_worker_args(cfg: Config, num_gpus: float) -> dict[str, Any]:
    return {"answer_ids": (cfg.run.seed, cfg.rollout.max_new_tokens)}


register_rollout_backend(RolloutBackend(
    "test_echo", "plugins.my_backend:EchoRolloutWorker", transports=("object_store", "nccl"),
    gpu_problems=echo_gpu_problems, cluster_problems=echo_cluster_problems, worker_args=echo_worker_args))
