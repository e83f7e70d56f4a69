"""Operations on config trees shared by the commands: flatten to dotted keys, copy a config with
fields replaced, and compare a run's saved config with a planned one.

``compare`` uses them to plan runs and to check that an existing run folder holds the planned run;
``eval`` to reuse a finished evaluation; the tracker to log a config as flat parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rl_div.config.load import build_config
from rl_div.config.schema import Config, ConfigError

# Fields that may differ between an existing run and its plan: where it runs (a moved OUT folder), how
# it is logged, and how long it trains (raising train.steps extends a finished comparison by resuming).
MAY_CHANGE = ("cluster.", "tracking.", "train.steps", "eval.every", "checkpoint.", "run.output_dir")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; an empty dict is a leaf value."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_fields(cfg: Config, updates: dict[str, Any]) -> Config:
    """A validated copy of ``cfg`` with dotted fields replaced (values are not parsed as YAML, so a
    path like '007' stays a string)."""
    tree = cfg.model_dump(mode="json")
    for dotted, value in updates.items():
        node = tree
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return build_config(tree)


def config_differences(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = MAY_CHANGE) -> list[str]:
    """Dotted keys whose values differ between two config trees, except those starting with ``ignore``."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    # An empty mapping on one side and filled on the other ({} vs {'alpha': 1.0}): its keys say it all.
    parents = {k[:i] for k in keys for i, char in enumerate(k) if char == "."}
    return [k for k in keys if fa.get(k) != fb.get(k) and not k.startswith(ignore)
            and not (k in parents and {} in (fa.get(k), fb.get(k)))]


def saved_config_tree(path: Path) -> dict[str, Any]:
    """A run's config.yaml with every default filled in, so that a field added to Config after the run
    was made does not count as a difference; the raw file if it no longer validates."""
    return filled_tree(yaml.safe_load(path.read_text()) or {})


def filled_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """A config tree with every default filled in (a section at its defaults equals an absent one);
    the tree itself if it does not validate."""
    try:
        return build_config(tree).model_dump(mode="json")
    except ConfigError:
        return tree
