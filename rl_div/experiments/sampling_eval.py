"""``rl-div eval`` without the training machinery: the Trainer's own evaluation (``Trainer.evaluate``,
so the numbers are a run's) on rollout workers and the reward worker alone, with no learner actor, no
optimizer and no checkpoints.

The reward worker starts once for the whole command; the rollout workers start once per model (the
model, then its reference), and every seed runs on them. The samples' log-probs and entropies (the
``policy/entropy`` of an evaluation) come from each rollout worker's own copy of the policy through
the learner's forward (rl_div.learner.forward.response_stats), which a backend declaring
``holds_policy_module`` (hf) allows. A backend that does not (vLLM) keeps the full Trainer:
:func:`samples_without_learner` says which.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import ray
import torch

from rl_div.cluster.actors import init_ray, start_reward_worker, wait_started
from rl_div.config import Config
from rl_div.config.rollout_backends import ROLLOUT_BACKENDS
from rl_div.data import RolloutBatch
from rl_div.run.tracking import Tracker
from rl_div.train.loop import Trainer
from rl_div.train.rollout_pipeline import RolloutPipeline

log = logging.getLogger("rl_div")


def samples_without_learner(cfg: Config) -> bool:
    """Whether the config's rollout backend computes log-probs and entropies on its own workers."""
    return ROLLOUT_BACKENDS.get(cfg.rollout.backend).holds_policy_module


class EvalActors:
    """The actors one ``rl-div eval`` keeps across models and seeds: the reward worker (started once)
    and the rollout workers of the model evaluated now (started again only when the model changes).
    ``close()`` stops them."""

    def __init__(self) -> None:
        self.rewarder: Any = None
        self.pipeline: RolloutPipeline | None = None
        self.rollout_key = self.reward_key = ""  # the config parts the running actors were built from

    def rollout_workers(self, cfg: Config, model_path: str, counters: dict[str, float]) -> RolloutPipeline:
        """The rollout workers holding ``model_path`` (no learner: the weights are the ones they load);
        started, not waited for (:meth:`wait_started`)."""
        key = model_path + cfg.model_dump_json(include={"model", "rollout", "data", "train", "run"},
                                               exclude={"run": {"seed", "name", "output_dir"}})
        if self.pipeline is None or self.rollout_key != key:
            self.close_rollout()
            # each worker reserves its own resources (no placement group: no learner shares its device)
            self.pipeline = RolloutPipeline(cfg, model_path, None, None, counters)
            self.rollout_key = key
        self.pipeline.counters = counters  # faults/rollout_restarts of the evaluation using them
        return self.pipeline

    def reward_worker(self, cfg: Config) -> Any:
        key = cfg.model_dump_json(include={"reward", "eval", "run"}, exclude={"run": {"seed", "name", "output_dir"}})
        if self.rewarder is None or self.reward_key != key:
            self.close_reward()
            self.rewarder = start_reward_worker(cfg)
            self.reward_key = key
        return self.rewarder

    def wait_started(self, timeout_s: float) -> None:
        """Until every actor's constructor has finished (those already up answer at once)."""
        assert self.pipeline is not None
        wait_started({"reward worker": self.rewarder, **self.pipeline.actors()}, timeout_s)

    def close_rollout(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        self.pipeline = None

    def close_reward(self) -> None:
        if self.rewarder is not None:
            with contextlib.suppress(Exception):  # shutting down: an actor already gone is fine
                ray.kill(self.rewarder)
        self.rewarder = None

    def close(self) -> None:
        self.close_rollout()
        self.close_reward()


class SamplingEvaluation(Trainer):
    """A Trainer that only evaluates: ``evaluate()`` writes OUT/eval/step_000000.json and its metrics row
    exactly as a run's step-0 evaluation does, on the actors of an :class:`EvalActors`."""

    def __init__(self, cfg: Config, actors: EvalActors) -> None:
        self.actors = actors
        super().__init__(cfg)

    def _start(self, resume: bool) -> None:
        cfg = self.cfg
        self._load_inputs()
        init_ray(cfg)
        self.learner = None
        self.rewarder = self.actors.reward_worker(cfg)  # both start at once and load meanwhile
        self.pipeline = self.actors.rollout_workers(cfg, self.model_path, self.counters)
        self.actors.wait_started(cfg.cluster.startup_timeout_s)
        self.step = 0
        self.tracker = Tracker(self.out, cfg.tracking, cfg.run.name, cfg.model_dump(mode="json"), 0)

    def policy_stats(self, batch: RolloutBatch, temperature: float | None = None,
                     with_prompt: bool = False) -> RolloutBatch:
        """old_logprobs / old_entropy from the rollout workers' copies (rows split over the workers)."""
        cfg = self.cfg
        temperature = cfg.rollout.temperature if temperature is None else temperature
        workers = self.pipeline.workers
        bounds = [i * batch.size // len(workers) for i in range(len(workers) + 1)]
        shards = [(w, list(range(a, b))) for w, a, b in zip(workers, bounds, bounds[1:], strict=False) if b > a]
        futures = [w.policy_stats.remote(batch.select(rows), temperature, cfg.train.micro_batch_size,
                                         cfg.train.logit_chunk_rows) for w, rows in shards]
        parts = ray.get(futures, timeout=cfg.rollout.generate_timeout_s)
        batch.old_logprobs = torch.cat([p["old_logprobs"] for p in parts])
        batch.old_entropy = torch.cat([p["old_entropy"] for p in parts])
        return batch

    def restart_reward_worker(self) -> None:
        super().restart_reward_worker()
        self.actors.rewarder = self.rewarder  # the next model's evaluation uses the new one

    def close(self) -> None:
        """The log file, the metrics and the output lock; the shared actors stay up (EvalActors.close)."""
        for shared in ("pipeline", "rewarder"):
            self.__dict__.pop(shared, None)
        super().close()


__all__ = ["EvalActors", "SamplingEvaluation", "samples_without_learner"]
