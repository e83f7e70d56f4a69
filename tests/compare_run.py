"""One real ``rl-div compare`` (two variants, tiny bootstrapped model, Ray) shared by test_compare.py and
test_eval_cli.py: every Trainer start costs several seconds of actor start-up, so the two test files
reuse one comparison (and its checkpoints) instead of training twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rl_div.experiments.compare import compare

VARIANTS = {"grpo": "grpo", "arm": "arm"}  # run.name -> algo preset
SEEDS = [0]


def overrides(cache: Path) -> list[str]:
    return [
        "model.path=bootstrap", "bootstrap.steps=20", f"bootstrap.cache_dir={cache}",
        "data.num_train_prompts=32", "data.num_eval_prompts=4", "rollout.group_size=4", "rollout.prompts_per_step=4",
        "train.steps=2", "checkpoint.every=1", "checkpoint.keep=2", "eval.every=0", "eval.n=4",
        "eval.embedding_metrics=false", "reward.isolated=false", "tracking.progress=false",
        "tracking.tensorboard=off", "cluster.num_cpus=2",
    ]


def write_configs(root: Path) -> list[str]:
    paths = []
    for name, algo in VARIANTS.items():
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"run": {"name": name}, "algo": algo}))
        paths.append(str(path))
    return paths


_CACHE: dict[str, tuple[Path, list[str], list[str]]] = {}


def compare_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    """(OUT, config paths, overrides) of a finished comparison, made on first use."""
    if "run" not in _CACHE:
        root = tmp_path_factory.mktemp("compare")
        configs, extra = write_configs(root), overrides(root / "bootstrap")
        compare(configs, SEEDS, root / "out", extra)
        _CACHE["run"] = (root / "out", configs, extra)
    return _CACHE["run"]
