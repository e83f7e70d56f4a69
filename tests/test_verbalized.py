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


def test_vs_outputs_become_scored_samples() -> None:
    """Two problems, one generation each, k = 3: the candidates are scored by benchmark_verify in the
    isolated worker as three samples per problem; malformed and missing candidates are counted."""
    from rewards import RewardScorer, RewardSpec
    from rl_div.benchmarks import BenchmarkRow, BenchmarkSet, SamplingDefaults, benchmark_records
    from rl_div.train.benchmark_eval import expand_vs, large_k_summary, vs_problems

    bench = BenchmarkSet("hand", [BenchmarkRow("What is 6*7?", ("42",), 1), BenchmarkRow("What is 2+2?", ("4",), 2)],
                         [], "inline", SamplingDefaults())
    records = benchmark_records(bench, vs_candidates=3)
    assert records[0].meta["vs_candidates"] == 3 and records[0].prompt.startswith("Generate 3 different responses")
    outputs = [block("6*7 = \\boxed{42}", "0.6") + block("\\boxed{48}", "0.3") + block("\\boxed{42}", "bad"),
               block("\\boxed{5}", "0.9")]  # problem 2: one candidate written, two missing
    texts, expanded, groups, counts = expand_vs(outputs, records, [0, 1], 3)
    assert len(texts) == 6 and groups == [0, 0, 0, 1, 1, 1] and expanded[3] is records[1]
    assert counts == {"vs/malformed": 1.0, "vs/missing": 2.0, "vs/extra": 0.0}
    with RewardScorer([RewardSpec("task_verifier")], timeout_s=10.0) as scorer:
        result = scorer.score(texts, expanded, groups)
    problems = vs_problems(expanded, groups, list(result.correct), list(result.answers))
    # problem 1: 42 (right), 48, 42 (its probability is malformed, its answer still a sample) -> c = 2 of 3
    # problem 2: 5 (wrong) and two empty candidates -> c = 0 of 3
    assert [(p["uid"], p["n"], p["c"]) for p in problems] == [("hand:1", 3, 2), ("hand:2", 3, 0)]
    metrics, small = large_k_summary(problems)
    assert metrics["avg@n"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-15)
    assert metrics["maj@3"] == pytest.approx(0.5, abs=1e-15)  # 42 wins problem 1; 5 alone wins problem 2
    assert small[0]["answer_counts"] == {"42": [2, 2], "48": [1, 0]}
