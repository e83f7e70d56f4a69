"""Outcome-based exploration (rewards/outcome_exploration.py): no authors' code is public, so float64
references written here from the paper's equations (historical UCB c / sqrt(N(q, a)), batch penalty for
repeats in the group), hand-worked values, bounded memory, the scorer's state hand-over, and through a
real Ray run that --resume continues the counts (2 + 2 == 4) while evaluations leave them alone."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from rewards import REWARDS, RewardScorer, RewardSpec
from rewards.runner import merge_state, state_for
from rl_div.config import ConfigError, load_config
from rl_div.data import PromptRecord

REPO = Path(__file__).parent.parent


def reference_ucb(batches: list[list[tuple[str, list[str | None]]]], c: float) -> list[list[list[float]]]:
    """Historical exploration over a run: per batch, per group (prompt, answers), the bonuses
    c / sqrt(N(q, a)) with N counting every earlier answer to q and this group's; unbounded memory."""
    seen: dict[str, Counter] = {}
    out = []
    for batch in batches:
        per_group = []
        for prompt, answers in batch:
            counts = seen.setdefault(prompt, Counter())
            counts.update(a for a in answers if a is not None)
            per_group.append([0.0 if a is None else c / math.sqrt(counts[a]) for a in answers])
        out.append(per_group)
    return out


def reference_batch(answers: list[str | None], c: float) -> list[float]:
    g = len(answers)
    return [0.0 if a is None else -c * sum(1 for j, b in enumerate(answers) if j != i and b == a) / g
            for i, a in enumerate(answers)]


def group(answers: list[str | None]) -> tuple[list[str], list[str | None], list[float], list[PromptRecord]]:
    return ([f"\\boxed{{{a}}}" for a in answers], answers, [0.0] * len(answers),
            [PromptRecord("q", "4")] * len(answers))


def test_hand_worked_values() -> None:
    table: dict[str, int] = {}
    first = REWARDS["outcome_ucb"](*group(["4", "4", "5", None]), state=table, c=0.1)
    assert first == pytest.approx([0.1 / math.sqrt(2), 0.1 / math.sqrt(2), 0.1, 0.0])
    second = REWARDS["outcome_ucb"](*group(["4", "6", "6", "6"]), state=table, c=0.1)
    assert second == pytest.approx([0.1 / math.sqrt(3)] * 4)
    assert table == {"4": 3, "5": 1, "6": 3}
    assert REWARDS["outcome_batch"](*group(["4", "4", "5", None]), c=0.1) == pytest.approx([-0.025, -0.025, 0, 0])
    assert REWARDS["outcome_batch"](*group(["7", "7", "7", "7"]), c=0.2) == pytest.approx([-0.15] * 4)


@pytest.mark.parametrize("seed", range(4))
def test_match_the_references_over_a_run(seed: int) -> None:
    rng = random.Random(seed)
    prompts = ["p0", "p1", "p2"]
    batches = [[(p, [rng.choice(["1", "2", "3", "10", None]) for _ in range(6)]) for p in rng.sample(prompts, 2)]
               for _ in range(8)]
    expected = reference_ucb(batches, c=0.3)
    tables: dict[str, dict[str, int]] = {}
    for batch, want in zip(batches, expected, strict=True):
        for (prompt, answers), w in zip(batch, want, strict=True):
            completions, _, correct, _ = group(answers)
            records = [PromptRecord(prompt, "1")] * len(answers)
            got = REWARDS["outcome_ucb"](completions, answers, correct, records, state=tables.setdefault(prompt, {}),
                                         c=0.3)
            assert got == pytest.approx(w, abs=1e-15)
            assert REWARDS["outcome_batch"](completions, answers, correct, records, c=0.3) == pytest.approx(
                reference_batch(answers, 0.3), abs=1e-15)
    assert json.loads(json.dumps(tables)) == tables  # plain JSON: it goes into trainer_state.json


def test_memory_per_prompt_is_bounded() -> None:
    table: dict[str, int] = {}
    REWARDS["outcome_ucb"](*group(["a", "a", "b"]), state=table, max_answers=2)
    assert table == {"a": 2, "b": 1}
    # "c" does not fit: the least-seen answer not in this group ("b") goes
    assert REWARDS["outcome_ucb"](*group(["c"]), state=table, max_answers=2, c=1.0) == [1.0]
    assert table == {"a": 2, "c": 1}
    # a group with more distinct answers than fit: all are rewarded as counted; the answers of other groups go
    # first ("a", "c"), then this group's oldest least-seen ("d")
    assert REWARDS["outcome_ucb"](*group(["d", "e", "f"]), state=table, max_answers=2, c=1.0) == [1.0, 1.0, 1.0]
    assert table == {"e": 1, "f": 1}
    with pytest.raises(ValueError, match="max_answers"):
        REWARDS["outcome_ucb"](*group(["a"]), state={}, max_answers=0)


