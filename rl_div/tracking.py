"""Metric sinks: a JSONL line per step (always, flushed and fsynced so a crash leaves a readable
file), TensorBoard when installed, W&B / MLflow when asked for, and a console progress bar."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("rl_div")

PROGRESS_KEYS = {
    "reward": "reward/mean",
    "pass@1": "train/pass@1",
    "H": "policy/entropy",
    "distinct": "div/distinct_correct_answers",
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null keeps the line parseable everywhere
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


class Tracker:
    """Writes metrics to every configured sink; ``close()`` flushes them all.

    ``resume_after``: a resumed run continues after this step; TensorBoard drops its events past it
    (the trainer trims metrics.jsonl likewise), so no step is seen twice.
    """

    def __init__(self, output_dir: str | Path, cfg: Any, run_name: str, config_dict: dict[str, Any],
                 total_steps: int, resume_after: int | None = None) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._tb = self._open_tensorboard(cfg.tensorboard, None if resume_after is None else resume_after + 1)
        self._wandb = self._open_wandb(run_name, config_dict) if cfg.wandb else None
        self._mlflow = self._open_mlflow(run_name, config_dict) if cfg.mlflow else None
        self._bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, desc=run_name, unit="step", dynamic_ncols=True)

    def _open_tensorboard(self, mode: bool | str, purge_step: int | None) -> Any:
        if mode is False:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if mode is True:
                raise
            return None
        return SummaryWriter(str(self.dir / "tensorboard"), purge_step=purge_step)

    def _open_wandb(self, run_name: str, config_dict: dict[str, Any]) -> Any:
        import wandb  # optional extra: a clear ImportError tells the user to install it

        return wandb.init(name=run_name, config=config_dict, dir=str(self.dir))

    def _open_mlflow(self, run_name: str, config_dict: dict[str, Any]) -> Any:
        import mlflow

        run = mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:250] for k, v in _flatten(config_dict).items()})
        return run

    def log(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
        row = {"step": step, "kind": kind, "time": time.time()}
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        numeric = {k: float(v) for k, v in row.items()
                   if isinstance(v, (int, float)) and k not in ("step", "time")}
        prefix = "" if kind == "train" else f"{kind}/"
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(prefix + k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({prefix + k: v for k, v in numeric.items()}, step=step)
        if self._mlflow is not None:
            import mlflow

            mlflow.log_metrics({(prefix + k).replace("@", "_at_"): v for k, v in numeric.items()}, step=step)
        if self._bar is not None and kind == "train":
            shown = {label: numeric[key] for label, key in PROGRESS_KEYS.items() if key in numeric}
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
            self._bar.n = step
            self._bar.refresh()

    def close(self) -> None:
        self._jsonl.close()
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._mlflow is not None:
            import mlflow

            mlflow.end_run()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Read a metrics.jsonl, skipping a torn last line left by a crash mid-write."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("skipping unreadable metrics line in %s", path)
                continue
            if kind is None or row.get("kind") == kind:
                rows.append(row)
    return rows
