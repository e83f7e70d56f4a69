"""Each LearnerGroup verb reaches the ranks it says (rl_div.cluster.learner_group), and fails fast.

Real Ray actors stand in for the learner ranks: each records the calls it gets (method, rank, what
it was given), so the test reads which ranks a verb reached with which share of the data. The
expected shares are worked out by hand from the batch's shape, not from the group's planner.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from rl_div.cluster.actors import init_ray, wait_started
from rl_div.cluster.faults import LearnerFailed
from rl_div.cluster.learner_group import LearnerGroup
from rl_div.config import Config, load_config
from rl_div.data import PromptRecord, RolloutBatch
from rl_div.learner.plan import plan_batch
from rl_div.rollout.base import build_rollout_batch

pytestmark = pytest.mark.slow

# The learner methods the group's named verbs call on a rank (policy_stats_of_rows and run_plans: a sharded
# group's split of policy_stats and update).
RANK_METHODS = ("update", "update_on_policy", "policy_stats", "policy_stats_of_rows", "run_plans", "get_version",
                "active_dropout", "save", "load", "get_weights", "get_weight_buckets")
VERSION = 7


@pytest.fixture(scope="module")
def ray2() -> Iterator[None]:
    if ray.is_initialized():
        ray.shutdown()
    init_ray(load_config(None, ["cluster.num_cpus=2"]))
    yield
    ray.shutdown()


def recording_ranks(count: int, fail_in: dict[int, str] | None = None) -> list[Any]:
    """`count` stand-in learner ranks, one Ray actor each. Every learner method records
    (method, summary of its arguments) and returns f"{method}@rank{r}" (get_version: VERSION;
    policy_stats_of_rows: the row ids it scored, as old_logprobs). fail_in[r] = a method rank r raises in.
    (Built here so that Ray ships the class by value: a worker does not import this module.)"""

    class Rank:
        def __init__(self, rank: int, fails: str | None) -> None:
            self.rank, self.fails, self.log = rank, fails, []

        def calls(self) -> list[tuple[str, Any]]:
            """The calls recorded since the last time this was asked (and forget them)."""
            log, self.log = self.log, []
            return log

        def record(self, method: str, given: Any) -> None:
            self.log.append((method, given))
            if method == self.fails:
                raise ValueError(f"a bug in {method} on rank {self.rank}")

        def policy_stats_of_rows(self, batch: RolloutBatch, rows: list[list[int]], with_prompt: bool = False,
                       temperature: float | None = None) -> dict[str, torch.Tensor]:
            self.record("policy_stats_of_rows", (batch.size, rows, with_prompt, temperature))
            flat = [r for chunk in rows for r in chunk]
            return {"old_logprobs": torch.tensor(flat, dtype=torch.float32),
                    "old_entropy": torch.tensor(flat, dtype=torch.float32) + 0.5}

    def answer(name: str) -> Any:
        def method(self: Any, *args: Any) -> Any:
            self.record(name, tuple(a.size if isinstance(a, RolloutBatch) else a for a in args))
            return VERSION if name == "get_version" else f"{name}@rank{self.rank}"
        return method

    for name in RANK_METHODS:
        if name != "policy_stats_of_rows":
            setattr(Rank, name, answer(name))
    fail_in = fail_in or {}
    return [ray.remote(Rank).options(num_cpus=0, max_restarts=0).remote(r, fail_in.get(r)) for r in range(count)]


def calls(actors: list[Any]) -> list[list[tuple[str, Any]]]:
    """Every rank's calls since the last look, rank by rank."""
    return ray.get([a.calls.remote() for a in actors])


def cfg_of(tmp_path: Path, *overrides: str) -> Config:
    return load_config(None, [f"run.output_dir={tmp_path}", *overrides])


def batch_of(rows: int) -> RolloutBatch:
    """One prompt (2 tokens), `rows` responses of 1..rows tokens, advantage +-1 so every row has signal."""
    batch = build_rollout_batch([PromptRecord("p", "a")], [[1, 2]], [[3] * (i + 1) for i in range(rows)],
                                [[-0.1] * (i + 1) for i in range(rows)], ["x"] * rows, [False] * rows, rows,
                                behavior_version=0)
    batch.advantages = torch.tensor([(-1.0) ** i for i in range(rows)])
    return batch


@pytest.fixture(scope="module")
def two_ranks(ray2: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LearnerGroup]:
    """A 2-rank sharded group of recording ranks (micro-batches of 2 rows), started once."""
    cfg = cfg_of(tmp_path_factory.mktemp("run"), "train.micro_batch_size=2")
    group = LearnerGroup(cfg, recording_ranks(2), sharded=True)
    wait_started({"learner": group}, 60)  # a group's start-up wait reaches every rank
    yield group
    for actor in group.actors:
        ray.kill(actor)


@pytest.fixture
def group(two_ranks: LearnerGroup) -> LearnerGroup:
    """two_ranks with no calls recorded yet."""
    calls(two_ranks.actors)
    return two_ranks


def test_on_every_rank_calls_every_rank_alike_and_answers_rank_zeros_value(group: LearnerGroup) -> None:
    assert ray.get(group.on_every_rank("save", "/ckpt")) == "save@rank0"
    assert calls(group.actors) == [[("save", ("/ckpt",))], [("save", ("/ckpt",))]]


def test_a_function_runs_inside_every_rank(group: LearnerGroup) -> None:
    def whoami(actor: Any, tag: str) -> int:
        actor.record("whoami", tag)
        return actor.rank

    assert ray.get(group.on_every_rank(whoami, "t")) == 0
    assert calls(group.actors) == [[("whoami", "t")], [("whoami", "t")]]


