"""Outcome-based exploration (Song, Kempe and Munos 2025, "Outcome-based Exploration for LLM Reasoning"):
exploration bonuses that depend only on a response's final answer (the answers rl_div already extracts).

* ``outcome_ucb``, historical exploration: a UCB bonus for answers rarely seen for this prompt over the
  whole run, b_i = c / sqrt(N(q, a_i)), N(q, a) the number of responses to prompt q that ended in answer a
  so far, this group's included (so N >= 1 and the first sighting gets c). Its counts are state kept
  across steps: the group reward is ``stateful`` (rewards.registry), the scorer hands it this prompt's
  table, and ``rl-div train`` keeps the tables in the driver and in the checkpoint (``--resume``
  continues them; an evaluation's scoring neither reads nor updates them).
* ``outcome_batch``, batch exploration: a penalty for answers repeated within the group,
  b_i = -c * #{j != i : a_j = a_i} / G.

Both add to the verifier's reward (give each its weight in ``reward.rewards``). rl_div's choices on the
open points (docs/algorithms.md section 6): answers are compared as extracted strings (``4`` and ``4.0``
differ); a response without an extracted answer gets no bonus and no penalty and is not counted; c = 0.1
for both (``c``); the historical table keeps at most ``max_answers`` (64) answers per prompt, and when a new
answer does not fit the least-seen one (the oldest among ties) is dropped, so memory per prompt is bounded
(a dropped answer seen again restarts at N = 1). No authors' code is public; tests/test_outcome_exploration.py
checks both against float64 references from these equations.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

from rewards.registry import register_reward

if TYPE_CHECKING:
    from rl_div.data import PromptRecord


def count_answers(counts: dict[str, int], answers: list[str | None]) -> None:
    """Add the group's answers to one prompt's table in place (None answers are not counted)."""
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1


def bound_counts(counts: dict[str, int], answers: list[str | None], max_answers: int) -> None:
    """Drop the least-seen answers (the oldest among ties: dict order is insertion order) until at most
    max_answers remain, answers of this group last."""
    if max_answers < 1:
        raise ValueError(f"outcome_ucb: max_answers must be >= 1, got {max_answers}")
    present = {a for a in answers if a is not None}
    while len(counts) > max_answers:
        order = list(counts)
        candidates = [a for a in order if a not in present] or order
        drop = min(candidates, key=lambda a: (counts[a], order.index(a)))
        del counts[drop]


@register_reward("outcome_ucb", scope="group")
def outcome_ucb_reward(completions: list[str], answers: list[str | None], correct: list[float],
                       records: list[PromptRecord], *, state: dict[str, int], c: float = 0.1,
                       max_answers: int = 64) -> list[float]:
    """Historical exploration over one group: c / sqrt(N(q, a_i)) with this group counted into
    ``state`` (this prompt's answer -> count table, updated in place, then bounded to max_answers);
    0 without an answer. [G] -> [G]."""
    count_answers(state, answers)
    bonus = [0.0 if a is None else c / math.sqrt(state[a]) for a in answers]
    bound_counts(state, answers, max_answers)
    return bonus


outcome_ucb_reward.stateful = True  # type: ignore[attr-defined]


@register_reward("outcome_batch", scope="group")
def outcome_batch_reward(completions: list[str], answers: list[str | None], correct: list[float],
                         records: list[PromptRecord], *, c: float = 0.1) -> list[float]:
    """Batch exploration over one group: -c * (other responses with the same answer) / G; 0 without an
    answer. [G] -> [G]."""
    g = len(answers)
    seen = Counter(a for a in answers if a is not None)
    return [0.0 if a is None else -c * (seen[a] - 1) / g for a in answers]
