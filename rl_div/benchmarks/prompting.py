"""Prompts as the field writes them, and benchmark rows as PromptRecords.

Styles (``benchmarks.prompt_style``):

- ``boxed`` (default): the problem, a newline, then the instruction, as one user turn of the model's
  chat template when its tokenizer has one (DeepSeek-R1's, lighteval's and most RLVR papers' form);
  without a chat template the same text verbatim.
- ``qwen_math``: the instruction as the system message and the problem as the user turn, always in
  the chat template (Qwen2.5-Math's ``qwen25-math-cot`` prompt).
- ``plain``: the same text as ``boxed`` and never a chat template: for base models (few-shot free).

A record built here says how it is to be rendered (``meta["prompt_ready"]``, ``"chat"``,
``"system"``), so the rollout uses it as it is, not the training run's ``rollout.prompt_template``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rl_div.benchmarks.spec import BenchmarkSet
from rl_div.benchmarks.verbalized import vs_prompt
from rl_div.data import PromptRecord
from rl_div.registry import Registry

PROMPT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class PromptStyle:
    """A rendered prompt: the user text, whether to use the chat template (None = when the tokenizer
    has one) and the system message (None = the template's own default)."""

    text: str
    chat: bool | None
    system: str | None = None


PROMPT_STYLES: Registry[Callable[[str, str], PromptStyle]] = Registry("benchmark prompt style")


@PROMPT_STYLES.register("boxed")
def boxed_style(problem: str, instruction: str) -> PromptStyle:
    return PromptStyle(f"{problem}\n{instruction}", chat=None)


@PROMPT_STYLES.register("qwen_math")
def qwen_math_style(problem: str, instruction: str) -> PromptStyle:
    return PromptStyle(problem, chat=True, system=instruction)


@PROMPT_STYLES.register("plain")
def plain_style(problem: str, instruction: str) -> PromptStyle:
    return PromptStyle(f"{problem}\n{instruction}", chat=False)


def benchmark_records(bench: BenchmarkSet, style: str = "boxed", instruction: str = PROMPT_INSTRUCTION,
                      extractor: str = "math", chat: bool | None = None,
                      vs_candidates: int | None = None) -> list[PromptRecord]:
    """One PromptRecord per row, scored by ``benchmark_verify`` against every gold.

    ``chat`` overrides the style's choice of chat template when not None. ``extractor``: the answer
    extractor used when a completion has no ``\\boxed{}`` (and for the diversity metrics' answers).
    ``vs_candidates``: a Verbalized Sampling request for that many candidates instead (its own
    instruction replaces ``instruction``; ``meta["vs_candidates"]`` says how to read the output).
    """
    render = PROMPT_STYLES.get(style)
    records = []
    for row in bench.rows:
        if vs_candidates is not None:
            rendered = render(vs_prompt(row.problem, vs_candidates), "")
            rendered = PromptStyle(rendered.text.rstrip("\n"), rendered.chat, rendered.system or None)
        else:
            rendered = render(row.problem, instruction)
        records.append(PromptRecord(
            prompt=rendered.text, answer=row.golds[0], uid=f"{bench.name}:{row.line}",
            meta={"benchmark": bench.name, "golds": list(row.golds), "verifier": "benchmark_verify",
                  "extractor": extractor, "prompt_ready": True,
                  "chat": rendered.chat if chat is None else chat, "system": rendered.system,
                  **({"vs_candidates": vs_candidates} if vs_candidates is not None else {})},
        ))
    return records