def test_the_scorer_hands_each_prompt_its_table_and_returns_it() -> None:
    completions = [r"\boxed{4}", r"\boxed{4}", r"\boxed{5}", r"\boxed{9}", r"\boxed{9}", "no answer"]
    records = [PromptRecord("two plus two", "4")] * 3 + [PromptRecord("three squared", "9")] * 3
    specs = [RewardSpec("math_verify", 1.0), RewardSpec("outcome_ucb", 1.0, {"c": 1.0})]
    tables: dict = {}
    with RewardScorer(specs, isolated=False) as scorer:
        first = scorer.score(completions, records, [0, 0, 0, 1, 1, 1], state_for(tables, [r.prompt for r in records]))
        merge_state(tables, first.state)
        again = scorer.score(completions[:3], records[:3], [0, 0, 0], state_for(tables, ["two plus two"]))
        merge_state(tables, again.state)
        fresh = scorer.score(completions[:3], records[:3], [0, 0, 0])  # no state given: nothing is kept
    s2 = 1 / math.sqrt(2)
    assert first.components["outcome_ucb"] == pytest.approx([s2, s2, 1.0, s2, s2, 0.0])
    assert first.total == pytest.approx([1 + s2, 1 + s2, 1.0, 1 + s2, 1 + s2, 0.0])
    assert again.components["outcome_ucb"] == pytest.approx([0.5, 0.5, 1 / math.sqrt(2)])
    assert fresh.components["outcome_ucb"] == pytest.approx([s2, s2, 1.0])
    assert tables == {"outcome_ucb": {"two plus two": {"4": 4, "5": 2}, "three squared": {"9": 2}}}
    assert state_for(tables, ["three squared"]) == {"outcome_ucb": {"three squared": {"9": 2}}}


def test_config_checks_know_the_scorer_supplies_the_state() -> None:
    cfg = load_config(str(REPO / "configs/demo_outcome_ucb.yaml"))
    assert [r.name for r in cfg.reward.rewards] == ["task_verifier", "outcome_ucb", "outcome_batch"]
    with pytest.raises(ConfigError, match="did you mean 'max_answers'"):
        load_config(str(REPO / "configs/demo_outcome_ucb.yaml"),
                    ["reward.rewards=[{name: task_verifier}, {name: outcome_ucb, params: {max_answer: 3}}]"])


# ---- end to end: real Ray actors, the tiny bootstrapped model -----------------------------------
from test_train_e2e import base_model, make_cfg, train_rows  # noqa: E402, F401  (fixture and helpers)


@pytest.mark.slow
def test_resume_continues_the_counts_2_plus_2(tmp_path: Path, base_model: str) -> None:  # noqa: F811
    from rl_div.run.checkpoint import load_trainer_state
    from rl_div.train.loop import train

    config = str(REPO / "configs/demo_outcome_ucb.yaml")
    common = ("checkpoint.every=2", "rollout.prompts_per_step=4", "rollout.group_size=4", "train.lr=0.01",
              "eval.every=2", "data.num_eval_prompts=2")
    full = train(make_cfg(tmp_path / "a", base_model, "train.steps=4", *common, config=config))
    train(make_cfg(tmp_path / "b", base_model, "train.steps=2", *common, config=config))
    resumed = train(make_cfg(tmp_path / "b", base_model, "train.steps=4", *common, config=config), resume=True)
    state_a = load_trainer_state(full / "checkpoints" / "step_000004")["reward_state"]
    state_b = load_trainer_state(resumed / "checkpoints" / "step_000004")["reward_state"]
    assert state_a == state_b and state_a["outcome_ucb"]
    # 4 steps x 4 prompts x 4 responses, every parsed answer counted once; evaluations counted nothing
    counted = sum(sum(t.values()) for t in state_a["outcome_ucb"].values())
    rows = {r["step"]: r for r in train_rows(full)}
    assert 0 < counted <= 4 * 16
    evaluated = {p["prompt"] for f in (full / "eval").glob("step_*.json")
                 for p in json.loads(f.read_text())["problems"]}
    assert evaluated and not evaluated & set(state_a["outcome_ucb"])  # evaluations were scored, not counted
    rows_b = {r["step"]: r for r in train_rows(resumed)}
    for step in (3, 4):
        assert rows_b[step]["reward/outcome_ucb"] == pytest.approx(rows[step]["reward/outcome_ucb"], rel=1e-9)
