"""Standard evaluation sets by name (aime24, aime25, amc23, math500, minerva_math, olympiadbench, gsm8k)
and user benchmarks from YAML: each row's problem and gold answer(s), the field's prompt styles and
per-benchmark sampling defaults.

    from rl_div.benchmarks import load_benchmark
    bench = load_benchmark("math500", root="/data/benchmarks")   # BenchmarkSet: records, skipped rows
"""

from rl_div.benchmarks.builtin import register_builtin_benchmarks
from rl_div.benchmarks.prompting import PROMPT_INSTRUCTION, PROMPT_STYLES, PromptStyle, benchmark_records
from rl_div.benchmarks.spec import (
    BENCHMARKS,
    BenchmarkRow,
    BenchmarkSet,
    BenchmarkSpec,
    HubSource,
    RowError,
    SamplingDefaults,
    load_benchmark,
    register_benchmark,
)
from rl_div.benchmarks.user import load_user_benchmarks

register_builtin_benchmarks()

__all__ = [
    "BENCHMARKS",
    "PROMPT_INSTRUCTION",
    "PROMPT_STYLES",
    "BenchmarkRow",
    "BenchmarkSet",
    "BenchmarkSpec",
    "HubSource",
    "PromptStyle",
    "RowError",
    "SamplingDefaults",
    "benchmark_records",
    "load_benchmark",
    "load_user_benchmarks",
    "register_benchmark",
]
