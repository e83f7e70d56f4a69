"""Where a comparison's numbers come from: the rl_div version and git commit, each variant's config
difference from the baseline, wall time and samples consumed per variant, and links to every run's
folder and config."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import rl_div
from rl_div.config.tree import config_differences, filled_tree, flatten
from rl_div.report.results import RunData
from rl_div.run.command import command_line, package_versions, read_commands
from rl_div.run.tracking import read_metrics

# Fields that differ between runs of one comparison by construction.
PER_RUN = ("run.name", "run.output_dir", "run.seed")


def code_version() -> dict[str, str | None]:
    """rl_div's version, and the git commit (with '+dirty' for uncommitted changes) of the checkout
    it is imported from, or None when it is not a git checkout."""
    root = Path(rl_div.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"version": rl_div.__version__, "commit": None}
    return {"version": rl_div.__version__, "commit": commit + ("+dirty" if dirty else "")}


def wall_seconds(run_dir: Path) -> float | None:
    """From the first to the last row of metrics.jsonl (a resumed run's pause included)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    times = [row["time"] for row in read_metrics(path) if isinstance(row.get("time"), (int, float))]
    return (max(times) - min(times)) if len(times) > 1 else None


def samples_consumed(run: RunData) -> int | None:
    """Training responses sampled: last training step x prompts per step x group size."""
    rollout = run.config.get("rollout") or {}
    if not run.train or "prompts_per_step" not in rollout or "group_size" not in rollout:
        return None
    return max(run.train) * int(rollout["prompts_per_step"]) * int(rollout["group_size"])


def variant_rows(groups: dict[str, list[RunData]], baseline: str | None,
                 out_dir: Path) -> tuple[list[str], list[list[str]]]:
    """One row per variant: config difference from the baseline, mean wall time and samples per
    run, and relative links to its runs' folders and configs."""
    header = ["variant", f"config difference from {baseline}" if baseline else "config", "wall time / run",
              "samples / run", "runs"]
    # defaults filled in: a run saved before a section existed shows no difference for it
    base_cfg = filled_tree(groups[baseline][0].config) if baseline in groups else None
    body = []
    for name, runs in groups.items():
        if base_cfg is None or name == baseline:
            diff = "(baseline)" if name == baseline else "–"
        else:
            cfg = filled_tree(runs[0].config)
            keys = config_differences(base_cfg, cfg, PER_RUN)
            flat_b, flat_v = flatten(base_cfg), flatten(cfg)
            diff = "; ".join(f"{k}: {flat_b.get(k)!r} → {flat_v.get(k)!r}" for k in keys) or "none"
        walls = [w for r in runs if (w := wall_seconds(r.ref.dir)) is not None]
        samples = [s for r in runs if (s := samples_consumed(r)) is not None]
        links = ", ".join(f"[seed {r.ref.seed}]({_rel(r.ref.dir, out_dir)}) "
                          f"([config]({_rel(r.ref.dir / 'config.yaml', out_dir)}))" for r in runs)
        body.append([name, diff, f"{sum(walls) / len(walls) / 60:.1f} min" if walls else "–",
                     f"{sum(samples) // len(samples):,}" if samples else "–", links])
    return header, body


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def provenance_blocks(groups: dict[str, list[RunData]], baseline: str | None, out_dir: Path,
                      trained_with: dict[str, Any] | None) -> list[tuple[Any, ...]]:
    """The report's provenance section: code versions, then the per-variant table."""
    now = code_version()
    text = f"Report written by rl_div {now['version']} (git commit {now['commit'] or 'unknown'})."
    if trained_with:
        text += (f" Runs trained by rl_div {trained_with.get('version')} (git commit "
                 f"{trained_with.get('commit') or 'unknown'}), as recorded when rl-div compare last ran.")
    blocks: list[tuple[Any, ...]] = [("h2", "Provenance"), ("p", text)]
    blocks.append(("p", "Report command: " + command_line() + ". Packages: " + _versions(package_versions()) + "."))
    blocks.append(("table", *variant_rows(groups, baseline, out_dir)))
    starts = [(name, r, c) for name, runs in groups.items() for r in runs for c in read_commands(r.ref.dir)]
    if starts:
        header = ["variant", "seed", "started", "command", "packages"]
        blocks.append(("table", header, [[name, str(r.ref.seed), c.get("time", "?"), c.get("command", "?"),
                                          _versions(c.get("versions") or {})] for name, r, c in starts]))
    return blocks


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())
