"""A benchmark: where its rows come from, how a row becomes a problem and its gold answers, and its
sampling defaults; the registry by name and the one loader.

Sources, in the order :func:`load_benchmark` tries them: an explicit file or folder (``path``), the
benchmark's folder under ``root`` (``root/<folder>/test.jsonl``), then, only with ``hub=True``, the
usual Hugging Face hub copy (users with network; the library never downloads in tests).

A row that cannot be used (not JSON, not an object, a missing or empty field) is skipped, logged with
its line number (the first five) and counted in :attr:`BenchmarkSet.skipped`; it never stops a run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_div.registry import Registry

log = logging.getLogger("rl_div")


class RowError(ValueError):
    """Why a row cannot be used (the message is logged with the row's line number)."""


@dataclass(frozen=True)
class SamplingDefaults:
    """Per-benchmark sampling when the user sets none: small sets (AIME) get many samples."""

    n: int = 16
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 4096


@dataclass(frozen=True)
class HubSource:
    """The usual Hugging Face hub copy: ``datasets.load_dataset(repo, config, split=split)``."""

    repo: str
    config: str | None = None
    split: str = "test"


@dataclass(frozen=True)
class BenchmarkRow:
    """One problem: its text, every acceptable gold answer (any one is correct), and where it came from."""

    problem: str
    golds: tuple[str, ...]
    line: int
    meta: dict[str, Any] = field(default_factory=dict)


# row (one JSON object) -> (problem, golds, extra meta); raises RowError for an unusable row
RowParser = Callable[[dict[str, Any]], "tuple[str, list[str], dict[str, Any]]"]


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to read one benchmark. ``folders``: candidate folders under the root, tried in order."""

    name: str
    parse_row: RowParser
    folders: tuple[str, ...] = ()
    file: str = "test.jsonl"
    hub: HubSource | None = None
    sampling: SamplingDefaults = SamplingDefaults()
    description: str = ""

    def local_file(self, root: Path) -> Path | None:
        """The first candidate ``root/<folder>/<file>`` that exists, else None."""
        for folder in self.folders or (self.name,):
            candidate = (root / folder / self.file).resolve()
            if candidate.is_file():
                return candidate
        return None


@dataclass
class BenchmarkSet:
    """The usable rows of one benchmark and the skipped ones as (line number, reason)."""

    name: str
    rows: list[BenchmarkRow]
    skipped: list[tuple[int, str]]
    source: str
    sampling: SamplingDefaults


BENCHMARKS: Registry[Any] = Registry("benchmark")  # name -> BenchmarkSpec


def register_benchmark(spec: BenchmarkSpec, *, overwrite: bool = False) -> BenchmarkSpec:
    """Add ``spec`` under ``spec.name`` (a plugin module may call this, like any registry)."""
    BENCHMARKS.register(spec.name, overwrite=overwrite)(spec)
    return spec


def _jsonl_rows(path: Path) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """(line number, parsed value) of every non-blank line; lines that are not UTF-8 JSON as skips."""
    rows, bad = [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rows.append((number, json.loads(raw.decode("utf-8"))))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                bad.append((number, f"not UTF-8 JSON ({err})"))
    return rows, bad


def _hub_rows(hub: HubSource) -> list[tuple[int, Any]]:
    """Rows of a hub dataset (or a local folder ``datasets`` reads the same way), numbered from 1."""
    import datasets

    data = datasets.load_dataset(hub.repo, hub.config, split=hub.split)
    return [(i + 1, dict(row)) for i, row in enumerate(data)]


def parse_rows(spec: BenchmarkSpec, numbered: list[tuple[int, Any]],
               skipped: list[tuple[int, str]]) -> list[BenchmarkRow]:
    """Turn numbered raw rows into BenchmarkRows; unusable ones are appended to ``skipped``."""
    rows = []
    for number, raw in numbered:
        try:
            if not isinstance(raw, dict):
                raise RowError(f"expected an object, got {type(raw).__name__}")
            problem, golds, meta = spec.parse_row(raw)
            golds = [g.strip() for g in golds if g is not None and g.strip()]
            if not problem.strip() or not golds:
                raise RowError("empty problem or no gold answer")
        except RowError as err:
            skipped.append((number, str(err)))
            continue
        rows.append(BenchmarkRow(problem.strip(), tuple(golds), number, meta))
    return rows


def load_benchmark(name: str | BenchmarkSpec, root: str | Path | None = None, *, path: str | Path | None = None,
                   hub: bool = False, limit: int | None = None) -> BenchmarkSet:
    """The rows of benchmark ``name`` (or a spec), the first ``limit`` of them (None = all).

    ``root``: the folder of benchmark folders (None = the working directory). ``path``: a JSONL file
    or a folder holding the spec's file (wins over ``root``). ``hub``: fall
    back to the spec's hub copy when no local file is found. Raises FileNotFoundError, naming every
    place looked in, when there is nothing to read.
    """
    spec = name if isinstance(name, BenchmarkSpec) else BENCHMARKS.get(name)
    local: Path | None = None
    looked: list[str] = []
    if path is not None:
        p = Path(path).expanduser()
        local = p / spec.file if p.is_dir() else p
        looked.append(str(local))
        local = local if local.is_file() else None
    else:  # a relative folder is under root (default: the working directory); a user's absolute one is itself
        base = Path(root).expanduser() if root is not None else Path.cwd()
        local = spec.local_file(base)
        looked += [str(base / f / spec.file) for f in spec.folders or (spec.name,)]
    skipped: list[tuple[int, str]] = []
    if local is not None:
        numbered, skipped = _jsonl_rows(local)
        source = str(local)
    elif hub and spec.hub is not None:
        numbered, source = _hub_rows(spec.hub), f"hub:{spec.hub.repo}"
    else:
        hint = f"; hub copy {spec.hub.repo!r} with benchmarks.hub=true" if spec.hub else ""
        raise FileNotFoundError(f"benchmark {spec.name!r}: no local file (looked in {looked}; set "
                                f"benchmarks.root or benchmarks.paths.{spec.name}{hint})")
    rows = parse_rows(spec, numbered, skipped)
    skipped.sort()
    for number, why in skipped[:5]:
        log.warning("benchmark %s: skipping line %d of %s: %s", spec.name, number, source, why)
    if skipped:
        log.warning("benchmark %s: skipped %d malformed rows of %d", spec.name, len(skipped), len(skipped) + len(rows))
    if limit is not None:
        rows = rows[:limit]
    return BenchmarkSet(spec.name, rows, skipped, source, spec.sampling)
