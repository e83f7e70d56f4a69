"""The rollout pipeline: the rollout actors, the batches generating on them, and the weight sync.

``rollout.max_off_policy_steps`` = k batches are kept generating ahead of the learner. Step t
launches batch t + k (prompts fetched now) and collects batch t, so with k = 1 the engines sample
batch t + 1 with weights of version t while the learner trains on batch t; k = 0 launches and
collects the same batch, today's synchronous loop. Ordering rests on Ray running one actor's calls in
submission order (the rollout actors are synchronous, max_concurrency 1): a weight sync issued after
a launch reaches each engine after that generation, and a launch issued after a sync samples with the
new weights. :meth:`RolloutPipeline.sync_weights` also waits for the in-flight generations to finish
before it pushes (so its timeout measures the push alone, and NCCL never broadcasts to a busy engine).
As a consequence evaluation, which always follows a sync, samples with the learner's current version
with nothing in flight on the engines (the generated batch waits in the object store): the pipeline
drains, evaluation never mixes versions.

Faults: a rollout actor that died while its shard was in flight is restarted (given the current
weights) and the shard regenerated, counted in ``faults/rollout_restarts``; the regenerated rows
carry their own ``behavior_version``, so the importance correction stays exact. A sync that fails
while rollout actors are alive raises (WeightSyncError) naming the batches in flight.

Colocated (``rollout.colocate``): the one worker is the learner actor itself
(rl_div.cluster.colocated); a sync only reads the learner's version, nothing is pushed, and a failed
generation is the learner's failure (nothing to restart).

Checkpoints: the batches in flight are part of the run's state. :meth:`save` collects them (they
are finished: the step's sync waited for them) into ``in_flight.pt``, and :meth:`load` queues them
again, so a resumed run trains on the very batches (same prompts, tokens and behaviour log-probs) an
uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch

from rl_div.cluster.actors import start_rollout_worker, wait_started
from rl_div.config import Config
from rl_div.data import PromptRecord, RolloutBatch
from rl_div.rollout.base import SamplingSpec
from rl_div.sync.buckets import WeightSyncError
from rl_div.sync.payloads import NcclGroup
from rl_div.sync.push import nccl_group_on, push_weights

log = logging.getLogger("rl_div")

IN_FLIGHT_FILE = "in_flight.pt"


@dataclass
class InFlight:
    """One batch launched on the rollout actors: per worker its shard, sampling spec and future."""

    salt: int
    shards: list[list[PromptRecord]]
    specs: list[SamplingSpec]
    launch_step: int = 0  # the training step that launched it (dynamic sampling bounds a group's age by it)
    futures: list[Any] = field(default_factory=list)  # ObjectRef or None (empty shard) per worker
    workers: list[Any] = field(default_factory=list)  # the actor handle each shard was sent to
    result: RolloutBatch | None = None  # set once collected (or loaded from a checkpoint)


class RolloutPipeline:
    """Owns the rollout actors; ``next_round`` keeps ``max_off_policy_steps`` batches generating ahead."""

    def __init__(self, cfg: Config, model_path: str, placement: Any, learner: Any, counters: dict[str, float]) -> None:
        self.cfg, self.model_path, self.placement, self.learner = cfg, model_path, placement, learner
        self.counters = counters  # the trainer's fault counters (faults/rollout_restarts)
        # rollout.colocate: the learner actor is the one worker (rl_div.cluster.colocated): nothing to start or push
        self.colocated = cfg.rollout.colocate
        self.workers = ([learner.colocated_sampler()] if self.colocated else
                        [start_rollout_worker(cfg, model_path, placement, i) for i in range(cfg.rollout.num_workers)])
        self.queue: deque[InFlight] = deque()
        self.nccl_group: NcclGroup | None = None
        self.weights_version = 0
        self.launched = 0  # training batches (rounds) launched so far; round i samples with seed salt i

    def actors(self) -> dict[str, Any]:
        """The rollout actors this pipeline started (none when colocated: the learner samples)."""
        return {} if self.colocated else {f"rollout worker {i}": w for i, w in enumerate(self.workers)}

    # ---- generation ----------------------------------------------------------------------------
    def next_round(self, index: int, fetch: Callable[[], list[PromptRecord]], spec: SamplingSpec,
                   ) -> tuple[RolloutBatch, int]:
        """A round for training step ``index``: tops the queue up to max_off_policy_steps + 1 launched
        batches (fetching their prompts; the i-th launched samples with seed salt i), then collects the
        oldest. Returns it and the step that launched it. Dynamic sampling's extra rounds are further
        calls in the same step (rl_div.train.dynamic_sampling)."""
        while len(self.queue) <= self.cfg.rollout.max_off_policy_steps:
            flight = self.launch(fetch(), spec, salt=self.launched)
            flight.launch_step = index
            self.queue.append(flight)
            self.launched += 1
        flight = self.queue.popleft()
        return self.collect(flight), flight.launch_step

    def generate(self, prompts: list[PromptRecord], spec: SamplingSpec, salt: int) -> RolloutBatch:
        """Launch and collect at once (evaluation). Training rollouts are each followed by a sync;
        an evaluation is not, so where the engines discard their weights on sleep (vLLM sleep level 2)
        the same version is pushed again before the next rollout can need it."""
        batch = self.collect(self.launch(prompts, spec, salt))
        if discards_weights_on_sleep(self.cfg):
            self.sync_weights()
        return batch

    def launch(self, prompts: list[PromptRecord], spec: SamplingSpec, salt: int) -> InFlight:
        """Shard prompts over the actors and start generating; returns without waiting."""
        n = len(self.workers)
        shards = [prompts[i * len(prompts) // n:(i + 1) * len(prompts) // n] for i in range(n)]
        specs = [dataclasses.replace(spec, seed=spec.seed * 1_000_003 + salt * 1_009 + i) for i in range(n)]
        flight = InFlight(salt, shards, specs)
        flight.workers = list(self.workers)
        flight.futures = [w.generate.remote(s, sp) if s else None
                          for w, s, sp in zip(self.workers, shards, specs, strict=True)]
        return flight

    def collect(self, flight: InFlight) -> RolloutBatch:
        """Wait for a launched batch; a shard whose actor died (or timed out) is regenerated on a
        restarted actor holding the current weights."""
        if flight.result is not None:
            return flight.result
        parts = []
        timeout = self.cfg.rollout.generate_timeout_s
        for i, future in enumerate(flight.futures):
            if future is None:
                continue
            try:
                parts.append(ray.get(future, timeout=timeout))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
                if self.colocated:  # the learner itself failed: nothing to restart, the run fails
                    raise
                if self.workers[i] is flight.workers[i]:  # not yet replaced (by a sync since the launch)
                    log.warning("rollout worker %d failed (%s); restarting it", i, type(err).__name__)
                    self.counters["faults/rollout_restarts"] += 1
                    self.replace_worker(i)
                    self.sync_weights()
                log.warning("regenerating rollout worker %d's shard of batch %d", i, flight.salt)
                retry = self.workers[i].generate.remote(flight.shards[i], flight.specs[i])
                parts.append(ray.get(retry, timeout=timeout))
        batch = parts[0] if len(parts) == 1 else RolloutBatch.concat(parts)
        # the learner's log-probs and entropies use the temperature each row was sampled at
        batch.sampling_temperature = torch.full((batch.size,), float(flight.specs[0].temperature))
        flight.result = batch
        return flight.result

    # ---- weights -------------------------------------------------------------------------------
    def sync_weights(self) -> None:
        """Push the learner's weights to every rollout actor (rollout.weight_sync: Ray object store,
        CUDA IPC or NCCL broadcast), after the generations in flight have finished. A rollout actor
        that died since the last sync is restarted and the push repeated once (its in-flight shard is
        regenerated at collect); a sync that still fails or times out raises."""
        if self.learner is None:  # rl-div eval: the workers hold the model they loaded, nothing to push
            return
        pending = [f for flight in self.queue for f in flight.futures if f is not None]
        if pending:  # queued behind the in-flight generation: wait for it here, not inside the sync's timeout
            ray.wait(pending, num_returns=len(pending), timeout=self.cfg.rollout.generate_timeout_s)
        if self.colocated:  # the sampler is the learner's module: the version alone, nothing to push
            self.weights_version = ray.get(self.learner.get_version(), timeout=self.cfg.rollout.weight_sync_timeout_s)
            return
        try:
            self.push_weights()
        except (ray.exceptions.RayActorError, WeightSyncError) as err:
            self.nccl_group = None  # a failed NCCL sync aborted its communicators: the retry needs a new group
            dead = self.dead_workers()
            if not dead:
                if self.queue:
                    raise WeightSyncError(f"weight sync failed with batches {[f.salt for f in self.queue]} in flight "
                                          f"(their generation finished or failed first): {err}") from err
                raise
            for i in dead:
                log.warning("rollout worker %d died before the weight sync; restarting it", i)
                self.counters["faults/rollout_restarts"] += 1
                self.replace_worker(i)
            self.push_weights()

    def push_weights(self) -> None:
        r = self.cfg.rollout
        try:  # bounded: a learner stuck in a failed sync must fail the run, not hang it
            self.weights_version = ray.get(self.learner.get_version(), timeout=r.weight_sync_timeout_s)
        except ray.exceptions.GetTimeoutError as err:
            raise WeightSyncError(f"{r.weight_sync} weight sync: the learner did not answer get_version within "
                                  f"{r.weight_sync_timeout_s:.0f} s (still inside an earlier sync?)") from err
        if r.weight_sync == "nccl" and self.nccl_group is None:
            self.nccl_group = nccl_group_on(self.learner, len(self.workers), r.tensor_parallel_size)
        push_weights(self.learner, self.workers, r.weight_sync, self.weights_version,
                     timeout_s=r.weight_sync_timeout_s, nccl_group=self.nccl_group,
                     ranks_per_engine=r.tensor_parallel_size)

    def dead_workers(self, timeout_s: float = 30.0) -> list[int]:
        """Indices of rollout actors that do not answer a trivial call."""
        dead = []
        for i, worker in enumerate(self.workers):
            try:
                ray.get(worker.policy_version.remote(), timeout=timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                dead.append(i)
        return dead

    def replace_worker(self, index: int) -> None:
        """A new actor in place of a dead one (and a new NCCL group, since its membership changed)."""
        with contextlib.suppress(Exception):  # already dead is the usual case
            ray.kill(self.workers[index])
        self.workers[index] = start_rollout_worker(self.cfg, self.model_path, self.placement, index)
        wait_started({f"rollout worker {index}": self.workers[index]}, self.cfg.cluster.startup_timeout_s)
        self.nccl_group = None

    # ---- checkpoint ----------------------------------------------------------------------------
    def save(self, ckpt_dir: Path) -> None:
        """The batches in flight, generated, into ckpt_dir/in_flight.pt (nothing when none)."""
        if self.queue:
            torch.save([{"salt": f.salt, "launch_step": f.launch_step, "batch": batch_state(self.collect(f))}
                        for f in self.queue],
                       ckpt_dir / IN_FLIGHT_FILE)

    def load(self, ckpt_dir: Path) -> None:
        path = ckpt_dir / IN_FLIGHT_FILE
        saved = torch.load(path, weights_only=True) if path.exists() else []
        self.queue = deque(InFlight(s["salt"], [], [], s.get("launch_step", 0), result=batch_from_state(s["batch"]))
                           for s in saved)

    def state(self) -> dict[str, int]:
        return {"launched": self.launched}

    def load_state(self, state: dict[str, int], step: int) -> None:
        """The launch count (without it, a checkpoint of a run without extra rounds: step + batches queued)."""
        self.launched = int(state.get("launched", step + len(self.queue)))

    def close(self) -> None:
        """Stop the rollout actors (colocated: none of its own; the trainer stops the learner)."""
        for actor in self.actors().values():
            with contextlib.suppress(Exception):  # shutting down: an actor already gone is fine
                ray.kill(actor)


def discards_weights_on_sleep(cfg: Config) -> bool:
    """Whether the rollout engines drop their weights between rollouts: vLLM colocated (cuda_ipc,
    the only transport whose engines sleep) at rollout.sleep_level 2."""
    r = cfg.rollout
    return r.backend == "vllm" and r.weight_sync == "cuda_ipc" and r.sleep_level == 2


def batch_state(batch: RolloutBatch) -> dict[str, Any]:
    """A RolloutBatch as tensors, strings and plain dicts (loadable with torch.load(weights_only=True))."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        out[f.name] = [dataclasses.asdict(p) for p in value] if f.name == "prompts" else value
    return out


def batch_from_state(state: dict[str, Any]) -> RolloutBatch:
    return RolloutBatch(**{**state, "prompts": [PromptRecord(**p) for p in state["prompts"]]})


def policy_lag(batch: RolloutBatch, learner_version: int) -> dict[str, float]:
    """How many policy versions (optimizer steps) the sampler was behind the learner's pi_old:
    offpolicy/policy_lag (the batch's largest) and offpolicy/policy_lag_mean (over rows)."""
    assert batch.behavior_version is not None
    lag = (learner_version - batch.behavior_version).float()
    return {"offpolicy/policy_lag": float(lag.max()) if lag.numel() else 0.0,
            "offpolicy/policy_lag_mean": float(lag.mean()) if lag.numel() else 0.0}
