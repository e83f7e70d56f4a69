"""Verbalized Sampling's prompt and parser on hand-written outputs, well and ill formed. (Its value
needs an instruct model on a GPU; only the prompt and the parser are checked here.)"""

from __future__ import annotations

import pytest

from rl_div.benchmarks.verbalized import VSCandidate, parse_vs, vs_prompt


def block(text: str, probability: str) -> str:
    return f"<response><text>{text}</text><probability>{probability}</probability></response>"


def test_prompt_asks_for_k_tagged_candidates() -> None:
    text = vs_prompt("What is 6*7?", 3)
    assert text.startswith("Generate 3 different responses") and text.endswith("Problem: What is 6*7?")
    assert "\\boxed{}" in text and "<response><text>SOLUTION</text><probability>P</probability></response>" in text
    with pytest.raises(ValueError):
        vs_prompt("x", 0)


def test_well_formed_output() -> None:
    out = "\n".join([block("6*7 = \\boxed{42}", "0.7"), block("maybe \\boxed{48}", "20%"),
                     block("\\boxed{36}", " 0.1 ")])
    got = parse_vs(out, 3)
    assert got.candidates == [VSCandidate("6*7 = \\boxed{42}", 0.7, True), VSCandidate("maybe \\boxed{48}", 0.2, True),
                              VSCandidate("\\boxed{36}", 0.1, True)]
    assert (got.malformed, got.missing, got.extra) == (0, 0, 0)
    assert got.texts == ["6*7 = \\boxed{42}", "maybe \\boxed{48}", "\\boxed{36}"]


def test_ill_formed_outputs_are_counted_never_raised() -> None:
    out = (block("\\boxed{1}", "high") + block("\\boxed{2}", "1.5") + "<response><text>\\boxed{3}</text></response>"
           + block("  ", "0.2") + block("\\boxed{5}", "0.1"))
    got = parse_vs(out, 4)  # 5 blocks for k = 4: the first 4 kept, all malformed
    assert [c.text for c in got.candidates] == ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", ""]
    assert [c.probability for c in got.candidates] == [None, None, None, 0.2]
    assert (got.malformed, got.missing, got.extra) == (4, 0, 1)


def test_truncated_and_empty_outputs() -> None:
    cut = block("\\boxed{7}", "0.5") + "<response><text>and then \\boxed{8"  # cut off mid-candidate
    got = parse_vs(cut, 3)
    assert got.texts == ["\\boxed{7}", "", ""] and (got.malformed, got.missing, got.extra) == (0, 2, 0)
    nothing = parse_vs("I think the answer is 42.", 2)
    assert nothing.texts == ["", ""] and (nothing.malformed, nothing.missing) == (0, 2)
