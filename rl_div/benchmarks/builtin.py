"""The field's standard math test sets, as the Qwen2.5-Math / ToRA evaluation harness ships them
(field names per /work/shared/data/benchmarks/README.md), and the usual hub copies' spellings.

Gold answers are kept as the set writes them; math-verify compares them (numbers as numbers, so
AMC's ``27.0`` equals ``27`` and AIME's ``073`` equals ``73``). Units (OlympiadBench's ``unit``
field) are not part of the gold: math-verify drops a unit written after a predicted number, it does
not convert one (``50 mm`` is not ``5 cm``).
"""

from __future__ import annotations

from typing import Any

from rewards.answers import last_boxed
from rl_div.benchmarks.spec import BENCHMARKS, BenchmarkSpec, HubSource, RowError, SamplingDefaults, register_benchmark

# AIME / AMC: 30-40 problems, so many samples per problem (the large-k curve is the point); MATH-500
# and the larger sets: n = 16 gives a stable avg@16 at a tenth of the cost.
SMALL_SET = SamplingDefaults(n=64, temperature=0.6, top_p=0.95, max_new_tokens=4096)
LARGE_SET = SamplingDefaults(n=16, temperature=0.6, top_p=0.95, max_new_tokens=4096)


def text_field(row: dict[str, Any], *names: str) -> str:
    """The first of ``names`` present in ``row`` with a non-empty value, as a string; else RowError."""
    for name in names:
        value = row.get(name)
        if value is not None and not isinstance(value, (dict, list)) and str(value).strip():
            return str(value)
    raise RowError(f"missing or empty field {' / '.join(repr(n) for n in names)} (has {sorted(row)})")


def number_text(value: Any) -> str:
    """A JSON number as the gold text: ``27.0`` -> ``27`` (integral floats lose the ``.0``)."""
    if isinstance(value, bool):
        raise RowError(f"answer is a boolean ({value})")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def unwrap_dollars(answer: str) -> str:
    """``$\\frac{1}{2}$`` -> ``\\frac{1}{2}``; ``$69$,$84$`` -> ``69, 84`` (OlympiadBench's several values)."""
    parts = [p.strip().strip("$").strip() for p in answer.split("$,$")] if "$,$" in answer else [answer.strip()]
    parts = [p[1:-1].strip() if p.startswith("$") and p.endswith("$") and len(p) > 1 else p for p in parts]
    return ", ".join(parts)


def competition_row(row: dict[str, Any]) -> tuple[str, list[str], dict[str, Any]]:
    """AIME / AMC / MATH-500: ``problem`` (or ``question``) and ``answer`` (string or number)."""
    problem = text_field(row, "problem", "question", "Problem")
    if row.get("answer") is None and row.get("Answer") is None:
        raise RowError(f"missing field 'answer' (has {sorted(row)})")
    raw = row["answer"] if row.get("answer") is not None else row["Answer"]
    return problem, [number_text(raw)], {k: row[k] for k in ("subject", "level", "unique_id", "url") if k in row}


def minerva_row(row: dict[str, Any]) -> tuple[str, list[str], dict[str, Any]]:
    """Minerva-Math: the gold is the last ``\\boxed{}`` of ``solution`` (hub copies may have ``answer``)."""
    problem = text_field(row, "problem", "question")
    if row.get("answer") is not None and str(row["answer"]).strip():
        return problem, [str(row["answer"])], {}
    gold = last_boxed(text_field(row, "solution"))
    if gold is None:
        raise RowError("solution has no closed \\boxed{} to take the gold from")
    return problem, [gold], {"type": row.get("type")}


def olympiad_row(row: dict[str, Any]) -> tuple[str, list[str], dict[str, Any]]:
    """OlympiadBench: ``question`` (after ``context`` when there is one), ``final_answer`` a list of
    acceptable answers (any one is correct; one value list such as ``$69$,$84$`` is one answer)."""
    problem = text_field(row, "question", "problem")
    if row.get("context"):
        problem = f"{row['context']}\n\n{problem}"
    finals = row.get("final_answer")
    if isinstance(finals, str):
        finals = [finals]
    if not isinstance(finals, list) or not finals:
        raise RowError(f"final_answer must be a non-empty list, got {finals!r}")
    golds = [unwrap_dollars(str(f)) for f in finals if f is not None]
    return problem, golds, {"unit": row.get("unit"), "answer_type": row.get("answer_type"),
                            "is_multiple_answer": bool(row.get("is_multiple_answer"))}


def gsm8k_row(row: dict[str, Any]) -> tuple[str, list[str], dict[str, Any]]:
    """GSM8K: ``question``; the gold number follows ``#### `` on the answer's last line, commas dropped."""
    problem = text_field(row, "question")
    answer = text_field(row, "answer")
    if "####" not in answer:
        raise RowError("answer has no '#### <number>' line")
    return problem, [answer.rsplit("####", 1)[1].strip().replace(",", "")], {}


BUILTIN = (
    BenchmarkSpec("aime24", competition_row, hub=HubSource("HuggingFaceH4/aime_2024", split="train"),
                  sampling=SMALL_SET, description="AIME 2024 I+II, 30 problems, integer answers 0-999"),
    BenchmarkSpec("aime25", competition_row, hub=HubSource("math-ai/aime25"),
                  sampling=SMALL_SET, description="AIME 2025 I+II, 30 problems, integer answers 0-999"),
    BenchmarkSpec("amc23", competition_row, hub=HubSource("math-ai/amc23"),
                  sampling=SMALL_SET, description="AMC 12 2023, 40 problems, numeric answers"),
    BenchmarkSpec("math500", competition_row, hub=HubSource("HuggingFaceH4/MATH-500"),
                  sampling=LARGE_SET, description="MATH-500 (PRM800K's subset of MATH), LaTeX answers"),
    BenchmarkSpec("minerva_math", minerva_row, hub=HubSource("math-ai/minervamath"),
                  sampling=LARGE_SET, description="Minerva's MIT OCW problems, 272, gold = last \\boxed{}"),
    BenchmarkSpec("olympiadbench", olympiad_row, hub=HubSource("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
                  sampling=LARGE_SET, description="OlympiadBench, English text-only maths, 675, final answers"),
    BenchmarkSpec("gsm8k", gsm8k_row, folders=("gsm8k", "../gsm8k"), hub=HubSource("openai/gsm8k", "main"),
                  sampling=LARGE_SET, description="GSM8K test, 1,319 grade-school problems, integer answers"),
)


def register_builtin_benchmarks() -> None:
    """Register the built-in sets (idempotent: the same spec objects each time)."""
    for spec in BUILTIN:
        if spec.name not in BENCHMARKS:
            register_benchmark(spec)

