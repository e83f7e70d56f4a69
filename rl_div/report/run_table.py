"""The few numbers a finished ``rl-div train`` prints: its final evaluation against its first (step 0).

Read from the run folder's eval/step_*.json, so the table shows what the report and ``rl-div report``
read too. Numbers have 3 significant digits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# (label, metric key in an evaluation file); "pass@K" is the largest k the evaluation reached
ROWS = [("pass@1", "pass@1"), ("pass@K", "pass@K"), ("entropy (nats/token)", "policy/entropy"),
        ("distinct correct answers / problem", "div/distinct_correct_answers")]


def eval_files(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, file) of every evaluation of the run, by step."""
    found = [(int(m.group(1)), p) for p in (run_dir / "eval").glob("step_*.json")
             if (m := re.fullmatch(r"step_(\d+)\.json", p.name))]
    return sorted(found)


def largest_k(metrics: dict[str, Any]) -> int | None:
    ks = [int(k[5:]) for k in metrics if k.startswith("pass@") and k[5:].isdigit()]
    return max(ks) if ks else None


def final_table(run_dir: str | Path) -> str | None:
    """A plain-text table: metric, first evaluation, final evaluation, change; None without an evaluation."""
    files = eval_files(Path(run_dir))
    if not files:
        return None
    (first_step, first_path), (last_step, last_path) = files[0], files[-1]
    first = json.loads(first_path.read_text())["metrics"]
    last = json.loads(last_path.read_text())["metrics"]
    k = largest_k(last)
    header = ["metric", f"step {first_step}", f"step {last_step}"] + (["change"] if last_step != first_step else [])
    lines = [header]
    for label, key in ROWS:
        if key == "pass@K":
            if k is None or k == 1:
                continue
            label = key = f"pass@{k}"
        a, b = first.get(key), last.get(key)
        if not isinstance(b, (int, float)):
            continue
        row = [label, _num(a), _num(b)]
        if last_step != first_step:
            row.append(_num(b - a, signed=True) if isinstance(a, (int, float)) else "")
        lines.append(row)
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in lines]
    return "\n".join([text[0], "-" * len(text[0]), *text[1:]])


def _num(value: Any, signed: bool = False) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:+.3g}" if signed else f"{value:.3g}"
