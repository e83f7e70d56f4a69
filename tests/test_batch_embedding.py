"""Group rewards embed a whole batch in one call, each distinct text once, and score exactly as when
every group is embedded on its own (the real packaged MiniLM)."""

from __future__ import annotations

from typing import Any

import pytest

from rewards import REWARDS, RewardScorer, RewardSpec
from rewards.embedding import clear_embedding_cache, get_embedder
from rl_div.data import PromptRecord

# 4 prompts x 6 responses; answers repeat inside and across groups; "no idea" has no answer.
GOLDS = ["4", "9", "12", "7"]
ANSWERS = [["4", "4", "4.0", "5", "five", None], ["9", "3*3", "8", "8", "9", "9"],
           ["12", "13", "4", "12", None, "twelve"], ["7", "7", "7", "7", "7", "7"]]


def batch() -> tuple[list[str], list[PromptRecord], list[int]]:
    completions, records, groups = [], [], []
    for g, (gold, answers) in enumerate(zip(GOLDS, ANSWERS, strict=True)):
        for a in answers:
            completions.append(f"The answer is \\boxed{{{a}}}" if a is not None else "no idea")
            records.append(PromptRecord(f"q{g}", gold))
            groups.append(g)
    return completions, records, groups


@pytest.fixture()
def encode_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The texts of every encode call of the real embedder (a spy: the real encode still runs)."""
    encoder = get_embedder(None)
    calls: list[list[str]] = []
    real = encoder.encode

    def spy(texts: list[str], *args: Any, **kwargs: Any) -> Any:
        calls.append(list(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(encoder, "encode", spy)
    clear_embedding_cache()
    yield calls
    clear_embedding_cache()


@pytest.mark.parametrize("spec", [RewardSpec("novelty", 1.0, {"text": "completion"}),
                                  RewardSpec("novelty", 1.0, {"text": "answer"}),
                                  RewardSpec("partition", 1.0, {"text": "completion"}),
                                  RewardSpec("dra", 1.0, {"text": "completion"})])
def test_one_call_per_batch_each_text_once_same_scores(spec: RewardSpec, encode_calls: list[list[str]]) -> None:
    completions, records, groups = batch()
    with RewardScorer([RewardSpec("math_verify", 0.0), spec], isolated=False) as scorer:
        result = scorer.score(completions, records, groups)
    assert len(encode_calls) == 1  # the whole batch in one call
    assert len(encode_calls[0]) == len(set(encode_calls[0]))  # each distinct text once
    batched = result.components[spec.name]

    # Reference: each group scored on its own, its texts embedded in its own call (the old way).
    reference = []
    for g in range(len(GOLDS)):
        rows = [i for i, x in enumerate(groups) if x == g]
        clear_embedding_cache()
        reference += REWARDS[spec.name]([completions[i] for i in rows], [result.answers[i] for i in rows],
                                        [result.correct[i] for i in rows], [records[i] for i in rows],
                                        **spec.params)
    assert batched == pytest.approx(reference, abs=1e-5)
    assert len(encode_calls) > 2  # the reference did embed per group


def test_repeated_texts_are_not_embedded_again(encode_calls: list[list[str]]) -> None:
    from rewards.embedding import embed

    first = embed(["a", "b", "a"])
    again = embed(["b", "c"])
    assert encode_calls == [["a", "b"], ["c"]]
    assert (first[0] == first[2]).all() and (first[1] == again[0]).all()
