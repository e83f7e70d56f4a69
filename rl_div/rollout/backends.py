"""Rollout backends by name; each is instantiated inside its Ray actor process."""

from __future__ import annotations

from typing import Any

from rl_div.rollout.base import RolloutWorker


def make_rollout_worker(backend: str, **kwargs: Any) -> RolloutWorker:
    """Instantiate a backend by name (inside the Ray actor process)."""
    if backend == "hf":
        from rl_div.rollout.hf import HFRolloutWorker

        return HFRolloutWorker(**kwargs)
    if backend == "vllm":
        from rl_div.rollout.vllm import VLLMRolloutWorker  # type: ignore[import-not-found]

        return VLLMRolloutWorker(**kwargs)
    raise ValueError(f"unknown rollout backend {backend!r} (valid: hf, vllm)")
