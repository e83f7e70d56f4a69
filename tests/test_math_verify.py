"""The math_verify reward (in-process: the raw function), answer extraction and the format reward.

Expected values are the mathematically right verdicts, except where a row says it documents
math-verify's own behaviour (units, percentages, degrees, several boxes), which the reward inherits.
"""

from __future__ import annotations

import pytest

from rewards import REWARDS, GoldParseError, extract_answer, last_boxed, last_number, math_verify_reward
from rewards.format import format_reward
from rl_div.data import PromptRecord

CASES: list[tuple[str, str, float]] = [
    # fractions and decimals
    (r"\frac{1}{2}", r"The answer is \boxed{0.5}", 1.0),
    (r"\frac{1}{2}", r"The answer is \boxed{1/2}", 1.0),
    (r"\frac{1}{2}", "so it is 1/2", 1.0),
    (r"\frac{1}{2}", "so it is 0.5", 1.0),
    ("0.5", r"\boxed{\dfrac12}", 1.0),
    ("0.5", r"\boxed{0.50}", 1.0),
    ("0.5", r"\boxed{0.51}", 0.0),
    (r"\frac{1}{3}", r"\boxed{0.333333}", 1.0),  # equal to 6 decimals (float_rounding=6)
    (r"\frac{1}{3}", r"\boxed{0.333}", 0.0),
    ("12", r"\boxed{12.0}", 1.0),
    ("1000", r"\boxed{1,000}", 1.0),  # thousands separator
    # LaTeX expressions
    (r"\sqrt{2}", r"\boxed{\frac{2}{\sqrt{2}}}", 1.0),
    (r"2\sqrt{2}", r"\boxed{\sqrt{8}}", 1.0),
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\frac{\sqrt3}{2}}", 1.0),
    (r"\pi", r"\boxed{\pi}", 1.0),
    (r"\pi", r"\boxed{3.14159}", 0.0),  # pi is not 3.14159 to 6 decimals
    (r"x^2+1", r"\boxed{1+x^2}", 1.0),
    (r"x^2+1", r"\boxed{x^2-1}", 0.0),
    ("x=3", r"\boxed{3}", 1.0),
    # negative numbers
    ("-3", r"\boxed{-3}", 1.0),
    ("-3", r"\boxed{3}", 0.0),
    ("-3", "the answer is -3.", 1.0),
    # sets and intervals
    (r"[1, 2)", r"\boxed{[1, 2)}", 1.0),
    (r"[1, 2)", r"\boxed{(1, 2)}", 0.0),
    (r"[1, 2)", r"\boxed{[1,2]}", 0.0),
    (r"\{1,2,3\}", r"\boxed{\{3,2,1\}}", 1.0),
    (r"\{1,2,3\}", r"\boxed{\{1,2\}}", 0.0),
    (r"(-\infty, 3]", r"\boxed{(-\infty,3]}", 1.0),
    # math-verify's behaviour on units: stripped, not converted
    ("5", r"\boxed{5 \text{ cm}}", 1.0),
    ("5 cm", r"\boxed{5}", 1.0),
    ("5", r"\boxed{5\,\mathrm{cm}}", 1.0),
    ("5 cm", r"\boxed{50 mm}", 0.0),
    # math-verify's behaviour on percentages (both readings accepted) and degrees (not converted)
    (r"10\%", r"\boxed{0.1}", 1.0),
    (r"10\%", r"\boxed{10}", 1.0),
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\sin(60^\circ)}", 0.0),
    # which answer counts: the last box on its own line; math-verify reads several boxes on one
    # line as a set when a comma is near ("{7, 8}"), so neither 7 nor 8 alone matches then
    ("8", "first \\boxed{7}\n\nno wait: \\boxed{8}", 1.0),
    ("7", "first \\boxed{7}\n\nno wait: \\boxed{8}", 0.0),
    ("8", r"\boxed{7} hmm, actually \boxed{8}", 0.0),
    ("2", r"\boxed{2}\boxed{3}", 0.0),
    ("12", "$12$", 1.0),
    ("12", "Final answer: 12", 1.0),
    # a currency sign in the gold (MATH writes "\$18.90"): an escaped dollar is text, not math mode
    (r"\$18.90", r"\boxed{18.90}", 1.0),
    (r"\$32,\!348", r"\boxed{32348}", 1.0),
    (r"\$5", r"\boxed{6}", 0.0),
    ("$5$", r"\boxed{5}", 1.0),
    # wrong, garbage, empty
    ("7", r"\boxed{8}", 0.0),
    ("7", "I don't know.", 0.0),
    ("7", "lorem ipsum dolor sit amet", 0.0),
    ("7", "", 0.0),
    ("7", r"\boxed{}", 0.0),
]


