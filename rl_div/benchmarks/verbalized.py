"""Verbalized Sampling (Zhang et al. 2025) as an evaluation strategy: one generation is asked for k
candidate answers with the probability of each, and its candidates are read back as k samples, so
pass@k and every diversity metric compare direct sampling with VS on the same problems.

The prompt is our own, in the paper's form (k responses, each a text and a probability, in tags).
A parse never raises: a malformed candidate (no text, no or a bad probability) is counted and kept
as a sample without an answer, and missing candidates (the model wrote fewer than k, or was cut off)
are counted too, so every output yields exactly k samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VS_INSTRUCTION = (
    "Generate {k} different responses to the problem below, each a complete solution that puts its final "
    "answer within \\boxed{{}}, and the probability (a number between 0 and 1) that this response is the "
    "one you would give. Write each as <response><text>SOLUTION</text><probability>P</probability>"
    "</response>, one after another, and nothing else."
)
_BLOCK = re.compile(r"<response>(.*?)</response>", re.DOTALL)
_TEXT = re.compile(r"<text>(.*?)</text>", re.DOTALL)
_PROBABILITY = re.compile(r"<probability>\s*([^<]*?)\s*</probability>", re.DOTALL)


def vs_prompt(problem: str, k: int) -> str:
    """The user text of a VS request for ``k`` candidates (the chat template is applied as usual)."""
    if k < 1:
        raise ValueError(f"vs_prompt: need k >= 1, got {k}")
    return f"{VS_INSTRUCTION.format(k=k)}\n\nProblem: {problem}"


@dataclass(frozen=True)
class VSCandidate:
    """One candidate: its text ("" when malformed) and stated probability (None when missing or bad)."""

    text: str
    probability: float | None
    well_formed: bool


@dataclass(frozen=True)
class VSParse:
    """k candidates read from one output, and what was wrong: malformed blocks, missing ones (fewer
    than k blocks), extra ones (more than k: the first k are kept)."""

    candidates: list[VSCandidate]
    malformed: int
    missing: int
    extra: int

    @property
    def texts(self) -> list[str]:
        """The k candidate texts, in order: the samples to score."""
        return [c.text for c in self.candidates]


def _probability(text: str) -> float | None:
    """A probability in [0, 1] ("0.3", "30%"), else None."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def parse_vs(output: str, k: int) -> VSParse:
    """The k candidates of a VS output (see the module docstring); never raises."""
    candidates: list[VSCandidate] = []
    malformed = 0
    blocks = _BLOCK.findall(output)
    for block in blocks[:k]:
        text, prob = _TEXT.search(block), _PROBABILITY.search(block)
        probability = _probability(prob.group(1)) if prob else None
        ok = text is not None and bool(text.group(1).strip()) and probability is not None
        malformed += not ok
        candidates.append(VSCandidate(text.group(1).strip() if text else "", probability, ok))
    missing = k - len(candidates)
    candidates += [VSCandidate("", None, False)] * missing
    return VSParse(candidates, malformed, missing, max(0, len(blocks) - k))
