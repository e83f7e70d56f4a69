"""The ``format`` reward: did the completion state its answer in the expected form?"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

from rewards.answers import ANSWER_EXTRACTORS, extractor_name
from rewards.registry import register_reward

if TYPE_CHECKING:
    from rl_div.data import PromptRecord

# The "math" extractor falls back to the last number to salvage an answer; that fallback is not a
# format, so the format reward checks math records for the strict \boxed{} form instead.
STRICT_FORM: dict[str, str] = {"math": "boxed"}


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.DOTALL)


@register_reward("format", scope="sample")
def format_reward(
    completion: str, record: PromptRecord, *, pattern: str | None = None, extractor: str | None = None
) -> float:
    """1.0 when the completion holds an answer in the expected form, else 0.0.

    ``pattern``: a regex the completion must contain (re.search, DOTALL); when given, it alone
    decides. Otherwise the answer must be extractable by ``extractor`` (default: the record's own
    extractor, with "math" checked in its strict form "boxed": a closed, non-empty \\boxed{}).
    """
    if pattern is not None:
        return 1.0 if _compiled(pattern).search(completion) else 0.0
    name = extractor or extractor_name(record)
    name = STRICT_FORM.get(name, name)
    return 0.0 if ANSWER_EXTRACTORS.get(name)(completion) is None else 1.0
