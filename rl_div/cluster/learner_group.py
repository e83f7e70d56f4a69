"""The learner group: what the trainer talks to, with one verb per way a call reaches the ranks.

With train.strategy "single" the group is one Learner actor; with "fsdp2" it is N ShardedLearner
actors, one per placement-group bundle, joined into one torch.distributed process group (rank 0's
node address and a free port; train.dist_init_timeout_s bounds the rendezvous and every
collective). Every verb returns Ray ObjectRefs, so the trainer's ``ray.get`` reads the same for
both. Three dispatch modes (after verl's ONE_TO_ALL / DP_COMPUTE / RANK_ZERO and OpenRLHF's
``async_run_method`` / ``async_run_method_batch``):

    on_every_rank(method, *args)        the same call on every rank; rank 0's value (every rank
                                        joins the collectives; rank 0 holds the combined result)
    split_across_ranks(method, by_rank) rank r gets by_rank[r]; every rank's value, in rank order
    on_rank_zero(method, *args)         rank 0 alone (its node, its answer; no collective)

``method`` is a learner method's name, or a function run inside each actor as ``fn(learner,
*args)`` (Ray's ``__ray_call__``). The trainer's own calls are named methods built on these, each
saying which mode it uses:

    update, policy_stats                 data split across ranks (by the update plan; by rows)
    get_version, active_dropout, save,   the same call on every rank, rank 0's value
    load, get_weights, get_weight_buckets,
    update_on_policy

A group of one actor (strategy "single") sends every verb straight to that actor: the verb returns
its ref at once, and the actor's error comes at ``ray.get``. A sharded group's verb waits until each rank
it called has finished (the driver blocks where it would block in ``ray.get``), and a rank that
dies or fails fails the verb at once: the other ranks are stopped and LearnerFailed names the
rank and the checkpoint to resume from (rl_div.cluster.faults), instead of the survivors waiting in
a collective until the timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray

from rl_div.cluster.faults import (
    LearnerFailed,
    RankFailed,
    StartupError,
    call_ranked,
    failure_line,
    gather_ranks,
    log_to_run_file,
    stop_ranks,
)
from rl_div.learner.plan import cut_micro_batches, pad_micro_counts, plan_batch

if TYPE_CHECKING:
    from rl_div.cluster.actors import RunPlacement
    from rl_div.config import Config
    from rl_div.data import RolloutBatch

log = logging.getLogger("rl_div")


def concat_policy_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """policy_stats results of contiguous row chunks, rank by rank -> the batch's rows in order.
    Done in the driver: as a Ray task it ran in a worker process that Ray had often retired while
    idle (more processes than CPUs), so a fresh one imported torch first: ~1.5 s per fsdp2 step."""
    import torch

    keys = [k for k in parts[0] if all(k in p for p in parts if p)]
    return {k: torch.cat([p[k] for p in parts if p]) for k in keys}


def policy_stats_chunks(size: int, cost: list[int], world_size: int, micro_rows: int,
                        max_tokens: int | None) -> list[list[list[int]]]:
    """Rows 0..size-1 in world_size contiguous chunks, each cut into micro-batches, padded so every
    rank runs as many forwards: [rank][k] -> rows."""
    per = -(-size // world_size) if size else 0
    chunks = [list(range(r * per, min((r + 1) * per, size))) for r in range(world_size)]
    return pad_micro_counts([cut_micro_batches(c, cost, micro_rows, max_tokens) for c in chunks])


# What a verb runs on a rank: a learner method's name, or fn(learner, *args) run inside the actor.
Method = str | Callable[..., Any]


def method_name(method: Method) -> str:
    """How failures name the call: the method's name, or the function's."""
    return method if isinstance(method, str) else getattr(method, "__name__", type(method).__name__)


def call_actor(actor: Any, method: Method, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One Ray call on one actor handle: its method `method`, or the function run inside it."""
    if isinstance(method, str):
        return getattr(actor, method).remote(*args, **kwargs)
    return actor.__ray_call__.remote(method, *args, **kwargs)


