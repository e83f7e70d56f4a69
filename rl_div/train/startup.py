"""The order the policy's actors start in: the learner and the rollout engines.

Where they share a GPU (vLLM colocated, ``rollout.weight_sync: cuda_ipc``), the engine starts alone
and the learner only once the engine's constructor has finished. vLLM sizes its KV cache at start-up
from a profile of the GPU's memory (``gpu_memory_utilization`` of the total, less what is already
in use, asserting that the profile stays consistent): a learner loading its model at the same time
makes that size differ from run to run and can fire the assert. Engine first, then the learner into
what the (then sleeping) engine leaves, is deterministic. Elsewhere both start together.
"""

from __future__ import annotations

from typing import Any

from rl_div.cluster.actors import start_learner, wait_started
from rl_div.config import Config
from rl_div.train.rollout_pipeline import RolloutPipeline


def engines_start_first(cfg: Config) -> bool:
    """Whether the rollout engines must finish starting before the learner starts (colocated vLLM)."""
    return cfg.rollout.backend == "vllm" and cfg.rollout.weight_sync == "cuda_ipc"


def start_policy_actors(cfg: Config, model_path: str, placement: Any, counters: dict[str, float],
                        ) -> tuple[Any, RolloutPipeline]:
    """The learner (a LearnerGroup) and the rollout pipeline, started in the order above."""
    if engines_start_first(cfg):
        pipeline = RolloutPipeline(cfg, model_path, placement, None, counters)
        wait_started(pipeline.actors(), cfg.cluster.startup_timeout_s)
        pipeline.learner = start_learner(cfg, model_path, placement)
        return pipeline.learner, pipeline
    learner = start_learner(cfg, model_path, placement)
    return learner, RolloutPipeline(cfg, model_path, placement, learner, counters)
