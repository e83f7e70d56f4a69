"""Verifier rewards: ``math_verify`` (the math-verify library) and ``task_verifier`` (dispatch).

math-verify's own timeouts use ``signal.alarm``, which raises off the main thread and would
interrupt whatever else the process is doing, so every call here passes ``parsing_timeout=None``
/ ``timeout_seconds=None``. Time limits are enforced from outside by running these rewards in the
killable worker process of rewards.isolation (the runner does this by default).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from rewards.registry import REWARDS, is_verifier, register_reward

if TYPE_CHECKING:
    from rl_div.data import PromptRecord

# A \boxed{} answer wins over "the final answer is ..." phrasing (priority 0), and plain
# expressions such as "1/2" are accepted too (math-verify's default pair of extractors). The gold is
# wrapped in \boxed{} when it has no LaTeX delimiters of its own, so that a bare "\frac{1}{2}",
# "[1, 2)" or "x^2+1" parses as LaTeX (the plain-expression extractor alone reads "[1, 2)" as 2).
EXTRACTION_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
# A gold already in math mode is parsed as written; an escaped dollar ("\\$5", a currency sign in
# MATH's golds) is text, not a delimiter.
_DELIMITER = re.compile(r"(?<!\\)\$|\\boxed|\\\(|\\\[")


class GoldParseError(ValueError):
    """The gold answer of a record could not be parsed; the sample cannot be scored.

    Raised rather than scored 0: a broken dataset row must be seen, not learned from.
    """


class _NoTimeoutWarning(logging.Filter):
    """Drop math-verify's "timeout is disabled" warning: the timeout is enforced from outside."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_NoTimeoutWarning())


@lru_cache(maxsize=4096)
def _parse_gold_cached(gold: str) -> tuple[Any, ...]:
    text = gold.strip()
    if not text:
        raise GoldParseError("gold answer is empty")
    wrapped = text if _DELIMITER.search(text) else f"\\boxed{{{text}}}"
    # no_fallback: a gold whose LaTeX does not parse yields nothing (instead of its raw string,
    # which would silently turn the check into string equality).
    parsed = parse(wrapped, extraction_config=EXTRACTION_CONFIG, fallback_mode="no_fallback", parsing_timeout=None)
    if not parsed:
        raise GoldParseError(f"gold answer {gold!r} does not parse as math")
    return tuple(parsed)


def parse_gold(gold: str) -> list[Any]:
    """math-verify's parse of a gold answer (cached: the G responses to a prompt share it).

    Raises GoldParseError when the gold is empty or does not parse.
    """
    return list(_parse_gold_cached(gold))


@register_reward("math_verify", scope="sample", verifier=True)
def math_verify_reward(
    completion: str,
    record: PromptRecord,
    *,
    float_rounding: int = 6,
    strict: bool = True,
    raise_on_error: bool = True,
) -> float:
    """1.0 when the completion's final answer equals ``record.answer`` per math-verify, else 0.0.

    The gold is parsed first: an unparseable gold raises GoldParseError (the runner reports NaN and
    an error). A completion with no parseable answer scores 0.0 (that is the model's fault).
    ``float_rounding`` and ``strict`` are math-verify's verify() options. ``raise_on_error``: a
    comparison that raises inside sympy is reported as an error (NaN), not scored 0 as math-verify
    does by default; pass False for math-verify's own behaviour.

    What math-verify does (and so this reward), checked in tests/test_math_verify.py: fractions,
    decimals and percentages compare numerically to 6 decimals ("10\\%" equals both 0.1 and 10);
    units are stripped, not converted ("5 cm" equals 5, "50 mm" does not); degrees are not
    converted; intervals and sets compare as such; with several boxes, all of them form a set.
    """
    gold = parse_gold(record.answer)
    pred = parse(completion, extraction_config=EXTRACTION_CONFIG, parsing_timeout=None,
                 raise_on_error=raise_on_error)
    if not pred:
        return 0.0
    same = verify(
        gold, pred, float_rounding=float_rounding, strict=strict, timeout_seconds=None,
        raise_on_error=raise_on_error,
    )
    return 1.0 if same else 0.0


def gold_problem(gold: str) -> str | None:
    """Why ``gold`` cannot be scored against (GoldParseError's text), or None when it parses. The
    runner asks this once per distinct gold (``math_verify_reward.gold_check``) and leaves the samples
    of a bad one unscored without calling the verifier again."""
    try:
        parse_gold(gold)
    except GoldParseError as err:
        return f"{type(err).__name__}: {err}"
    return None


# Which function checks a gold on its own (a module:function the isolated worker imports).
math_verify_reward.gold_check = "rewards.math:gold_problem"  # type: ignore[attr-defined]


@register_reward("task_verifier", scope="sample", verifier=True)
def task_verifier(completion: str, record: PromptRecord, **params: Any) -> float:
    """The record's own verifier: the sample reward named by ``record.meta["verifier"]``, else by
    ``record.meta["task"]`` (built-in tasks register a verifier under their name), else math_verify.

    ``params`` are passed on to that reward. Lets one config train on mixed datasets.
    """
    name = str(record.meta.get("verifier") or record.meta.get("task") or "math_verify")
    if name == "task_verifier":
        raise ValueError("record.meta names 'task_verifier' as its own verifier")
    fn = REWARDS.get(name)
    if not is_verifier(fn):
        raise ValueError(f"reward {name!r} named by the record is not a verifier")
    return float(fn(completion, record, **params))
