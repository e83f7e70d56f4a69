"""``benchmark_verify``: how the field scores a benchmark answer, as Qwen2.5-Math's evaluation and
lighteval do: take the content of the last ``\\boxed{}`` (nested braces kept), else the record's
extractor (default ``math``: the last number), tidy typographic wrappers, and compare it with every
gold answer of the record by math-verify; any gold matching is correct.

Parsing only the extracted answer (not the whole completion) is what keeps a long solution from
timing out in math-verify's LaTeX scan; the time limit is still enforced from outside, in the
isolated worker (rewards.isolation), as for every sample reward.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from math_verify import parse, verify

from rewards.answers import ANSWER_EXTRACTORS, DEFAULT_EXTRACTOR, last_boxed
from rewards.math import EXTRACTION_CONFIG, GoldParseError, parse_gold
from rewards.registry import register_reward

if TYPE_CHECKING:
    from rl_div.data import PromptRecord

# \textbf{...}, \mathbf{...}, \bf{...}, \mathrm{...} around the whole answer: emphasis, not maths.
_EMPHASIS = re.compile(r"^\\(?:textbf|mathbf|bf|boldsymbol|mathrm|textrm)\s*\{(.*)\}$", re.DOTALL)
# "(073)" / "(C)": an AMC/AIME-style label in parentheses around one integer or one choice letter.
_LABEL = re.compile(r"^\(\s*([0-9]+|[A-E])\s*\)$")


def benchmark_answer(completion: str, record: PromptRecord) -> str | None:
    """The last ``\\boxed{}`` content, else the record's extractor's answer (``meta["extractor"]``)."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    return ANSWER_EXTRACTORS.get(str(record.meta.get("extractor", DEFAULT_EXTRACTOR)))(completion)


def tidy_answer(answer: str) -> str:
    """Drop what is typography, not value: ``\\textbf{(073)}`` -> ``073``, ``$7$`` -> ``7``, ``104.`` -> ``104``.

    Repeated until nothing changes, so nested wrappers come off too. A choice letter stays a letter.
    """
    previous = None
    text = answer.strip()
    while text != previous:
        previous = text
        if len(text) > 1 and text.startswith("$") and text.endswith("$"):
            text = text.strip("$").strip()
        emphasis = _EMPHASIS.match(text)
        if emphasis and _balanced(emphasis.group(1)):
            text = emphasis.group(1).strip()
        label = _LABEL.match(text)
        if label:
            text = label.group(1)
        if text.endswith(".") and not text.endswith("\\."):  # sentence end: "\\boxed{104.}"
            text = text[:-1].rstrip()
    return text


def _balanced(text: str) -> bool:
    """Whether braces in ``text`` pair up (so ``\\textbf{a}+\\textbf{b}`` is not unwrapped as one)."""
    depth = 0
    for ch in text:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def golds_of(record: PromptRecord) -> list[str]:
    """Every acceptable gold of a record: ``meta["golds"]`` when the benchmark has several, else ``answer``."""
    golds = record.meta.get("golds")
    return [str(g) for g in golds] if golds else [record.answer]


def same_text(a: str, b: str) -> bool:
    """String equality ignoring whitespace and ``$``: the comparison for a gold math-verify cannot parse."""
    def squash(text: str) -> str:
        return re.sub(r"[\s$]|\\[,;:! ]", "", text)
    return squash(a) == squash(b)


def parsed_golds(record: PromptRecord) -> list[tuple[str, list | None]]:
    """(gold text, math-verify's parse or None where it does not parse) for every gold of a record.

    A benchmark gold is answer text, never a sentence, so it is boxed as it is: an escaped ``\\$`` in
    ``\\$32,\\!348`` is then not read as a math delimiter (parse_gold wraps only delimiter-free text).
    """
    out: list[tuple[str, list | None]] = []
    for gold in golds_of(record):
        text = tidy_answer(gold)
        try:
            out.append((text, parse_gold(f"\\boxed{{{text}}}")))
        except GoldParseError:  # e.g. Minerva's "np.arcsin(10/13)": compared as text (README, Benchmarks)
            out.append((text, None))
    return out


@register_reward("benchmark_verify", scope="sample", verifier=True)
def benchmark_verify(completion: str, record: PromptRecord, *, float_rounding: int = 6, strict: bool = True,
                     raise_on_error: bool = True) -> float:
    """1.0 when the completion's answer (see :func:`benchmark_answer`) equals any gold, else 0.0.

    A gold math-verify parses is compared by math-verify; one it cannot parse is compared as text
    (:func:`same_text`), as the Qwen2.5-Math harness falls back to string equality. A completion
    without an answer scores 0.0.
    """
    golds = parsed_golds(record)
    answer = benchmark_answer(completion, record)
    if answer is None:
        return 0.0
    answer = tidy_answer(answer)
    if any(parsed is None and same_text(answer, text) for text, parsed in golds):
        return 1.0
    pred = parse(f"\\boxed{{{answer}}}", extraction_config=EXTRACTION_CONFIG, parsing_timeout=None,
                 raise_on_error=raise_on_error)
    if not pred:
        return 0.0
    for _, gold in golds:
        if gold is not None and verify(gold, pred, float_rounding=float_rounding, strict=strict,
                                       timeout_seconds=None, raise_on_error=raise_on_error):
            return 1.0
    return 0.0
