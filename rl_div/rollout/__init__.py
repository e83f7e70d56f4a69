"""Rollout backends: each samples G responses per prompt and returns a RolloutBatch.

Backends are plain classes, declared by name in rl_div.config.rollout_backends; rl_div.cluster.actors
wraps them as Ray actors. ``hf`` uses transformers generate; ``vllm`` a vLLM engine with weight sync
through a worker extension.
"""

from rl_div.rollout.backends import make_rollout_worker
from rl_div.rollout.base import RolloutWorker, SamplingSpec, build_rollout_batch

__all__ = ["RolloutWorker", "SamplingSpec", "build_rollout_batch", "make_rollout_worker"]