def rec(gold: str, **meta: object) -> PromptRecord:
    return PromptRecord(prompt="q", answer=gold, meta=dict(meta))


@pytest.mark.parametrize(("gold", "completion", "expected"), CASES)
def test_math_verify_table(gold: str, completion: str, expected: float) -> None:
    assert math_verify_reward(completion, rec(gold)) == expected


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert {e for _, _, e in CASES} == {0.0, 1.0}


@pytest.mark.parametrize("gold", ["", "   ", r"\frac{", r"\boxed{}"])
def test_unparseable_gold_raises(gold: str) -> None:
    with pytest.raises(GoldParseError):
        math_verify_reward(r"\boxed{1}", rec(gold))


def test_registered_as_verifier() -> None:
    fn = REWARDS["math_verify"]
    assert fn is math_verify_reward
    assert fn.scope == "sample" and fn.is_verifier is True
    assert REWARDS["format"].is_verifier is False


def test_task_verifier_dispatches_on_meta() -> None:
    tv = REWARDS["task_verifier"]
    assert tv(r"\boxed{4}", rec("4")) == 1.0  # no task: math_verify
    # prime_gap: 347 - 10 = 337 is prime (right), 347 - 6 = 341 = 11 * 31 (wrong)
    prime = rec("", task="prime_gap", extractor="prime_gap", n=347)
    assert tv("10", prime) == 1.0
    assert tv("6", prime) == 0.0
    with pytest.raises(ValueError, match="not a verifier"):
        tv("1", rec("1", verifier="format"))


# ---- answer extraction ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{ 2 }", "2"),
        (r"\boxed{\{1, \{2\}\}}", r"\{1, \{2\}\}"),  # nested braces stay balanced
        (r"\fbox{3}", "3"),
        (r"\boxed{x^{2}", None),  # never closed (truncated)
        (r"\boxed{}", None),
        ("no box here", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I got 3 apples and then 42.", "42"),
        ("temperature -7.5 degrees", "-7.5"),
        ("the range 3-5", "5"),  # a subtraction's minus is not a sign
        ("total 1,000,000", "1000000"),
        ("half is 1/2", "1/2"),
        ("x2 and x-y", "2"),
        ("nothing numeric", None),
    ],
)
def test_last_number(text: str, expected: str | None) -> None:
    assert last_number(text) == expected


def test_extract_answer_by_record_extractor() -> None:
    text = "step 1: 12\nstep 2: 7\n\\boxed{9}\nDone 5"
    assert extract_answer(text, rec("9")) == "9"  # default "math": the box wins over numbers
    assert extract_answer("it is 5, or 6", rec("6")) == "6"  # no box: the last number
    assert extract_answer(text, rec("9", extractor="last_line")) == "Done 5"
    assert extract_answer("  \n ", rec("9", extractor="last_line")) is None
    assert extract_answer(" 07 ", rec("", extractor="prime_gap")) == "7"  # a task's own extractor


# ---- format reward -------------------------------------------------------------------------------
def test_format_math_needs_a_closed_box() -> None:
    assert format_reward(r"so \boxed{3}", rec("3")) == 1.0
    assert format_reward("so 3", rec("3")) == 0.0  # a bare number is not the format
    assert format_reward(r"so \boxed{3", rec("3")) == 0.0
    assert format_reward(r"\boxed{}", rec("3")) == 0.0


def test_format_pattern_and_extractor_params() -> None:
    tagged = "<think>hm</think><answer>4</answer>"
    pattern = r"^<think>.*</think><answer>.*</answer>$"
    assert format_reward(tagged, rec("4"), pattern=pattern) == 1.0
    assert format_reward("<answer>4</answer>", rec("4"), pattern=pattern) == 0.0
    assert format_reward("line one\nanswer", rec("4"), extractor="last_line") == 1.0
    assert format_reward("12", rec("", extractor="prime_gap")) == 1.0
    assert format_reward("twelve", rec("", extractor="prime_gap")) == 0.0
