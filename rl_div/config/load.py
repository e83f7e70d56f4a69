"""Loading the run configuration: YAML files plus ``key=value`` overrides, into the typed Config.

Every field has help text (``rl-div train --help-config`` prints it). Unknown keys, wrong types,
out-of-range values and unknown registry names fail before any work starts, naming the field and
suggesting the closest valid name.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rl_div.config.schema import Config, ConfigError
from rl_div.config.sections import ALGO_PRESETS
from rl_div.registry import is_plugin_path, unknown_name_message

__all__ = [
    "apply_override", "build_config", "config_help", "deep_merge", "load_config", "parse_override",
    "read_config_tree", "save_config", "yaml_error_text",
]

SANE_MAX_LR = 0.1  # AdamW steps of this size (per weight, per step) wreck a pretrained model: a warning


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 0.0003). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        where = yaml_error_text(err).removeprefix("line 1, ")
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({where}); "
                          f"quote a plain string: {key}='\"...\"'") from None
    return key.strip().split("."), value


def yaml_error_text(err: yaml.YAMLError) -> str:
    """One line: 'line L, column C: problem' (1-based, as editors count)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    return where + (f"{context}, {problem}" if context else str(problem)).replace("\n", " ")


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set tree[path] = value, checking each key against the schema so typos get suggestions."""
    model: Any = Config
    node = tree
    for depth, key in enumerate(path):
        fields = getattr(model, "model_fields", None)
        if fields is not None and key not in fields:
            where = ".".join(path[:depth]) or "top level"
            raise ConfigError(f"{unknown_name_message('config key', key, fields)} at {where}")
        last = depth == len(path) - 1
        if last:
            node[key] = value
            return
        if fields is not None:
            model = fields[key].annotation
            model = model if isinstance(model, type) and issubclass(model, BaseModel) else None
        child = node.get(key)
        if isinstance(child, str) and key == "algo":  # "algo: arm" then "algo.loss=..."
            child = dict(ALGO_PRESETS.get(child, {}))
        if not isinstance(child, dict):
            child = {}
        node[key] = child
        node = child


def build_config(tree: dict[str, Any]) -> Config:
    """Validate a plain dict into a Config, turning pydantic errors into one readable message."""
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                parent = _section_fields(e["loc"][:-1])
                lines.append(f"{loc}: {unknown_name_message('config key', str(e['loc'][-1]), parent)}")
            else:
                got = "" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
                lines.append(f"{loc or 'config'}: {e['msg'].removeprefix('Value error, ')}{got}")
        if len(lines) == 1:
            raise ConfigError(f"invalid config: {lines[0]}") from None
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def _section_fields(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Config
    for key in loc:
        if not isinstance(key, str):
            continue
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            break
        model = field.annotation
    return list(getattr(model, "model_fields", {}) or [])


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or defaults when path is None), apply overrides, validate types and names."""
    tree = read_config_tree(Path(path)) if path is not None else {}
    for text in overrides or []:
        key_path, value = parse_override(text)
        apply_override(tree, key_path, value)
    cfg = build_config(tree)
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    cfg.run.plugins = [locate_plugin(entry, base) for entry in cfg.run.plugins]
    from rl_div.config.checks import check_registry_names  # imports plugins and registries

    check_registry_names(cfg)
    if cfg.train.lr > SANE_MAX_LR:  # the run would stop at its first update (rl_div.train.blowup)
        logging.getLogger("rl_div").warning(
            "train.lr=%g is above %g: AdamW steps that large usually destroy the model", cfg.train.lr, SANE_MAX_LR)
    return cfg


def locate_plugin(entry: str, config_dir: Path) -> str:
    """A run.plugins entry as every process can import it: a module or package beside the config file
    ('my_rewards', or the path form './my_rewards.py') becomes its absolute path, which the driver and
    every Ray actor import by putting its folder on sys.path (rl_div.registry.import_plugin_path); a
    module name found on the Python path stays as written. Not found: a ConfigError saying where it looked."""
    here = Path.cwd()
    places = [config_dir] if config_dir == here else [config_dir, here]
    where = " and ".join(f"{p}" for p in places)
    if is_plugin_path(entry):
        given = Path(entry).expanduser()
        found = [given] if given.is_absolute() else [p / given for p in places]
        for candidate in found:
            if candidate.exists():
                return str(candidate.resolve())
        raise ConfigError(f"run.plugins: {entry!r} not found (looked in {where if not given.is_absolute() else given})")
    if "." not in entry:
        for folder in places:
            if (folder / f"{entry}.py").is_file():
                return str((folder / f"{entry}.py").resolve())
            if (folder / entry / "__init__.py").is_file():
                return str((folder / entry).resolve())
    top = entry.split(".")[0]
    if importlib.util.find_spec(top) is None:
        raise ConfigError(f"run.plugins: module {entry!r} could not be imported (ModuleNotFoundError: No module "
                          f"named {top!r}; looked beside the config and in the current directory: {where}; and on "
                          f"the Python path). Put {top}.py beside the config, or name the file: "
                          "run.plugins: [./my_module.py]")
    return entry


def read_config_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file as a dict. ``inherit: other.yaml`` (relative to the file) loads that file first
    and deep-merges this one over it, so method configs state only what differs from the demo."""
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config inheritance loops through {str(path)!r}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r}: {yaml_error_text(err)}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if loaded is None:  # empty or comments only: a default 40-step run into the current folder is never meant
        raise ConfigError(f"the config file {str(path)!r} is empty: give at least one setting (or inherit: "
                          "configs/demo.yaml)")
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(loaded).__name__}")
    parent = loaded.pop("inherit", None)
    if parent is None:
        return loaded
    return deep_merge(read_config_tree(path.parent / str(parent), (*seen, path.resolve())), loaded)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Values of ``over`` win; nested dicts merge key by key (lists and presets replace)."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (every default filled in) beside the run's outputs."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def config_help(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """One line per leaf field: dotted key, type, default, help text."""
    lines = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.append(f"{key}: {field.description}")
            lines += config_help(ann, key + ".")
        else:
            default = field.get_default(call_default_factory=True)
            lines.append(f"  {key} = {default!r}  # {field.description}")
    return lines
