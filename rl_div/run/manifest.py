"""A checkpoint's manifest: every file it holds with its size, written last, so a checkpoint that lost
or truncated a file (a torn copy, a full disk, a file deleted by hand) is told apart from a complete
one, and ``--resume`` falls back to the newest complete checkpoint instead of crashing in a loader.

Sizes, not digests: they catch a missing or cut file at the cost of a ``stat`` per file; a file
rewritten with other bytes of the same length is not detected (reading every byte of a large model
on each resume would be).
"""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "manifest.json"


def write_manifest(ckpt_dir: Path) -> None:
    """Record every file under ``ckpt_dir`` (relative path -> bytes) in ``ckpt_dir/manifest.json``;
    call it when everything else is written."""
    files = {p.relative_to(ckpt_dir).as_posix(): p.stat().st_size
             for p in sorted(ckpt_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (ckpt_dir / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def checkpoint_problems(ckpt_dir: Path) -> list[str]:
    """What makes ``ckpt_dir`` incomplete (empty: complete as its manifest says), e.g.
    ['policy/model.safetensors missing', 'learner_state.pt has 10 of 4096 bytes']."""
    try:
        listed = json.loads((ckpt_dir / MANIFEST).read_text())["files"]
        assert isinstance(listed, dict)
    except FileNotFoundError:
        return [f"{MANIFEST} missing (it is written last)"]
    except (ValueError, KeyError, TypeError, AssertionError):
        return [f"{MANIFEST} unreadable"]
    problems = []
    for name, size in listed.items():
        path = ckpt_dir / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} has {path.stat().st_size} of {size} bytes")
    return problems


def newest_complete(candidates: list[Path]) -> tuple[Path | None, list[str]]:
    """The first complete checkpoint of ``candidates`` (newest first), and one line per newer one
    passed over, naming what it lacks."""
    skipped = []
    for ckpt in candidates:
        problems = checkpoint_problems(ckpt)
        if not problems:
            return ckpt, skipped
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        skipped.append(f"{ckpt.name} is incomplete ({shown})")
    return None, skipped