class LearnerGroup:
    """N learner actors behind named verbs, each with its dispatch mode (see the module docstring)."""

    def __init__(self, cfg: Config, actors: list[Any], sharded: bool, setup: list[Any] | None = None) -> None:
        self.cfg, self.actors, self.sharded = cfg, actors, sharded
        self.setup = setup or []  # refs of the ranks' setup calls: the first call waits for them

    # ---- the three dispatch modes ----------------------------------------------------------------
    def on_every_rank(self, method: Method, *args: Any, **kwargs: Any) -> Any:
        """The same call on every rank; returns rank 0's value ref (the ranks' values agree, or rank 0's
        is the combined one: metrics reduced over ranks, weights gathered onto it)."""
        return self._on_ranks(method, [args] * len(self.actors), kwargs)[0]

    def split_across_ranks(self, method: Method, args_by_rank: list[tuple[Any, ...]], **kwargs: Any) -> list[Any]:
        """Rank r's call with args_by_rank[r] (one entry per rank), kwargs alike; returns every rank's
        value ref, in rank order."""
        if len(args_by_rank) != len(self.actors):
            raise ValueError(f"split_across_ranks({method_name(method)}): {len(args_by_rank)} argument "
                             f"tuples for {len(self.actors)} ranks")
        return self._on_ranks(method, args_by_rank, kwargs)

    def on_rank_zero(self, method: Method, *args: Any, **kwargs: Any) -> Any:
        """Rank 0 alone (for what needs no collective: its node's address, say); returns its value
        ref. The other ranks are not called, but a failure still stops them (the run fails)."""
        return self._on_ranks(method, [args], kwargs)[0]

    def _on_ranks(self, method: Method, args_by_rank: list[tuple[Any, ...]], kwargs: dict[str, Any]) -> list[Any]:
        """Rank r's `method`(*args_by_rank[r], **kwargs) for ranks 0..len(args_by_rank)-1; their value
        refs. One actor: the call goes straight to it. Sharded: returns once every called rank has
        finished; LearnerFailed as soon as one died or raised (every rank is stopped); StartupError
        if the ranks did not start within cluster.startup_timeout_s."""
        if not self.sharded:
            return [call_actor(self.actors[0], method, args_by_rank[0], kwargs)]
        pairs = [actor.__ray_call__.options(num_returns=2).remote(call_ranked, method, *a, **kwargs)
                 for actor, a in zip(self.actors[:len(args_by_rank)], args_by_rank, strict=True)]
        if self.setup:  # the calls queue behind the constructors and setup: those may fail first
            self._gather(self.setup, "setup", self.cfg.cluster.startup_timeout_s)
            self.setup = []
        self._gather([done for _, done in pairs], method_name(method))
        return [value for value, _ in pairs]

    def _gather(self, refs: list[Any], name: str, timeout_s: float | None = None) -> None:
        """gather_ranks of refs[r] = rank r's call `name`, failing the run as the class says."""
        try:
            gather_ranks(refs, timeout_s)
        except RankFailed as failed:
            stop_ranks(self.actors)
            line = failure_line(failed, name, self.cfg.run.output_dir)
            # the rank's whole error to train.log only: the console gets the line once, from the CLI
            log_to_run_file(log, f"{line}; the rank's error: {failed.error}")
            raise LearnerFailed(line) from failed.error
        except TimeoutError as err:
            stop_ranks(self.actors)
            raise StartupError(f"learner {err}: not started within cluster.startup_timeout_s={timeout_s:g} s "
                               "(stage: actor start-up: model load, torch.distributed rendezvous)") from None

    # ---- data split across ranks -----------------------------------------------------------------
    def update(self, batch: RolloutBatch, loss_overrides: dict[str, Any] | None = None) -> Any:
        """The update on a scored batch; ref of its metrics. Split across ranks by the update plan
        (rl_div.learner.plan, made here from every rank's version): each rank is sent the one batch
        ref and the plan, and runs its own rows of every micro-step; rank 0's metrics are the reduced
        ones. One actor: its own update."""
        if not self.sharded:
            return self.on_every_rank("update", batch, loss_overrides)
        version = ray.get(self.get_version())
        plans = plan_batch(batch, self.cfg, len(self.actors), version, loss_overrides)
        return self.on_every_rank("run_plans", ray.put(batch), plans, loss_overrides)

    def policy_stats(self, batch: RolloutBatch, with_prompt: bool = False, temperature: float | None = None) -> Any:
        """Ref of the policy's log-probs and entropies of every row (Learner.policy_stats). Split
        across ranks by rows: rank r takes the r-th contiguous chunk (policy_stats_chunks), and the driver
        puts the chunks back in row order. One actor: its own policy_stats."""
        if not self.sharded:
            return self.on_every_rank("policy_stats", batch, with_prompt, temperature)
        t = self.cfg.train
        cost = (batch.prompt_mask.sum(dim=1) + batch.response_mask.sum(dim=1)).tolist()
        chunks = policy_stats_chunks(batch.size, cost, len(self.actors), t.micro_batch_size,
                                     t.max_tokens_per_micro_batch)
        ref = ray.put(batch)
        parts = self.split_across_ranks("policy_stats_of_rows",
                                        [(ref, rows, with_prompt, temperature) for rows in chunks])
        return ray.put(concat_policy_stats(ray.get(parts)))  # a ref, as from one learner

    # ---- the same call on every rank, rank 0's value ---------------------------------------------
    def update_on_policy(self, batch: RolloutBatch, loss_overrides: dict[str, Any] | None = None) -> Any:
        """Ref of (metrics, pi_old stats) of the update whose forward is pi_old (rl_div.learner.onpolicy).
        On every rank; only a single learner takes it (sharded ranks refuse: fuses_policy_forward)."""
        return self.on_every_rank("update_on_policy", batch, loss_overrides)

    def get_version(self) -> Any:
        """Ref of the policy version (optimizer steps so far; the ranks step together). On every rank."""
        return self.on_every_rank("get_version")

    def active_dropout(self) -> Any:
        """Ref of the model's active dropout modules (rl_div.learner.onpolicy.active_dropout). On every rank."""
        return self.on_every_rank("active_dropout")

    def save(self, ckpt_dir: str) -> Any:
        """Write the learner's part of a checkpoint into ckpt_dir. On every rank: each writes its shards."""
        return self.on_every_rank("save", ckpt_dir)

    def load(self, ckpt_dir: str) -> Any:
        """Read the learner's part of a checkpoint back. On every rank: each reads its shards."""
        return self.on_every_rank("load", ckpt_dir)

    def get_weights(self) -> Any:
        """Ref of the full state dict. On every rank (each joins the gathers); rank 0's holds it."""
        return self.on_every_rank("get_weights")

    def get_weight_buckets(self) -> Any:
        """Ref of the BucketPayload for an object_store weight sync (rl_div.sync.buckets). On every rank
        (each joins the gathers); rank 0's is the one that ships, the others' are empty."""
        return self.on_every_rank("get_weight_buckets")

    def colocated_sampler(self) -> Any:
        """rollout.colocate: the handle the rollout pipeline sends generate to, as to a rollout actor
        (the one learner actor, rl_div.cluster.colocated.ColocatedLearner; the config allows no ranks)."""
        if self.sharded:
            raise ValueError("rollout.colocate runs with train.strategy='single' only")
        return self.actors[0]

    def writers(self) -> dict[str, Any]:
        """The actors that write into run.output_dir, by name: every rank writes its own checkpoint
        shards, so each is checked apart (rl_div.run.writers.check_writers); probing through the group
        would fan one probe file out to every rank, which then race on that one file."""
        if not self.sharded:
            return {"learner": self.actors[0]}
        return {f"learner_rank{rank}": actor for rank, actor in enumerate(self.actors)}


def start_learner_group(cfg: Config, model_path: str, placement: RunPlacement) -> LearnerGroup:
    """The run's learner actors, one per learner bundle of the placement plan. Returns at once: the
    ranks load the model and then join the process group in their own processes."""
    from rl_div.cluster.colocated import ColocatedLearner
    from rl_div.learner.fsdp2 import ShardedLearner
    from rl_div.learner.single import Learner

    slots = placement.plan.learners or [placement.plan.learner]
    if cfg.train.strategy == "single":  # rollout.colocate: the learner samples too (config: strategy single only)
        cls = ColocatedLearner if cfg.rollout.colocate else Learner
        actor = ray.remote(cls).options(**placement.options(slots[0])).remote(cfg, model_path)
        return LearnerGroup(cfg, [actor], sharded=False)
    cls = ray.remote(ShardedLearner)
    actors = [cls.options(max_restarts=0, **placement.options(slot)).remote(cfg, model_path, rank, len(slots))
              for rank, slot in enumerate(slots)]
    address = actors[0].address.remote()  # resolved by Ray before each setup runs
    # queued behind each constructor; every later call queues behind setup
    setup = [actor.setup.remote(address) for actor in actors]
    return LearnerGroup(cfg, actors, sharded=True, setup=setup)
