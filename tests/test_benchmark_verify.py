"""benchmark_verify: the last \\boxed{} (nested braces), the fallback extractor, typographic wrappers,
several golds, golds math-verify cannot parse; and verifier parity on real gold through the isolated
RewardScorer on a fixed subset of every set (the full sets: `rl-div bench --sections parity`)."""

from __future__ import annotations

import pytest

from rewards import RewardScorer, RewardSpec
from rewards.benchmark import benchmark_answer, benchmark_verify, tidy_answer
from rl_div.benchmarks.parity import equivalent_forms, parity_cases, wrong_forms
from rl_div.data import PromptRecord
from tests.test_benchmarks import DATA, ROWS, needs_data


def record(*golds: str, extractor: str = "math") -> PromptRecord:
    return PromptRecord("q", golds[0], "t:1", {"golds": list(golds), "verifier": "benchmark_verify",
                                               "extractor": extractor})


@pytest.mark.parametrize(("completion", "answer"), [
    ("so $\\boxed{\\frac{1}{2}}$ and then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.",
     "\\left( 3, \\frac{\\pi}{2} \\right)"),  # the last box, nested braces kept
    ("first \\boxed{1}, no box after: the answer is 7", "1"),  # a box wins over a later number
    ("no box at all, the answer is 1,000.", "1000"),  # fallback: math extractor's last number
    ("\\boxed{12", "12"),  # an unclosed box is no box: the fallback's last number
])
def test_answer_is_the_last_box_else_the_fallback(completion: str, answer: str) -> None:
    assert benchmark_answer(completion, record("0")) == answer


def test_fallback_extractor_is_the_records() -> None:
    assert benchmark_answer("The answer is 5\nFinal: x = 9", record("0", extractor="last_line")) == "Final: x = 9"


@pytest.mark.parametrize(("raw", "tidy"), [
    ("\\textbf{(073)}", "073"), ("$7$", "7"), ("104.", "104"), ("\\mathbf{\\textbf{(C)}}", "C"),
    ("\\textbf{a}+\\textbf{b}", "\\textbf{a}+\\textbf{b}"), ("(1, 2)", "(1, 2)"), ("x\\.", "x\\."),
])
def test_tidy_drops_typography_only(raw: str, tidy: str) -> None:
    assert tidy_answer(raw) == tidy


@pytest.mark.parametrize(("gold", "completion"), [
    ("\\frac{1}{2}", "\\boxed{0.5}"), ("\\frac{1}{2}", "\\boxed{\\dfrac12}"), ("0.5", "\\boxed{\\frac{1}{2}}"),
    ("3", "\\boxed{x = 3}"), ("27", "\\boxed{27.0}"), ("27.0", "\\boxed{27}"), ("073", "\\boxed{\\textbf{(073)}}"),
    ("073", "\\boxed{73}"), ("(1,2]", "\\boxed{(1, 2]}"), ("(3, 4)", "\\boxed{(3,4)}"),
    ("\\frac{41}{12}", "\\boxed{\\frac{41}{12}\\text{ km}}"), ("69, 84", "\\boxed{84, 69}"),
    ("\\$32,\\!348", "\\boxed{32348}"),
])
def test_equivalent_forms_are_accepted(gold: str, completion: str) -> None:
    assert benchmark_verify(completion, record(gold)) == 1.0


@pytest.mark.parametrize(("gold", "completion"), [
    ("\\frac{1}{2}", "\\boxed{0.51}"), ("25", "\\boxed{26}"), ("(1,2]", "\\boxed{[1,2]}"), ("(3,4)", "\\boxed{(4,3)}"),
    ("69, 84", "\\boxed{69}"), ("073", "\\boxed{\\textbf{(037)}}"), ("5", "no answer here"), ("5", "\\boxed{}"),
])
def test_wrong_answers_are_rejected(gold: str, completion: str) -> None:
    assert benchmark_verify(completion, record(gold)) == 0.0


def test_any_of_several_golds_is_correct() -> None:
    assert benchmark_verify("\\boxed{-2}", record("2", "-2")) == 1.0
    assert benchmark_verify("\\boxed{3}", record("2", "-2")) == 0.0


def test_a_gold_math_verify_cannot_parse_is_compared_as_text() -> None:
    gold = "np.arcsin(10/13)"  # a Minerva gold
    assert benchmark_verify("\\boxed{np.arcsin(10 / 13)}", record(gold)) == 1.0
    assert benchmark_verify("\\boxed{np.arcsin(10/14)}", record(gold)) == 0.0


def test_generated_forms_by_hand() -> None:
    assert equivalent_forms("27") == ["27.0", "x = 27", "27 \\text{ cm}", "\\dfrac{54}{2}", "\\textbf{(027)}"]
    assert equivalent_forms("\\frac{3}{4}") == ["\\dfrac{3}{4}", "3/4", "\\frac{6}{8}", "0.75"]
    assert equivalent_forms("\\frac{1}{3}")[-1] == "\\frac{2}{6}"  # no terminating decimal
    assert wrong_forms("27") == ["28", "26", "27.5"] and wrong_forms("x^2") == []


@needs_data
def test_parity_on_real_gold_through_the_isolated_scorer() -> None:
    """Every 8th row of each set (every 40th of GSM8K): each case scored as a correct verifier would,
    in the isolated worker with its real timeout; no timeouts, no errors."""
    assert DATA is not None
    root = DATA / "benchmarks"
    cases = [c for name in sorted(ROWS) for c in parity_cases(name, root, every=40 if name == "gsm8k" else 8)]
    known = {("aime24", "aime24:1")}  # its solution has no box and ends in the author's name "sepehr2010"
    with RewardScorer([RewardSpec("benchmark_verify")], timeout_s=10.0, workers=1, items_per_call=64) as scorer:
        result = scorer.score([c.completion for c in cases], [c.record for c in cases], list(range(len(cases))))
    assert set(result.errors.values()) == {0}, result.errors
    disagree = [(c.benchmark, c.kind, c.record.uid, c.completion[-50:])
                for c, got in zip(cases, result.correct, strict=True) if got != c.expected]
    assert [d for d in disagree if (d[0], d[2]) not in known] == []
    assert [(d[0], d[1], d[2]) for d in disagree] == [("aime24", "solution", "aime24:1")]  # the explained one
    kinds = {c.kind for c in cases}
    assert kinds == {"solution", "gold", "equivalent", "wrong"} and len(cases) > 1000
