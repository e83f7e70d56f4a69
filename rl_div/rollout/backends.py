"""Rollout workers by backend name; each is instantiated inside its Ray actor process.

What a backend is (worker class, transports, GPU rules, worker arguments) is declared in
rl_div.config.rollout_backends, where the config check reads it too."""

from __future__ import annotations

from typing import Any

from rl_div.config.rollout_backends import ROLLOUT_BACKENDS
from rl_div.rollout.base import RolloutWorker


def make_rollout_worker(backend: str, **kwargs: Any) -> RolloutWorker:
    """Instantiate a backend by name (inside the Ray actor process, after the run's plugins imported)."""
    return ROLLOUT_BACKENDS.get(backend)(**kwargs)