def test_on_rank_zero_calls_rank_zero_only(group: LearnerGroup) -> None:
    assert ray.get(group.on_rank_zero("get_weights")) == "get_weights@rank0"
    assert calls(group.actors) == [[("get_weights", ())], []]


def test_split_across_ranks_gives_each_rank_its_own_arguments(group: LearnerGroup) -> None:
    refs = group.split_across_ranks("load", [("/a",), ("/b",)])
    assert ray.get(refs) == ["load@rank0", "load@rank1"]
    assert calls(group.actors) == [[("load", ("/a",))], [("load", ("/b",))]]
    with pytest.raises(ValueError, match=r"split_across_ranks\(load\): 1 argument tuples for 2 ranks"):
        group.split_across_ranks("load", [("/a",)])


@pytest.mark.parametrize(("verb", "args", "method"), [
    ("get_version", (), "get_version"), ("active_dropout", (), "active_dropout"), ("save", ("/c",), "save"),
    ("load", ("/c",), "load"), ("get_weights", (), "get_weights"), ("get_weight_buckets", (), "get_weight_buckets"),
])
def test_named_verbs_that_run_on_every_rank(group: LearnerGroup, verb: str, args: tuple, method: str) -> None:
    value = ray.get(getattr(group, verb)(*args))
    assert value == (VERSION if method == "get_version" else f"{method}@rank0")
    assert calls(group.actors) == [[(method, args)], [(method, args)]]


def test_score_policy_splits_the_rows_into_contiguous_chunks(group: LearnerGroup) -> None:
    """5 rows over 2 ranks: ceil(5/2) = 3 -> rank 0 rows 0-2 in micro-batches [0, 1], [2]; rank 1
    rows 3-4 as [3, 4] and one empty padding pass, so both run 2 forwards; back in row order."""
    stats = ray.get(group.policy_stats(batch_of(5), True, 0.7))
    assert stats["old_logprobs"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert stats["old_entropy"].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert calls(group.actors) == [[("policy_stats_of_rows", (5, [[0, 1], [2]], True, 0.7))],
                                   [("policy_stats_of_rows", (5, [[3, 4], []], True, 0.7))]]


def test_update_asks_every_rank_its_version_then_sends_each_the_plan(group: LearnerGroup) -> None:
    """Every rank gets the whole batch and the same plans (made at the ranks' version), and each
    rank's micro-batches in the plan are its own rows: together every row once."""
    batch = batch_of(4)
    assert ray.get(group.update(batch, {"entropy_coef": 0.0})) == "run_plans@rank0"
    logs = calls(group.actors)
    assert [[m for m, _ in log] for log in logs] == [["get_version", "run_plans"]] * 2
    plans = plan_batch(batch, group.cfg, 2, VERSION, {"entropy_coef": 0.0})
    assert [log[1][1] for log in logs] == [(4, plans, {"entropy_coef": 0.0})] * 2
    per_rank = [sorted(r for p in plans for micro in p.micro[rank] for r in micro) for rank in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == [0, 1, 2, 3] and per_rank[0] and per_rank[1]


def test_one_actor_group_sends_every_verb_straight_to_it(ray2: None, tmp_path: Path) -> None:
    """strategy single: the learner's own update and policy_stats (no planning, no row split)."""
    [actor] = recording_ranks(1)
    group = LearnerGroup(cfg_of(tmp_path), [actor], sharded=False)
    batch = batch_of(3)
    got = ray.get([group.update(batch, None), group.policy_stats(batch, False, None), group.get_version(),
                   group.on_rank_zero("save", "/z"), *group.split_across_ranks("load", [("/y",)])])
    assert got == ["update@rank0", "policy_stats@rank0", VERSION, "save@rank0", "load@rank0"]
    assert calls([actor]) == [[("update", (3, None)), ("policy_stats", (3, False, None)), ("get_version", ()),
                               ("save", ("/z",)), ("load", ("/y",))]]
    ray.kill(actor)


@pytest.mark.parametrize(("verb", "args", "failing_rank", "method"), [
    ("update", (batch_of(4),), 1, "run_plans"), ("update", (batch_of(4),), 0, "get_version"),
    ("policy_stats", (batch_of(5),), 1, "policy_stats_of_rows"), ("save", ("/c",), 1, "save"),
    ("load", ("/c",), 0, "load"),
    ("get_weight_buckets", (), 1, "get_weight_buckets"), ("on_rank_zero", ("get_weights",), 0, "get_weights"),
    ("split_across_ranks", ("active_dropout", [(), ()]), 1, "active_dropout"),
])
def test_every_verb_fails_fast_naming_the_rank(ray2: None, tmp_path: Path, verb: str, args: tuple,
                                               failing_rank: int, method: str) -> None:
    actors = recording_ranks(2, {failing_rank: method})
    group = LearnerGroup(cfg_of(tmp_path), actors, sharded=True)
    with pytest.raises(LearnerFailed) as failed:
        getattr(group, verb)(*args)
    assert re.match(rf"learner rank {failing_rank} failed in {method}\(\) \(a bug in {method} on rank "
                    rf"{failing_rank}\); the other ranks were stopped\. Last checkpoint: none yet", str(failed.value))
    assert all(stopped(actor) for actor in actors)


def stopped(actor: Any, within_s: float = 30.0) -> bool:
    """Whether the actor is gone within within_s (ray.kill is asynchronous: an idle actor may still
    answer a call sent just after it)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.calls.remote(), timeout=within_s)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.2)
    return False
