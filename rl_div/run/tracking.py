"""Metric sinks: a JSONL line per step (always, flushed and fsynced so a crash leaves a readable
file), TensorBoard when installed, W&B / MLflow when asked for, and a console progress bar."""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("rl_div")

# Metrics the TensorBoard hparams view lists against the config.
HPARAM_METRICS = ["eval/pass@1", "eval/mean@n", "eval/div/distinct_correct_answers"]
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
                 total_steps: int, resume_after: int | None = None, bar_label: str | None = None) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._tb = self._open_tensorboard(cfg.tensorboard, config_dict,
                                          None if resume_after is None else resume_after + 1)
        self._wandb = self._open_wandb(wandb_init_kwargs(self.dir, cfg, run_name, config_dict)) if cfg.wandb else None
        self._mlflow = self._open_mlflow(run_name, config_dict) if cfg.mlflow else None
        self._bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, desc=bar_label or run_name, unit="step", dynamic_ncols=True)

    def _open_tensorboard(self, mode: bool | str, config_dict: dict[str, Any], purge_step: int | None) -> Any:
        """A SummaryWriter with the run's config as text (YAML) and as hparams (flat keys); on resume,
        purge_step drops the events past the checkpoint."""
        if mode is False:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:
            if mode is True:
                raise
            return None
        writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=purge_step)
        import yaml

        from rl_div.config.tree import flatten

        text = yaml.safe_dump(config_dict, sort_keys=False)
        writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # indented = Markdown code block
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config_dict).items()}
        for summary in hparams(flat, dict.fromkeys(HPARAM_METRICS, 0.0)):
            writer.file_writer.add_summary(summary)
        return writer

    def _open_wandb(self, kwargs: dict[str, Any]) -> Any:
        import wandb  # optional extra: a clear ImportError tells the user to install it

        return wandb.init(**kwargs)

    def _open_mlflow(self, run_name: str, config_dict: dict[str, Any]) -> Any:
        import mlflow

        from rl_div.config.tree import flatten

        run = mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:250] for k, v in flatten(config_dict).items()})
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
        # eval/unscored stays eval/unscored (not eval/eval/...); pass@1 of an eval becomes eval/pass@1
        tagged = {(k if k.startswith(prefix) else prefix + k): v for k, v in numeric.items()}
        if self._tb is not None:
            for k, v in tagged.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(tagged, step=step)
        if self._mlflow is not None:
            import mlflow

            mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in tagged.items()}, step=step)
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


def wandb_init_kwargs(run_dir: Path, cfg: Any, run_name: str, config_dict: dict[str, Any]) -> dict[str, Any]:
    """Arguments of wandb.init: project, group, tags, and a run id kept in RUN_DIR/wandb_run_id so that
    ``--resume`` continues the same W&B run (resume="allow"); a fresh run folder gets a fresh id."""
    id_file = run_dir / "wandb_run_id"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:16]
        id_file.write_text(run_id + "\n")
    algo = config_dict.get("algo") or {}
    tags = [run_name, *(str(algo.get(k)) for k in ("advantage", "token_weight", "loss")
                        if algo.get(k) not in (None, "none")), *cfg.wandb_tags]
    return {"project": cfg.wandb_project, "group": cfg.wandb_group, "name": run_name, "id": run_id,
            "resume": "allow", "tags": list(dict.fromkeys(tags)), "config": config_dict, "dir": str(run_dir)}


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
