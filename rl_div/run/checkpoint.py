"""Atomic checkpoints: everything is written into ``step_XXXXXX.tmp`` and renamed into place, then a
``latest`` pointer is replaced atomically, so a crash mid-write never damages the last good one.

Layout of one checkpoint directory:
    policy/             model (safetensors) + tokenizer, loadable with from_pretrained (with train.lora: the
                        merged model, unless train.lora.save is 'adapter')
    adapter/            train.lora only: the adapter in PEFT's format (unless train.lora.save is 'merged')
    learner_state.pt    optimizer, scheduler, learner RNG (and with train.lora the adapter tensors)
    trainer_state.json  step, policy version, data position, driver RNG (JSON, readable by hand)
    manifest.json       every file above with its size, written last (rl_div.run.manifest)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rl_div.run.manifest import newest_complete, write_manifest
from rl_div.run.stops import DiskFull, mount_point, out_of_space

log = logging.getLogger("rl_div")

STEP_PREFIX = "step_"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def new_checkpoint_dir(output_dir: str | Path, step: int) -> tuple[Path, Path]:
    """(temporary dir to fill, final dir). The temporary one is wiped if a crash left it."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{step:06d}"
    tmp = root / f"{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp, final


def commit_checkpoint(tmp: Path, final: Path, keep: int) -> Path:
    """Write the manifest (last), rename the filled temp dir into place, point ``latest`` at it,
    prune old ones."""
    write_manifest(tmp)
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_text_atomic(final.parent / "latest", final.name)
    for old in committed_checkpoints(final.parent.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_checkpoint(output_dir: str | Path, step: int, fill: Callable[[Path], None], keep: int) -> Path:
    """``fill(tmp)`` a temporary folder and commit it as checkpoint ``step``. On a full disk (the write
    failed with ENOSPC, or while the disk is nearly full) the temporary folder is removed and
    DiskFull says so in one line, naming the checkpoint that is intact; any other failure also
    leaves no temporary folder behind."""
    tmp = checkpoint_root(output_dir) / f"{STEP_PREFIX}{step:06d}.tmp"
    try:
        tmp, final = new_checkpoint_dir(output_dir, step)
        fill(tmp)
        return commit_checkpoint(tmp, final, keep)
    except Exception as err:
        full = out_of_space(err, checkpoint_root(output_dir))
        shutil.rmtree(tmp, ignore_errors=True)
        if not full:
            raise
        previous = latest_checkpoint(output_dir)
        intact = (f"the previous checkpoint step {load_trainer_state(previous)['step']} ({previous}) is intact; "
                  "free space and rerun with --resume" if previous is not None else "no earlier checkpoint exists")
        raise DiskFull(f"no space left on {mount_point(checkpoint_root(output_dir))} while writing checkpoint step "
                       f"{step}; {intact}") from None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (its manifest's files all there, rl_div.run.manifest), or None."""
    return complete_checkpoint(output_dir)[0]


def complete_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint, from the one ``latest`` points at down, and one line per
    newer one passed over because a file is missing or cut (what --resume warns about)."""
    root = checkpoint_root(output_dir)
    done = committed_checkpoints(output_dir)[::-1]
    pointer = root / "latest"
    named = root / pointer.read_text().strip() if pointer.is_file() else None
    if named is not None and named in done:  # the pointer wins over a newer folder it does not name
        done = done[done.index(named):]
    return newest_complete(done)


def resume_checkpoint(output_dir: str | Path) -> Path | None:
    """What --resume continues from: the newest complete checkpoint, with one warning line when newer
    ones were passed over; None (and a warning) when there is none at all. A run whose every
    checkpoint is incomplete is refused (ConfigError) rather than started again from step 0."""
    from rl_div.config import ConfigError

    checkpoint, skipped = complete_checkpoint(output_dir)
    if checkpoint is None and skipped:
        raise ConfigError(f"--resume: no complete checkpoint in {checkpoint_root(output_dir)}: {'; '.join(skipped)}; "
                          "pass --overwrite to start afresh")
    if skipped:
        log.warning("--resume: %s; resuming from %s", "; ".join(skipped), checkpoint.name)
    elif checkpoint is None:
        log.warning("--resume: no checkpoint in %s, starting from step 0", output_dir)
    return checkpoint


def committed_checkpoints(output_dir: str | Path) -> list[Path]:
    """Every renamed-into-place checkpoint folder, complete or not, oldest first."""
    root = checkpoint_root(output_dir)
    return sorted(p for p in root.glob(f"{STEP_PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp"))


def write_text_atomic(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(text.encode("utf-8") if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build_dir_atomic(final: Path, fill: Callable[[Path], None], marker: str) -> Path:
    """A cached directory: ``final`` if its ``marker`` file exists, else ``fill(tmp)`` in a temporary
    sibling directory (``fill`` writes ``marker`` last) renamed onto ``final``, so a crashed or
    concurrent build never leaves a half-written directory behind. Returns ``final``."""
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        fill(tmp)
        if not (tmp / marker).is_file():
            raise RuntimeError(f"building {final} did not write its marker file {marker}")
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same build first (rename onto a non-empty dir fails).
            if not (final / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def save_trainer_state(ckpt_dir: Path, state: dict[str, Any]) -> None:
    (ckpt_dir / "trainer_state.json").write_text(json.dumps(state, indent=2))


def load_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    return json.loads((ckpt_dir / "trainer_state.json").read_text())


# What a run writes into its output_dir (config.yaml is rewritten by every start and does not count).
RUN_OUTPUTS = ("metrics.jsonl", "eval", "groups", "tensorboard", "checkpoints", "train.log", "report", "commands.jsonl",
               "config_history.jsonl")


def existing_run(output_dir: str | Path) -> list[str]:
    """What in ``output_dir`` shows that a run already trained or evaluated there: a non-empty
    metrics.jsonl, a committed checkpoint, an evaluation file. Empty list = a fresh folder."""
    out = Path(output_dir)
    found = []
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    if committed_checkpoints(out):  # a torn one too: it still shows a run was there
        found.append("checkpoints/")
    if any((out / "eval").glob("step_*.json")):
        found.append("eval/")
    return found


def claim_output_dir(output_dir: str | Path, resume: bool, overwrite: bool) -> list[str]:
    """Refuse to start a new run over an existing one unless ``resume`` (continue it) or
    ``overwrite`` (delete its outputs first) says what is meant. Returns what was deleted."""
    from rl_div.config import ConfigError
    from rl_div.run.lock import check_unlocked
    from rl_div.run.writers import check_writable

    check_writable(output_dir)  # before Ray starts, without creating anything
    check_unlocked(output_dir)  # another live run in this folder (rl_div.run.lock): refused, nothing deleted
    found = existing_run(output_dir)
    if resume and committed_checkpoints(output_dir) and latest_checkpoint(output_dir) is None:
        resume_checkpoint(output_dir)  # every checkpoint is incomplete: refused before any work starts
    if not found or resume:
        return []
    if not overwrite:
        raise ConfigError(f"run.output_dir {str(output_dir)!r} already holds a run ({', '.join(found)}): pass "
                          "--resume to continue it or --overwrite to replace it")
    deleted = []
    for name in RUN_OUTPUTS:
        path = Path(output_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
            deleted.append(name + "/")
        elif path.exists():
            path.unlink()
            deleted.append(name)
    return deleted


def trim_to_step(output_dir: str | Path, step: int) -> int:
    """Before a resumed run logs again from ``step`` + 1: drop metrics.jsonl rows past ``step`` and
    any unreadable (torn) line, and evaluation and per-group files (rollout.log_groups) past ``step``, so
    the folder reads as one clean run. Returns the number of metric rows dropped."""
    out = Path(output_dir)
    for path in [*(out / "eval").glob("step_*.json"), *(out / "groups").glob("step_*.json")]:
        if path.stem.removeprefix("step_").isdigit() and int(path.stem.removeprefix("step_")) > step:
            path.unlink()
    metrics = out / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    kept, dropped = [], 0
    for line in metrics.read_bytes().splitlines():
        try:
            row = json.loads(line)
            keep = isinstance(row, dict) and int(row["step"]) <= step
        except (ValueError, KeyError, TypeError):  # torn or foreign line (JSONDecodeError is a ValueError)
            keep = False
        if keep:
            kept.append(line + b"\n")
        elif line.strip():
            dropped += 1
    write_text_atomic(metrics, b"".join(kept))
    return dropped
