"""Find and read finished (or partial) runs, and export their metrics as one tidy table.

A run directory is what the Trainer writes: config.yaml, metrics.jsonl and eval/step_XXXXXX.json.
``rl-div compare`` and ``rl-div eval`` also write a manifest (runs.json) at the top of their output
naming each run's variant, seed and role, so a report can be regenerated from the files alone;
without a manifest, variant and seed come from each run's config.yaml (run.name, run.seed).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rl_div.report.summarize import EvalPoint
from rl_div.run.tracking import read_metrics

log = logging.getLogger("rl_div")

MANIFEST = "runs.json"
TIDY_COLUMNS = ["variant", "seed", "role", "step", "kind", "metric", "k", "value"]
_PASSK = re.compile(r"^pass@(\d+)$")
_NOT_METRICS = {"step", "kind", "time"}


@dataclass(frozen=True)
class RunRef:
    """Where one run lives and what it is in a comparison. role: "variant", or "reference" for the
    model that ``rl-div eval`` compares against."""

    variant: str
    seed: int
    dir: Path
    role: str = "variant"


@dataclass
class RunData:
    ref: RunRef
    config: dict[str, Any]
    train: dict[int, dict[str, Any]] = field(default_factory=dict)  # step -> train metrics
    evals: dict[int, EvalPoint] = field(default_factory=dict)  # step -> evaluation


def write_manifest(root: Path, kind: str, refs: list[RunRef], extra: dict[str, Any] | None = None) -> Path:
    """runs.json: run dirs are stored relative to ``root`` so the whole folder can be moved or shared."""
    runs = [{"variant": r.variant, "seed": r.seed, "role": r.role, "dir": str(r.dir.relative_to(root))}
            for r in refs]
    path = root / MANIFEST
    path.write_text(json.dumps({"kind": kind, "runs": runs, **(extra or {})}, indent=2))
    return path


def read_manifest(root: Path) -> tuple[str, list[RunRef], dict[str, Any]]:
    data = json.loads((root / MANIFEST).read_text())
    refs = [RunRef(r["variant"], int(r["seed"]), root / r["dir"], r.get("role", "variant")) for r in data["runs"]]
    extra = {k: v for k, v in data.items() if k not in ("kind", "runs")}
    return data.get("kind", "compare"), refs, extra


def _is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").exists() and ((path / "eval").is_dir() or (path / "metrics.jsonl").exists())


def _ref_from_config(run_dir: Path) -> RunRef:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    run = cfg.get("run", {})
    return RunRef(str(run.get("name", run_dir.name)), int(run.get("seed", 0)), run_dir)


def _scan(folder: Path) -> list[tuple[str | None, list[RunRef]]]:
    """(manifest kind or None, runs) for every manifest folder or run dir under ``folder``; the search
    stops at both, so a run's own sub-folders (e.g. RUN/evals from rl-div eval) are not mixed in."""
    if (folder / MANIFEST).exists():
        kind, refs, _ = read_manifest(folder)
        return [(kind, refs)]
    if _is_run_dir(folder):
        return [(None, [_ref_from_config(folder)])]
    found = []
    for child in sorted(c for c in folder.iterdir() if c.is_dir()):
        found += _scan(child)
    return found


def discover_runs(paths: list[str | Path]) -> tuple[str, list[RunRef]]:
    """Runs under ``paths``: compare/eval output folders (manifest), run dirs, or folders holding them.

    Returns (kind, refs); kind is "eval" only for a single ``rl-div eval`` output, else "compare".
    """
    found: list[tuple[str | None, list[RunRef]]] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is not a directory")
        here = _scan(p)
        if not here:
            raise FileNotFoundError(f"no runs (config.yaml with metrics.jsonl or eval/) under {p}")
        found += here
    kinds = [kind for kind, _ in found]
    refs = [r for _, group in found for r in group]
    return ("eval" if kinds == ["eval"] else "compare"), _disambiguate(refs)


def _disambiguate(refs: list[RunRef]) -> list[RunRef]:
    """Two runs may share run.name and seed (e.g. two copies of one config): name them by directory."""
    seen: dict[tuple[str, int, str], int] = {}
    for r in refs:
        seen[(r.variant, r.seed, r.role)] = seen.get((r.variant, r.seed, r.role), 0) + 1
    return [RunRef(f"{r.variant}:{r.dir.parent.name}/{r.dir.name}", r.seed, r.dir, r.role)
            if seen[(r.variant, r.seed, r.role)] > 1 else r for r in refs]


def load_run(ref: RunRef) -> RunData:
    """Read a run's config, train rows and evaluations.

    A resumed run appends the steps after its last checkpoint again to metrics.jsonl: the last row of
    each (kind, step) wins, matching eval/step_*.json, which the resumed run overwrote.
    """
    config_path = ref.dir / "config.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.exists() else {}
    run = RunData(ref, config)
    eval_rows: dict[int, dict[str, Any]] = {}
    if (ref.dir / "metrics.jsonl").exists():
        for row in read_metrics(ref.dir / "metrics.jsonl"):
            table = run.train if row.get("kind") == "train" else eval_rows if row.get("kind") == "eval" else None
            if table is not None:
                table[int(row["step"])] = {k: v for k, v in row.items() if k not in _NOT_METRICS}
    for path in sorted((ref.dir / "eval").glob("step_*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("skipping unreadable evaluation %s", path)
            continue
        run.evals[int(data["step"])] = EvalPoint(ref.seed, data["metrics"], data.get("problems"))
    for step, metrics in eval_rows.items():  # an eval logged but whose JSON is missing
        run.evals.setdefault(step, EvalPoint(ref.seed, metrics, None))
    return run


def split_metric(key: str) -> tuple[str, int | None]:
    """'pass@8' -> ('pass@k', 8); anything else -> (key, None)."""
    m = _PASSK.match(key)
    return ("pass@k", int(m.group(1))) if m else (key, None)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
        return None
    return math.nan if value is None else float(value)


def tidy_rows(runs: list[RunData]) -> list[dict[str, Any]]:
    """One row per run x step x metric (x k for pass@k); NaN for metrics logged as null."""
    rows = []
    for run in runs:
        r = run.ref
        tables = [("train", run.train), ("eval", {s: e.metrics for s, e in run.evals.items()})]
        for kind, table in tables:
            for step in sorted(table):
                for key, raw in table[step].items():
                    value = _number(raw)
                    if value is None:
                        continue
                    metric, k = split_metric(key)
                    rows.append({"variant": r.variant, "seed": r.seed, "role": r.role, "step": step, "kind": kind,
                                 "metric": metric, "k": k, "value": value})
    return rows


def write_tidy(rows: list[dict[str, Any]], out_dir: Path, stem: str = "metrics_tidy") -> tuple[Path, Path]:
    """CSV (k empty when not pass@k; NaN as 'nan') and JSON (a list of row objects, NaN as null)."""
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=TIDY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "k": "" if row["k"] is None else row["k"], "value": repr(row["value"])})
    json_rows = [{**row, "value": None if math.isnan(row["value"]) else row["value"]} for row in rows]
    json_path.write_text(json.dumps(json_rows))
    return csv_path, json_path


def read_tidy_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a tidy CSV with typed seed, step, k and value."""
    with open(path, encoding="utf-8") as f:
        return [{**row, "seed": int(row["seed"]), "step": int(row["step"]),
                 "k": int(row["k"]) if row["k"] else None, "value": float(row["value"])}
                for row in csv.DictReader(f)]
