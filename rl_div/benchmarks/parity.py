"""Verifier parity on real gold: the cases that check a verifier against each benchmark's own
reference material (the truth is known without the verifier).

- ``solution``: a reference solution (MATH-500, Minerva, AIME 2024) must be accepted;
- ``gold``: every gold answer, boxed, must be accepted against itself;
- ``equivalent``: the gold written another way (``27`` as ``27.0``, ``x = 27``, ``27 \\text{ cm}``,
  ``\\textbf{(027)}``; ``\\frac{1}{2}`` as ``\\dfrac{1}{2}``, ``1/2``, ``0.5``) must be accepted;
- ``wrong``: a nearby wrong value (``28``, ``\\frac{2}{2}``) must be rejected.

The scoring itself is the caller's (``rl-div bench --sections parity``, tests/test_benchmark_parity.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from rl_div.benchmarks.prompting import benchmark_records
from rl_div.benchmarks.spec import load_benchmark
from rl_div.data import PromptRecord

SOLUTION_SETS = ("math500", "minerva_math", "aime24")  # sets whose rows carry a solution ending in the answer
_INTEGER = re.compile(r"^-?\d+$")
_FRACTION = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")


@dataclass(frozen=True)
class ParityCase:
    """One completion scored against one record, with the verdict a correct verifier gives."""

    benchmark: str
    kind: str  # solution | gold | equivalent | wrong
    completion: str
    record: PromptRecord
    expected: float


def equivalent_forms(gold: str) -> list[str]:
    """Other writings of an integer or simple-fraction gold (empty for anything else)."""
    if _INTEGER.match(gold):
        g = int(gold)
        forms = [f"{g}.0", f"x = {g}", f"{g} \\text{{ cm}}", f"\\dfrac{{{2 * g}}}{{2}}"]
        if 0 <= g <= 999:
            forms.append(f"\\textbf{{({g:03d})}}")  # AIME's three-digit answer in an AMC-style label
        return forms
    frac = _FRACTION.match(gold)
    if frac:
        sign, a, b = frac.group(1), int(frac.group(2)), int(frac.group(3))
        forms = [f"{sign}\\dfrac{{{a}}}{{{b}}}", f"{sign}{a}/{b}", f"{sign}\\frac{{{2 * a}}}{{{2 * b}}}"]
        value = Fraction(a, b)
        if b and all(p in (2, 5) for p in _prime_factors(value.denominator)):
            forms.append(f"{sign}{float(value):g}")  # a terminating decimal: 1/2 -> 0.5
        return forms
    return []


def wrong_forms(gold: str) -> list[str]:
    """Nearby wrong values of an integer or simple-fraction gold (empty for anything else)."""
    if _INTEGER.match(gold):
        g = int(gold)
        return [str(g + 1), str(g - 1), f"{g}.5"]
    frac = _FRACTION.match(gold)
    if frac:
        sign, a, b = frac.group(1), int(frac.group(2)), int(frac.group(3))
        return [f"{sign}\\frac{{{a + 1}}}{{{b}}}", f"{sign}\\frac{{{a}}}{{{b + 1}}}"]
    return []


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


def parity_cases(name: str, root: str | Path, *, path: str | Path | None = None,
                 every: int = 1) -> list[ParityCase]:
    """Every parity case of benchmark ``name``, on every ``every``-th row (1 = all rows)."""
    bench = load_benchmark(name, root, path=path)
    records = benchmark_records(bench)
    raw_by_line = _raw_lines(bench.source) if name in SOLUTION_SETS else {}
    cases = []
    for i, (row, record) in enumerate(zip(bench.rows, records, strict=True)):
        if i % every:
            continue
        if name in SOLUTION_SETS:
            cases.append(ParityCase(name, "solution", str(raw_by_line[row.line]["solution"]), record, 1.0))
        for gold in row.golds:
            cases.append(ParityCase(name, "gold", f"\\boxed{{{gold}}}", record, 1.0))
            cases += [ParityCase(name, "equivalent", f"The answer is $\\boxed{{{f}}}$.", record, 1.0)
                      for f in equivalent_forms(gold)]
        if len(row.golds) == 1:  # a wrong value for one gold may be another gold's right one
            cases += [ParityCase(name, "wrong", f"\\boxed{{{w}}}", record, 0.0) for w in wrong_forms(row.golds[0])]
    return cases


def _raw_lines(source: str) -> dict[int, dict]:
    """Line number -> the raw JSON object of a local JSONL file (the reference solutions)."""
    out = {}
    with open(source, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                out[number] = json.loads(line)
    return out
