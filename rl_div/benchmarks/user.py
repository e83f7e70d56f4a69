"""User benchmarks from YAML: a JSONL path and field names, no code.

    benchmarks:
      - name: my_set
        path: data/my_set.jsonl          # relative to the YAML file
        problem_field: question
        answer_field: answer             # a string, a number, or a list of acceptable answers
        answer_regex: "#### (.*)"        # optional: the gold is this group of the answer field
        n: 32                            # optional sampling defaults
        temperature: 0.6
        max_new_tokens: 2048
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rl_div.benchmarks.spec import BenchmarkSpec, RowError, SamplingDefaults, register_benchmark

_SAMPLING_KEYS = ("n", "temperature", "top_p", "max_new_tokens")
_KEYS = {"name", "path", "problem_field", "answer_field", "answer_regex", "description", *_SAMPLING_KEYS}


def field_parser(problem_field: str, answer_field: str,
                 answer_regex: str | None = None) -> Callable[[dict[str, Any]], tuple[str, list[str], dict[str, Any]]]:
    """A row parser reading two named fields; a list in the answer field is several acceptable golds."""
    pattern = re.compile(answer_regex) if answer_regex else None

    def parse(row: dict[str, Any]) -> tuple[str, list[str], dict[str, Any]]:
        for key in (problem_field, answer_field):
            if row.get(key) is None or (isinstance(row[key], str) and not row[key].strip()):
                raise RowError(f"missing or empty field {key!r} (has {sorted(row)})")
        raw = row[answer_field]
        golds = [str(a) for a in raw] if isinstance(raw, list) else [str(raw)]
        if pattern is not None:
            matches = [pattern.search(g) for g in golds]
            if not all(matches):
                raise RowError(f"answer does not match answer_regex {answer_regex!r}")
            golds = [m.group(1) for m in matches if m]
        return str(row[problem_field]), golds, {}

    return parse


def load_user_benchmarks(path: str | Path) -> list[BenchmarkSpec]:
    """Register every benchmark of a YAML file (a list, or ``{benchmarks: [...]}``); returns the specs.

    Raises ValueError naming the entry and the key for anything unknown or missing, before any work.
    """
    file = Path(path)
    data = yaml.safe_load(file.read_text())
    entries = data.get("benchmarks") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{file}: expected a list of benchmarks (or a 'benchmarks:' list)")
    specs = []
    for i, entry in enumerate(entries):
        where = f"{file} entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(entry).__name__}")
        unknown = sorted(set(entry) - _KEYS)
        missing = [k for k in ("name", "path", "problem_field", "answer_field") if k not in entry]
        if unknown or missing:
            raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing} (valid: {sorted(_KEYS)})")
        jsonl = Path(entry["path"])
        jsonl = jsonl if jsonl.is_absolute() else file.parent / jsonl
        sampling = SamplingDefaults(**{k: entry[k] for k in _SAMPLING_KEYS if k in entry})
        spec = BenchmarkSpec(str(entry["name"]), field_parser(entry["problem_field"], entry["answer_field"],
                                                              entry.get("answer_regex")),
                             folders=(str(jsonl.parent),), file=jsonl.name, sampling=sampling,
                             description=str(entry.get("description", f"user benchmark from {file.name}")))
        specs.append(register_benchmark(spec, overwrite=True))
    return specs
