"""The ``benchmarks`` section: where the standard test sets live, how they are prompted and scored,
and per-benchmark sampling (rl_div.benchmarks reads it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rl_div.config.sections import Section

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class BenchmarkSampling(Section):
    """Sampling of one benchmark; a field left None takes the benchmark's own default."""

    n: int | None = Field(None, ge=1, description="Samples per problem (pass@k up to k = n).")
    temperature: float | None = Field(None, gt=0, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int | None = Field(None, ge=1, description="Longest response, in tokens.")


class BenchmarksConfig(Section):
    root: str | None = Field(
        None, description="Folder holding one sub-folder per benchmark (aime24/test.jsonl, ...); relative to the "
        "working directory. None = only benchmarks.paths, user files and (with hub) the hub copies.",
    )
    paths: dict[str, str] = Field(
        default_factory=dict, description="Per benchmark, a JSONL file or folder that wins over root, "
        "e.g. {gsm8k: data/gsm8k/test.jsonl}.",
    )
    hub: bool = Field(
        False, description="When a benchmark has no local file, load its usual Hugging Face hub copy (needs "
        "network; never used by the tests).",
    )
    user_files: list[str] = Field(
        default_factory=list, description="YAML files of user benchmarks (JSONL path + field names each; "
        "rl_div/benchmarks/user.py), registered before names are checked.",
    )
    prompt_style: str = Field(
        "boxed", description="boxed (problem + instruction, chat template when the tokenizer has one), "
        "qwen_math (instruction as system message, chat template), plain (no chat template; base models), "
        "or a registered style.",
    )
    instruction: str = Field(INSTRUCTION, description="The instruction the prompt style places.")
    chat: bool | None = Field(
        None, description="Force the chat template on (true) or off (false); None = the prompt style decides.",
    )
    extractor: str = Field(
        "math", description="Answer extractor when a response has no \\boxed{} (math: the last number).",
    )
    strategy: Literal["direct", "vs"] = Field(
        "direct", description="direct: n independent samples per problem; vs: Verbalized Sampling, each generation "
        "asked for vs_candidates answers with their probabilities, read back as that many samples "
        "(rl_div/benchmarks/verbalized.py).",
    )
    vs_candidates: int = Field(5, ge=1, description="Candidates per generation with strategy vs.")
    sampling: dict[str, BenchmarkSampling] = Field(
        default_factory=dict, description="Per-benchmark sampling overrides, e.g. {aime24: {n: 256}}.",
    )
