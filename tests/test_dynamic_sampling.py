"""Dynamic sampling (rl_div/train/dynamic_sampling.py): the group filter on hand-made groups, and the
batch filler's rounds, carry-over, bounds and metrics on hand-made scored rounds (the rounds' real
generation through Ray is tests/test_dynamic_sampling_e2e.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rl_div.data import PromptRecord, RolloutBatch
from rl_div.rollout.base import build_rollout_batch
from rl_div.train.dynamic_sampling import BatchFiller, group_verdicts, replace_plan

NAN = math.nan


def scored_round(rewards: list[list[float]], name: str, version: int = 0,
                 correct: list[list[float]] | None = None) -> RolloutBatch:
    """A real RolloutBatch of len(rewards) groups of G rows (token ids encode the row), scored by hand;
    prompt uids name:g. correct defaults to reward >= 1 (NaN stays NaN)."""
    g = len(rewards[0])
    prompts = [PromptRecord(f"{name} {i}", "a", uid=f"{name}:{i}") for i in range(len(rewards))]
    rows = len(rewards) * g
    batch = build_rollout_batch(prompts, [[1, 2 + i] for i in range(len(rewards))], [[10 + r] for r in range(rows)],
                                [[-0.5]] * rows, [f"r{r}" for r in range(rows)], [False] * rows, g,
                                behavior_version=version)
    flat = [x for group in rewards for x in group]
    batch.rewards = torch.tensor(flat, dtype=torch.float32)
    verdict = correct if correct is not None else [[x if math.isnan(x) else float(x >= 1) for x in grp]
                                                   for grp in rewards]
    batch.correct = torch.tensor([x for grp in verdict for x in grp], dtype=torch.float32)
    batch.answers = [None] * rows
    return batch


def verdicts_of(rewards: list[list[float]], signal: str = "reward", correct: list[list[float]] | None = None):
    b = scored_round(rewards, "p", correct=correct)
    return group_verdicts(b.rewards, b.correct, b.group_index, signal)


def test_group_filter_by_hand_ties_nan_and_single_values() -> None:
    v = verdicts_of([[1, 0, 0, 0],          # mixed: informative, neither all correct nor all wrong
                     [1, 1, 1, 1],          # all correct: zero variance
                     [0, 0, 0, 0],          # all wrong
                     [0.5, 0.5, 0.5, 0.5],  # a tie at a non-0/1 reward: zero variance, all wrong by correctness
                     [1, NAN, 0, NAN],      # NaN left out: 1 vs 0 still varies
                     [1, NAN, 1, 1],        # NaN left out: the rest tie -> not informative, all correct
                     [NAN, NAN, NAN, 0.3]])  # one finite value: no variance to speak of
    assert v.informative == [True, False, False, False, True, False, False]
    assert v.all_correct == [False, True, False, False, False, True, False]
    assert v.all_wrong == [False, False, True, True, False, False, True]
    assert v.nan_rows == 2 + 1 + 3
    assert v.rows[4] == [16, 17, 18, 19]


def test_correctness_signal_differs_from_reward_signal() -> None:
    # rewards vary (a format bonus) while every answer is wrong: informative by reward, not by correctness
    rewards = [[0.1, 0.2, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    correct = [[0, 0, 0, 0], [1, 1, NAN, 0]]
    assert verdicts_of(rewards, "reward", correct).informative == [True, False]
    by_correct = verdicts_of(rewards, "correct", correct)
    assert by_correct.informative == [False, True]
    assert by_correct.nan_rows == 1
    with pytest.raises(ValueError, match="signal"):
        verdicts_of(rewards, "variance")


def test_replace_plan_by_hand() -> None:
    assert replace_plan([True, False, False, True, False]) == [0, 0, 3, 3, 0]
    assert replace_plan([False, False]) == [0, 1]  # nothing to copy: the round stays
    assert replace_plan([True, True]) == [0, 1]


def uids(batch: RolloutBatch) -> list[str]:
    return [batch.prompts[i].uid for i in range(0, batch.size, 4)]


class Rounds:
    """A draw function over fixed scored rounds, counting the draws; launch step = the step given."""

    def __init__(self, rounds: list[RolloutBatch]) -> None:
        self.rounds, self.draws, self.step = list(rounds), 0, 0

    def __call__(self) -> tuple[RolloutBatch, int]:
        self.draws += 1
        return self.rounds.pop(0), self.step


def test_filter_tops_up_from_further_rounds_and_counts() -> None:
    rounds = Rounds([scored_round([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], "a", version=3),
                     scored_round([[0, 0, 0, 0], [0, 1, NAN, 1], [1, 0, 1, 0]], "b", version=4)])
    filler = BatchFiller("filter", target_groups=3, max_rounds=4, signal="reward", max_off_policy_steps=0)
    batch, m = filler.fill(0, rounds)
    assert rounds.draws == 2 and uids(batch) == ["a:0", "b:1", "b:2"]
    assert batch.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert batch.behavior_version.tolist() == [3] * 4 + [4] * 8  # topped-up rows keep their own version
    assert batch.rewards[4:8].tolist()[:2] == [0.0, 1.0] and math.isnan(batch.rewards[6])
    assert m["sampling/rounds"] == 2 and m["sampling/groups_generated"] == 6 and m["sampling/groups_kept"] == 3
    assert m["sampling/zero_variance_frac"] == pytest.approx(3 / 6)
    assert m["sampling/all_correct_frac"] == pytest.approx(1 / 6)
    assert m["sampling/all_wrong_frac"] == pytest.approx(2 / 6)
    assert m["sampling/nan_rewards"] == 1 and m["sampling/effective_batch"] == 12 and m["sampling/short"] == 0


def test_all_groups_filtered_in_every_round_is_bounded_trained_short_and_counted() -> None:
    dead = [scored_round([[1, 1, 1, 1], [0, 0, 0, 0]], f"r{i}") for i in range(5)]
    rounds = Rounds(dead)
    filler = BatchFiller("filter", target_groups=2, max_rounds=3, signal="reward", max_off_policy_steps=0)
    batch, m = filler.fill(0, rounds)
    assert rounds.draws == 3  # bounded by max_rounds
    assert uids(batch) == ["r2:0", "r2:1"]  # nothing informative: the last round as it is (zero advantages)
    assert m["sampling/short"] == 1 and m["sampling/short_steps"] == 1 and m["sampling/groups_kept"] == 0
    assert m["sampling/zero_variance_frac"] == 1.0 and m["sampling/rounds"] == 3
    # partly informative but short after max_rounds: trained short with what was kept
    rounds = Rounds([scored_round([[1, 0, 1, 1], [0, 0, 0, 0]], "x"), scored_round([[1, 1, 1, 1], [0, 0, 0, 0]], "y")])
    batch, m = BatchFiller("filter", target_groups=3, max_rounds=2, signal="reward", max_off_policy_steps=0).fill(
        1, rounds)
    assert uids(batch) == ["x:0"] and m["sampling/short"] == 1 and m["sampling/effective_batch"] == 4


def test_surplus_groups_carry_over_within_the_lag_bound_and_survive_a_checkpoint(tmp_path: Path) -> None:
    mixed = [[1, 0, 0, 0]] * 3
    filler = BatchFiller("filter", target_groups=2, max_rounds=4, signal="reward", max_off_policy_steps=1)
    rounds = Rounds([scored_round(mixed, "a")])
    batch, m = filler.fill(0, rounds)
    assert uids(batch) == ["a:0", "a:1"] and m["sampling/carried"] == 1
    state = filler.save(tmp_path)
    resumed = BatchFiller("filter", target_groups=2, max_rounds=4, signal="reward", max_off_policy_steps=1)
    resumed.load(tmp_path, state)
    for f in (filler, resumed):  # a:2 (launched at step 0) is trained at step 1 first
        rounds = Rounds([scored_round(mixed, "b")])
        rounds.step = 1
        batch, m = f.fill(1, rounds)
        assert uids(batch) == ["a:2", "b:0"] and m["sampling/rounds"] == 1 and m["sampling/carried"] == 2
    # with lag 0 nothing is carried: surplus informative groups are dropped and counted
    filler = BatchFiller("filter", target_groups=2, max_rounds=4, signal="reward", max_off_policy_steps=0)
    batch, m = filler.fill(0, Rounds([scored_round(mixed, "c")]))
    assert m["sampling/carried"] == 0 and m["sampling/dropped_stale"] == 1


def test_replace_copies_informative_groups_without_a_new_round() -> None:
    rounds = Rounds([scored_round([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]], "a")])
    batch, m = BatchFiller("replace", 4, 4, "reward", 0).fill(0, rounds)
    assert rounds.draws == 1 and uids(batch) == ["a:1", "a:1", "a:3", "a:3"]
    assert batch.group_index.tolist() == [g for g in range(4) for _ in range(4)]
    assert batch.rewards.tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0]
    assert m["sampling/groups_kept"] == 4 and m["sampling/zero_variance_frac"] == 0.5


def test_off_trains_the_round_as_it_is_and_logs_the_collapse_signal() -> None:
    r = scored_round([[1, 1, 1, 1], [1, 0, 0, 0]], "a")
    batch, m = BatchFiller("off", 2, 4, "reward", 0).fill(0, Rounds([r]))
    assert batch is r and m["sampling/zero_variance_frac"] == 0.5 and m["sampling/groups_kept"] == 1
    assert m["sampling/all_correct_frac"] == 0.5 and m["sampling/all_wrong_frac"] == 0.0


def test_carried_groups_live_exactly_max_off_policy_steps_steps() -> None:
    """With k = 2 a group launched at step 0 may be trained at step 2 and no later."""
    mixed = [[1, 0, 0, 0]] * 4
    filler = BatchFiller("filter", target_groups=1, max_rounds=1, signal="reward", max_off_policy_steps=2)
    batch, m = filler.fill(0, Rounds([scored_round(mixed, "a")]))
    assert uids(batch) == ["a:0"] and m["sampling/carried"] == 3 and m["sampling/dropped_stale"] == 0
    for step, uid in ((1, "a:1"), (2, "a:2")):
        batch, m = filler.fill(step, Rounds([]))  # carried groups fill the batch: no round drawn
        assert uids(batch) == [uid] and m["sampling/rounds"] == 0 and math.isnan(m["sampling/zero_variance_frac"])
    assert m["sampling/carried"] == 0 and m["sampling/dropped_stale"] == 1  # a:3 would be 3 steps old at step 3
