"""Use rl_div's rewards inside TRL's GRPOTrainer.

    from rl_div.integrations.trl import trl_reward
    trainer = GRPOTrainer(model=..., reward_funcs=[trl_reward("math_verify"), trl_reward("novelty")], ...)

TRL calls a reward function as ``f(prompts=..., completions=..., completion_ids=..., **columns)``
with the G completions of each prompt next to each other. The adapter turns each row into a
PromptRecord (gold from the ``answer_column`` dataset column), scores the batch with a
:class:`rewards.RewardScorer` (verifiers in the killable worker, group rewards per prompt group),
and returns None where a reward failed, which TRL treats as "no reward" (NaN), never 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from rewards import RewardScorer, RewardSpec
from rl_div.data import PromptRecord


def completion_text(completion: Any) -> str:
    """TRL completions are strings, or (conversational) lists of messages: take the last content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


def consecutive_groups(prompts: list[Any]) -> list[int]:
    """Group id per row: rows with the same prompt next to each other share one (TRL's layout)."""
    ids: list[int] = []
    for i, prompt in enumerate(prompts):
        ids.append(ids[-1] if i and prompt == prompts[i - 1] else (ids[-1] + 1 if ids else 0))
    return ids


def trl_reward(name: str, *, answer_column: str = "answer", meta_column: str = "meta",
               record_meta: dict[str, Any] | None = None,
               timeout_s: float = 5.0, isolated: bool = True, plugins: list[str] | None = None,
               **params: Any) -> Callable[..., list[float | None]]:
    """A TRL reward function for the rl_div reward ``name`` (see ``rewards.REWARDS``).

    record_meta: meta given to every PromptRecord (default: math answers, math extractor);
    a dataset column ``meta_column`` holding a dict per row (e.g. a built-in task's record.meta)
    is merged over it.
    """
    scorer = RewardScorer([RewardSpec(name, 1.0, dict(params))], timeout_s=timeout_s, isolated=isolated,
                          plugins=list(plugins or []))
    meta = dict(record_meta or {})

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        if answer_column not in columns:
            raise KeyError(f"reward {name!r} needs the dataset column {answer_column!r}; columns: {sorted(columns)}")
        golds = columns[answer_column]
        row_meta = columns.get(meta_column) or [{}] * len(prompts)
        records = [PromptRecord(prompt=str(p), answer=str(a), uid=str(i), meta={**meta, **(m or {})})
                   for i, (p, a, m) in enumerate(zip(prompts, golds, row_meta, strict=True))]
        texts = [completion_text(c) for c in completions]
        result = scorer.score(texts, records, consecutive_groups([str(p) for p in prompts]))
        return [None if math.isnan(v) else float(v) for v in result.total]

    reward.__name__ = f"rl_div_{name}"
    reward.close = scorer.close  # type: ignore[attr-defined]
    return reward
