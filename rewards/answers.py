"""Answer extraction: the answer text of a completion, by extractor name.

``ANSWER_EXTRACTORS`` maps a name to ``fn(completion: str) -> str | None`` (None = no parseable
answer). A record chooses its extractor through ``record.meta["extractor"]`` (default ``"math"``);
built-in synthetic tasks register their own names (rewards.tasks.register_task_rewards).

The extracted text is what the group rewards compare and embed (novelty, partition) and what the
diversity metrics count; correctness is decided by the verifier, not here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from rl_div.registry import Registry

if TYPE_CHECKING:  # the data module imports torch; extraction itself does not need it
    from rl_div.data import PromptRecord

Extractor = Callable[[str], "str | None"]

ANSWER_EXTRACTORS: Registry[Extractor] = Registry("answer extractor")
DEFAULT_EXTRACTOR = "math"

# A number: optional sign (only when the minus is not part of a word or a subtraction such as
# "3-5"), thousands groups or plain digits, optional decimals, optional "/denominator".
_NUMBER = re.compile(r"(?:(?<![\w.)\]}])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, stripped.

    None when there is no box, or when the last box is never closed (a truncated completion).
    An empty box gives None too: it holds no answer.
    """
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    content = _balanced(text, starts[-1])
    if content is None:
        return None
    content = content.strip()
    return content or None


def _balanced(text: str, start: int) -> str | None:
    """The text from ``start`` up to the brace that closes the one just before ``start``."""
    depth = 1
    for k in range(start, len(text)):
        ch = text[k]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:k]
    return None


def last_number(text: str) -> str | None:
    """The last number in ``text`` ("1,000" -> "1000", "-3.5", "1/2"), or None."""
    matches = _NUMBER.findall(text)
    return matches[-1].replace(",", "") if matches else None


@ANSWER_EXTRACTORS.register("math")
def extract_math(completion: str) -> str | None:
    """The last ``\\boxed{}`` content, else the last number in the text, else None."""
    boxed = last_boxed(completion)
    return boxed if boxed is not None else last_number(completion)


@ANSWER_EXTRACTORS.register("boxed")
def extract_boxed(completion: str) -> str | None:
    """Only the last ``\\boxed{}`` content (the strict form the format reward checks)."""
    return last_boxed(completion)


@ANSWER_EXTRACTORS.register("last_line")
def extract_last_line(completion: str) -> str | None:
    """The last non-blank line, stripped, or None for a blank completion."""
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    return lines[-1] if lines else None


def extractor_name(record: PromptRecord) -> str:
    return str(record.meta.get("extractor", DEFAULT_EXTRACTOR))


def extract_answer(completion: str, record: PromptRecord) -> str | None:
    """The answer text of ``completion`` by the extractor the record names (default "math")."""
    return ANSWER_EXTRACTORS.get(extractor_name(record))(completion)
