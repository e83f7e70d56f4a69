"""What ``rl-div train --resume`` may change, decided before Ray starts.

A resumed run continues the saved one, so its config must be the saved config except in the fields a
longer or differently logged run may change (:data:`RESUME_MAY_CHANGE`). Anything else (the method, the
data, the learning rate) is refused, naming the fields, unless ``--allow-config-change`` is given; then
every change is appended to the run's ``config_history.jsonl`` (time, the step resumed from, the
command line, each changed field's old and new value), since ``config.yaml`` then holds the new config.
A run whose last checkpoint is at train.steps has nothing left to do: the CLI says so and stops.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rl_div.config import Config, ConfigError
from rl_div.config.tree import config_differences, flatten, saved_config_tree
from rl_div.run.checkpoint import latest_checkpoint, load_trainer_state

# How long it trains, how often it evaluates and checkpoints, how it is logged, where it runs.
RESUME_MAY_CHANGE = ("train.steps", "eval.every", "eval.at_end", "checkpoint.every", "checkpoint.keep",
                     "tracking.", "cluster.", "run.output_dir")
HISTORY = "config_history.jsonl"


def saved_step(out: Path) -> int | None:
    """The step of the run's latest checkpoint, or None without one."""
    checkpoint = latest_checkpoint(out)
    return None if checkpoint is None else int(load_trainer_state(checkpoint)["step"])


def check_resume(cfg: Config, allow_config_change: bool) -> dict[str, tuple[Any, Any]]:
    """The fields (dotted key -> (saved value, new value)) in which ``cfg`` differs from the run in
    run.output_dir, allowed ones included. Raises ConfigError for a change outside RESUME_MAY_CHANGE
    unless ``allow_config_change``. A folder without a saved config has nothing to compare: {}."""
    saved_path = Path(cfg.run.output_dir) / "config.yaml"
    if not saved_path.exists():
        return {}
    saved, new = saved_config_tree(saved_path), cfg.model_dump(mode="json")
    changed = config_differences(saved, new, ())
    refused = [k for k in changed if not k.startswith(RESUME_MAY_CHANGE)]
    if refused and not allow_config_change:
        flat_saved, flat_new = flatten(saved), flatten(new)
        shown = ", ".join(f"{k} ({flat_saved.get(k)!r} -> {flat_new.get(k)!r})" for k in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise ConfigError(f"--resume: the config differs from the run's saved config in {shown}{more}; only "
                          f"{', '.join(k.rstrip('.') for k in RESUME_MAY_CHANGE)} may change. Pass "
                          "--allow-config-change to continue with the new values (recorded in "
                          f"{HISTORY}), or use another run.output_dir")
    flat_saved, flat_new = flatten(saved), flatten(new)
    return {k: (flat_saved.get(k), flat_new.get(k)) for k in changed}


def record_config_change(out: Path, changes: dict[str, tuple[Any, Any]], step: int | None) -> Path:
    """Append one line to OUT/config_history.jsonl: when, from which step, the command, what changed."""
    path = out / HISTORY
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "resumed_from_step": step,
             "command": " ".join(sys.argv), "changed": {k: {"old": a, "new": b} for k, (a, b) in changes.items()}}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    return path


def resume_preflight(cfg: Config, allow_config_change: bool) -> str | None:
    """``rl-div train --resume`` before Ray: refuse a changed config (see :func:`check_resume`), record an
    allowed one, and return the one line to print when the run already finished (None: go on)."""
    out = Path(cfg.run.output_dir)
    changes = check_resume(cfg, allow_config_change)
    step = saved_step(out)
    if step is not None and step >= cfg.train.steps:
        return (f"{out} already finished ({step} of train.steps={cfg.train.steps} steps): nothing to resume "
                "(raise train.steps to train further)")
    if changes:
        record_config_change(out, changes, step)
    return None
