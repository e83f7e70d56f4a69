"""The learner group: what the trainer talks to, exactly as it talked to one learner actor.

``group.update.remote(batch)``, ``group.score_policy.remote(...)``, ``group.get_weights.remote()``,
``group.save.remote(dir)``, ``group.__ray_call__.remote(fn)``... return one Ray ObjectRef, so
``ray.get`` in trainer.py is unchanged. With train.strategy "single" the group is one Learner actor
and every call goes straight to it. With "fsdp2" the group is N ShardedLearner actors, one per
placement-group bundle, joined into one torch.distributed process group (rank 0's node address
and a free port; train.dist_init_timeout_s bounds the rendezvous and every collective); a call
fans out to every rank and its ref is rank 0's value (metrics and weights are already combined
over ranks). ``.remote()`` itself waits until every rank has finished (the driver blocks where it
would block in ``ray.get``), and a rank that dies or fails fails the call at once: the other ranks
are stopped and LearnerFailed names the rank and the checkpoint to resume from
(rl_div.cluster.faults), instead of the survivors waiting in a collective until the timeout.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import ray

from rl_div.cluster.faults import (
    LearnerFailed,
    RankFailed,
    StartupError,
    call_ranked,
    failure_line,
    gather_ranks,
    stop_ranks,
)
from rl_div.learner.plan import cut_micro_batches, pad_micro_counts, plan_batch

if TYPE_CHECKING:
    from rl_div.cluster.actors import RunPlacement
    from rl_div.config import Config
    from rl_div.data import RolloutBatch

log = logging.getLogger("rl_div")


def concat_scores(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """score_policy results of contiguous row chunks, rank by rank -> the batch's rows in order.
    Done in the driver: as a Ray task it ran in a worker process that Ray had often retired while
    idle (more processes than CPUs), so a fresh one imported torch first: ~1.5 s per fsdp2 step."""
    import torch

    keys = [k for k in parts[0] if all(k in p for p in parts if p)]
    return {k: torch.cat([p[k] for p in parts if p]) for k in keys}


def score_chunks(size: int, cost: list[int], world_size: int, micro_rows: int,
                 max_tokens: int | None) -> list[list[list[int]]]:
    """Rows 0..size-1 in world_size contiguous chunks, each cut into micro-batches, padded so every
    rank runs as many forwards: [rank][k] -> rows."""
    per = -(-size // world_size) if size else 0
    chunks = [list(range(r * per, min((r + 1) * per, size))) for r in range(world_size)]
    return pad_micro_counts([cut_micro_batches(c, cost, micro_rows, max_tokens) for c in chunks])


class _Call:
    def __init__(self, group: LearnerGroup, name: str) -> None:
        self.group, self.name = group, name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.group.call(self.name, *args, **kwargs)


class LearnerGroup:
    """N learner actors behind one learner's interface (see the module docstring)."""

    def __init__(self, cfg: Config, actors: list[Any], sharded: bool, setup: list[Any] | None = None) -> None:
        self.cfg, self.actors, self.sharded = cfg, actors, sharded
        self.setup = setup or []  # refs of the ranks' setup calls: the first call waits for them

    def _fan_out(self, name: str, args: list[tuple[Any, ...]], **kwargs: Any) -> list[Any]:
        """Rank r's method `name`(*args[r], **kwargs), for every rank; returns the ranks' value refs
        once every rank has finished. LearnerFailed as soon as one rank died or raised (the ranks
        are stopped); StartupError if the ranks did not start within cluster.startup_timeout_s."""
        pairs = [actor.__ray_call__.options(num_returns=2).remote(call_ranked, name, *a, **kwargs)
                 for actor, a in zip(self.actors, args, strict=True)]
        if self.setup:  # the calls queue behind the constructors and setup: those may fail first
            self._gather(self.setup, "setup", self.cfg.cluster.startup_timeout_s)
            self.setup = []
        self._gather([done for _, done in pairs], name)
        return [value for value, _ in pairs]

    def _gather(self, refs: list[Any], name: str, timeout_s: float | None = None) -> None:
        """gather_ranks of refs[r] = rank r's call `name`, failing the run as the class says."""
        try:
            gather_ranks(refs, timeout_s)
        except RankFailed as failed:
            stop_ranks(self.actors)
            line = failure_line(failed, name, self.cfg.run.output_dir)
            log.error("%s; the rank's error: %s", line, failed.error)
            raise LearnerFailed(line) from failed.error
        except TimeoutError as err:
            stop_ranks(self.actors)
            raise StartupError(f"learner {err}: not started within cluster.startup_timeout_s={timeout_s:g} s "
                               "(stage: actor start-up: model load, torch.distributed rendezvous)") from None

    def _all(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._fan_out(name, [args] * len(self.actors), **kwargs)[0]

    def writers(self) -> dict[str, Any]:
        """The actors that write into run.output_dir, by name: every rank writes its own checkpoint
        shards, so each is checked apart (rl_div.run.writers.check_writers); probing through the group
        would fan one probe file out to every rank, which then race on that one file."""
        if not self.sharded:
            return {"learner": self.actors[0]}
        return {f"learner_rank{rank}": actor for rank, actor in enumerate(self.actors)}

    def __getattr__(self, name: str) -> _Call:
        if name.startswith("__") and name != "__ray_call__":
            raise AttributeError(name)
        return _Call(self, name)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """One ObjectRef for the method `name` of the group."""
        if not self.sharded:
            return getattr(self.actors[0], name).remote(*args, **kwargs)
        if name == "update":
            return self._update(*args, **kwargs)
        if name == "score_policy":
            return self._score(*args, **kwargs)
        return self._all(name, *args, **kwargs)

    def _update(self, batch: RolloutBatch, loss_overrides: dict[str, Any] | None = None) -> Any:
        version = ray.get(self._all("get_version"))
        plans = plan_batch(batch, self.cfg, len(self.actors), version, loss_overrides)
        return self._all("run_plans", ray.put(batch), plans, loss_overrides)

    def _score(self, batch: RolloutBatch, with_prompt: bool = False, temperature: float | None = None) -> Any:
        t = self.cfg.train
        cost = (batch.prompt_mask.sum(dim=1) + batch.response_mask.sum(dim=1)).tolist()
        chunks = score_chunks(batch.size, cost, len(self.actors), t.micro_batch_size, t.max_tokens_per_micro_batch)
        ref = ray.put(batch)
        parts = self._fan_out("score_rows", [(ref, rows, with_prompt, temperature) for rows in chunks])
        return ray.put(concat_scores(ray.get(parts)))  # a ref, as from one learner


def start_learner_group(cfg: Config, model_path: str, placement: RunPlacement) -> LearnerGroup:
    """The run's learner actors, one per learner bundle of the placement plan. Returns at once: the
    ranks load the model and then join the process group in their own processes."""
    from rl_div.learner.fsdp2 import ShardedLearner
    from rl_div.learner.single import Learner

    slots = placement.plan.learners or [placement.plan.learner]
    if cfg.train.strategy == "single":
        actor = ray.remote(Learner).options(**placement.options(slots[0])).remote(cfg, model_path)
        return LearnerGroup(cfg, [actor], sharded=False)
    cls = ray.remote(ShardedLearner)
    actors = [cls.options(max_restarts=0, **placement.options(slot)).remote(cfg, model_path, rank, len(slots))
              for rank, slot in enumerate(slots)]
    address = actors[0].address.remote()  # resolved by Ray before each setup runs
    # queued behind each constructor; every later call queues behind setup
    setup = [actor.setup.remote(address) for actor in actors]
    return LearnerGroup(cfg, actors, sharded=True, setup=setup)
