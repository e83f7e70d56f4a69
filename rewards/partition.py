"""The ``partition`` group reward (DARLING): quality times how rare a response's semantic class is.

The group is clustered into equivalence classes (union-find over a pairwise test, the same
clustering as the ``num_classes`` diversity metric); with G responses and |c(i)| the size of
response i's class,

    Div_i = max((G - |c(i)|) / (G - 1), 0.1),      reward_i = quality_i * Div_i,

where quality is the verifier's verdict (1/0; NaN when it failed, which gives NaN). Use it with
advantage scale "none" (no std division), as DARLING does.

Equivalence tests live in ``EQUIVALENCE_TESTS`` (name -> factory). A factory gets the group and
its keyword parameters and returns ``equivalent(i, j) -> bool``; register your own to plug in a
different classifier.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from rewards.embedding import cosine_matrix, embed
from rewards.registry import register_reward
from rl_div.metrics.equivalence import equivalence_classes
from rl_div.registry import Registry

if TYPE_CHECKING:
    from rl_div.data import PromptRecord

PairTest = Callable[[int, int], bool]
EQUIVALENCE_TESTS: Registry[Callable[..., PairTest]] = Registry("equivalence test")
DIV_FLOOR = 0.1


def partition_diversity(class_ids: list[int]) -> list[float]:
    """Div_i = max((G - |class(i)|) / (G - 1), 0.1) for class ids [G].

    A group of one has no others to differ from; its Div is 1.0 (the value a unique member of a
    larger group gets), a choice, since the formula divides by zero there.
    """
    g = len(class_ids)
    if g == 1:
        return [1.0]
    sizes = Counter(class_ids)
    return [max((g - sizes[c]) / (g - 1), DIV_FLOOR) for c in class_ids]


def _same_answer(answers: list[str | None], i: int, j: int) -> bool:
    return answers[i] is not None and answers[i] == answers[j]


@EQUIVALENCE_TESTS.register("answer")
def answer_test(completions: list[str], answers: list[str | None]) -> PairTest:
    """Equivalent when the extracted answers are equal (and not None)."""
    return lambda i, j: _same_answer(answers, i, j)


@EQUIVALENCE_TESTS.register("answer_or_embedding")
def answer_or_embedding_test(
    completions: list[str],
    answers: list[str | None],
    *,
    threshold: float = 0.9,
    text: str = "completion",
    model: str | None = None,
) -> PairTest:
    """Equivalent when the answers are equal (not None) or the embeddings' cosine > threshold.

    ``text``: "completion" (default: DARLING clusters whole responses; the diversity metric embeds
    response texts too) or "answer" (None answers are then never similar by embedding).
    Embeddings are computed once per group, and only if some pair needs them.
    """
    if text not in ("answer", "completion"):
        raise ValueError(f"partition: text must be 'answer' or 'completion', got {text!r}")
    cache: dict[str, np.ndarray] = {}

    def similarity() -> np.ndarray:
        if "sim" not in cache:
            source = completions if text == "completion" else [a or "" for a in answers]
            cache["sim"] = cosine_matrix(embed(list(source), model=model))
        return cache["sim"]

    def equivalent(i: int, j: int) -> bool:
        if _same_answer(answers, i, j):
            return True
        if text == "answer" and (answers[i] is None or answers[j] is None):
            return False
        return bool(similarity()[i, j] > threshold)

    return equivalent


def _prepare_answer_or_embedding(completions: list[str], answers: list[str | None], group_index: list[int], *,
                                 threshold: float = 0.9, text: str = "completion", model: str | None = None) -> None:
    """Embed, in one call, the texts of every group whose clustering will look at an embedding
    (some pair is not answer-equal and, for text="answer", both answers exist). Rows are [B]."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_index):
        groups.setdefault(int(g), []).append(i)
    needed: list[str] = []
    for rows in groups.values():
        sub = [answers[i] for i in rows]
        pairs = [(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows)) if not _same_answer(sub, i, j)]
        if text == "answer":
            pairs = [(i, j) for i, j in pairs if sub[i] is not None and sub[j] is not None]
        if pairs:
            needed += [completions[i] if text == "completion" else (answers[i] or "") for i in rows]
    embed(needed, model=model)


answer_or_embedding_test.prepare_batch = _prepare_answer_or_embedding  # type: ignore[attr-defined]


@register_reward("partition", scope="group")
def partition_reward(
    completions: list[str],
    answers: list[str | None],
    correct: list[float],
    records: list[PromptRecord],
    *,
    test: str = "answer_or_embedding",
    **test_params: Any,
) -> list[float]:
    """DARLING partition reward over one group; ``test`` names an EQUIVALENCE_TESTS entry and the
    remaining params go to it (e.g. threshold=0.9, text="completion", model=None)."""
    equivalent = EQUIVALENCE_TESTS.get(test)(completions, answers, **test_params)
    div = partition_diversity(equivalence_classes(len(completions), equivalent))
    return [math.nan if math.isnan(q) else q * d for q, d in zip(correct, div, strict=True)]


def prepare_partition_batch(completions: list[str], answers: list[str | None], correct: list[float],
                            records: list[PromptRecord], group_index: list[int], *,
                            test: str = "answer_or_embedding", **test_params: Any) -> None:
    """The equivalence test's batch preparation (one embedding call for the batch), if it has one."""
    prepare = getattr(EQUIVALENCE_TESTS.get(test), "prepare_batch", None)
    if prepare is not None:
        prepare(completions, answers, group_index, **test_params)


partition_reward.prepare_batch = prepare_partition_batch  # type: ignore[attr-defined]
partition_reward.uses_embedder = (  # type: ignore[attr-defined]
    lambda params: params.get("test", "answer_or_embedding") == "answer_or_embedding")
