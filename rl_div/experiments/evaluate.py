"""``rl-div eval``: pass@k curve (k = 1, 2, 4, ..., n; unbiased), mean@n, maj@n, entropy, every diversity
metric and the collapse decomposition of one model against a reference, over one or more seeds.

The model may be a base model directory, a checkpoint of a run (``checkpoints/step_X`` or its
``policy/``), a run directory (its latest checkpoint) or any from_pretrained directory (a final or
layer-restored model). Sampling and scoring are the Trainer's own: for each seed and model
``Trainer.evaluate()`` runs with model.path = the model and writes OUT/<role>/seed<k>/eval/step_000000.json
exactly as in training, so these numbers are comparable with a run's own evaluations. Only rollout
workers and the reward worker start (rl_div.experiments.sampling_eval: no learner, no optimizer, no
checkpoints), the rollout workers once per model. Then the report (rl_div.report) is built from those
files into OUT/report.

Config: --config, else the run's config.yaml for a checkpoint of a run, else the defaults. The
evaluation set is the config's held-out split drawn with data.eval_seed, i.e. the one the run
evaluated on; each --seeds value sets the sampling seed, identical for the model and the reference.

Reference (for the collapse decomposition and the dashed curve): --reference, else for a checkpoint
of a run the run's base model (its model.path, or the cached bootstrap model), else the --config's
model.path when it names another model; ``--reference none`` skips it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rl_div.config import (
    Config,
    ConfigError,
    apply_override,
    build_config,
    load_config,
    parse_override,
)
from rl_div.config.checks import check_registry_names
from rl_div.config.tree import config_differences, saved_config_tree, set_fields
from rl_div.models.lora import MERGED_DIR, merge_adapter_dir
from rl_div.report.results import RunRef, write_manifest
from rl_div.run.checkpoint import latest_checkpoint

if TYPE_CHECKING:  # imported where used: the one-line checks before any work stay light
    from rl_div.experiments.sampling_eval import EvalActors

log = logging.getLogger("rl_div")


@dataclass
class Target:
    """A model to evaluate: a from_pretrained directory, and the run it comes from, if any."""

    model_dir: Path
    run_dir: Path | None = None
    step: int | None = None

    @property
    def label(self) -> str:
        if self.run_dir is not None:
            name = (yaml.safe_load((self.run_dir / "config.yaml").read_text()) or {}).get("run", {}).get("name")
            return f"{name or self.run_dir.name}@step{self.step}"
        return self.model_dir.name


def resolve_target(path: str | Path) -> Target:
    """Find the model directory behind a checkpoint, a run directory or a model directory."""
    p = Path(path).expanduser().resolve()
    if (p / "checkpoints").is_dir() and not (p / "config.json").exists():
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise FileNotFoundError(f"run directory {p} has no checkpoint yet")
        p = ckpt
    if (p / "policy" / "config.json").exists():
        p = p / "policy"
    elif (p / "adapter" / "adapter_config.json").exists():  # train.lora.save=adapter: merge it once
        p = merge_adapter_dir(p / "adapter")
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json), checkpoint or run directory")
    target = Target(p)
    ckpt_dir = p.parent
    if p.name in ("policy", MERGED_DIR) and ckpt_dir.parent.name == "checkpoints":
        run_dir = ckpt_dir.parent.parent
        if (run_dir / "config.yaml").exists():
            target.run_dir = run_dir
        state = ckpt_dir / "trainer_state.json"
        target.step = json.loads(state.read_text())["step"] if state.exists() else int(ckpt_dir.name.split("_")[-1])
    return target


def eval_config(target: Target, config: str | None, overrides: list[str]) -> Config:
    """The config evaluations run with (before model, seed and output are set)."""
    if config is not None:
        return load_config(config, overrides)
    if target.run_dir is not None:
        # The saved config is fully resolved; validate it as a tree so that string values such as a
        # model path are never re-parsed as YAML scalars.
        saved = yaml.safe_load((target.run_dir / "config.yaml").read_text())
        return _apply(build_config(without_remote_code(saved, target.run_dir, overrides)), overrides)
    return load_config(None, overrides)


def without_remote_code(tree: dict[str, Any], run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """The evaluated folder's saved config with model.trust_remote_code off: the folder's own word never
    makes its Python files run. Only the person running rl-div eval trusts them (a command-line
    override or their own --config); a folder that asks for it without that is refused in one line."""
    model = tree.get("model") or {}
    from_command_line = any(o.split("=", 1)[0].strip() == "model.trust_remote_code" for o in overrides)
    if model.get("trust_remote_code") and not from_command_line:
        raise ConfigError(f"{run_dir / 'config.yaml'} sets model.trust_remote_code: true, and rl-div eval never "
                          "trusts remote code because the evaluated folder says so: if you trust the Python files "
                          "of its model, pass model.trust_remote_code=true on the command line (or --config YOURS)")
    return {**tree, "model": {**model, "trust_remote_code": False}}


def _apply(cfg: Config, overrides: list[str]) -> Config:
    """key=value overrides on an already-built config, validated like load_config's."""
    tree = cfg.model_dump(mode="json")
    for text in overrides:
        apply_override(tree, *parse_override(text))
    out = build_config(tree)
    check_registry_names(out)
    return out


def default_reference(target: Target, cfg: Config, explicit: str | None, config: str | None) -> Path | None:
    """See the module docstring; None = no reference."""
    if explicit is not None:
        return None if explicit.lower() == "none" else resolve_target(explicit).model_dir
    from rl_div.train.model_path import resolve_model_path

    if target.run_dir is not None:
        run_cfg = build_config(yaml.safe_load((target.run_dir / "config.yaml").read_text()))
        return Path(resolve_model_path(run_cfg)).resolve()
    # Only a config the user named says which base model is meant; the defaults' 'bootstrap' would
    # silently train a demo model as the reference of an unrelated model.
    if config is not None and (cfg.model.path in ("bootstrap", "tiny_qwen") or Path(cfg.model.path).is_dir()):
        ref = Path(resolve_model_path(cfg)).resolve()
        return None if ref == target.model_dir else ref
    return None


def evaluate_model(model_dir: Path, cfg: Config, seed: int, n: int, out_dir: Path, label: str,
                   actors: EvalActors | None = None) -> Path:
    """One Trainer evaluation of ``model_dir`` (n samples per held-out prompt); reuses a finished one.
    With ``actors`` and a backend that holds its policy module, on those actors alone (no learner:
    rl_div.experiments.sampling_eval); else a full Trainer."""
    run_cfg = set_fields(cfg, {
        "model.path": str(model_dir), "run.seed": seed, "run.name": label, "run.output_dir": str(out_dir),
        "train.steps": 0, "train.use_ref_model": False, "eval.n": n, "eval.at_start": True,
        "tracking.progress": False, "tracking.tensorboard": "off", "tracking.wandb": False, "tracking.mlflow": False,
    })
    result = out_dir / "eval" / "step_000000.json"
    saved = out_dir / "config.yaml"
    same = saved.exists() and not config_differences(saved_config_tree(saved), run_cfg.model_dump(mode="json"))
    if result.exists() and same:
        print(f"[eval] {label} seed {seed}: already evaluated in {out_dir}")
        return result
    for stale in (out_dir / "metrics.jsonl", result):
        stale.unlink(missing_ok=True)
    from rl_div.experiments.sampling_eval import SamplingEvaluation, samples_without_learner
    from rl_div.train.loop import Trainer

    print(f"[eval] {label} seed {seed}: sampling n={n} per problem")
    if actors is not None and samples_without_learner(run_cfg):
        trainer: Trainer = SamplingEvaluation(run_cfg, actors)
    else:
        log.info("rollout backend %r computes no entropies on its workers: the evaluation starts a learner",
                 run_cfg.rollout.backend)
        trainer = Trainer(run_cfg)
    try:
        trainer.evaluate()
    finally:
        trainer.close()
    return result


def run_eval(model: str | Path, n: int = 64, config: str | None = None, reference: str | None = None,
             seeds: list[int] | None = None, out: str | Path | None = None,
             overrides: list[str] | None = None) -> dict[str, Path]:
    """Evaluate ``model`` (and its reference) for every seed and write the report; returns its files."""
    target = resolve_target(model)
    cfg = eval_config(target, config, list(overrides or []))
    ref_dir = default_reference(target, cfg, reference, config)
    seeds = list(seeds) if seeds else [cfg.run.seed]
    if out is None:
        base = target.run_dir / "evals" if target.run_dir is not None else Path("evals")
        out = base / f"{target.label.replace('@', '_')}_n{n}"
    out = Path(out)
    refs: list[RunRef] = []
    ref_label = f"reference ({ref_dir.name})" if ref_dir is not None else ""
    from rl_div.experiments.sampling_eval import EvalActors

    actors = EvalActors()  # the reward worker once; rollout workers once per model, every seed on them
    try:
        for seed in seeds:
            path = out / "model" / f"seed{seed}"
            evaluate_model(target.model_dir, cfg, seed, n, path, target.label, actors)
            refs.append(RunRef(target.label, seed, path))
        for seed in seeds if ref_dir is not None else []:
            path = out / "reference" / f"seed{seed}"
            evaluate_model(ref_dir, cfg, seed, n, path, ref_label, actors)
            refs.append(RunRef(ref_label, seed, path, role="reference"))
    finally:
        actors.close()
    write_manifest(out, "eval", refs, {"model": str(target.model_dir), "reference": str(ref_dir) if ref_dir else None,
                                       "n": n, "seeds": seeds})
    from rl_div.report import build_report

    return build_report([out], out / "report", title=f"Evaluation of {target.label} (n = {n})")


def print_summary(summary_json: Path) -> None:
    """The headline numbers on the console: pass@k with bands, mean@n, maj@n, entropy, collapse."""
    data = json.loads(summary_json.read_text())
    rows = [(v, data["final"][v]) for v in data["variants"]]
    if data.get("base"):
        rows.append((data["base_label"], data["base"]))

    def cell(band: dict[str, Any] | None) -> str:
        if band is None or band["mean"] is None:
            return "-"
        lo, hi = (band["ci_lo"], band["ci_hi"]) if band["ci_lo"] is not None else (band["seed_min"], band["seed_max"])
        return f"{band['mean']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and not math.isclose(lo, hi) else "")

    for name, bands in rows:
        print(f"\n{name}")
        ks = sorted(int(m[5:]) for m in bands if m.startswith("pass@") and m[5:].isdigit())
        for key in [f"pass@{k}" for k in ks] + ["mean@n", "maj@n", "policy/entropy", "div/distinct_correct_answers",
                                                "div/emb_diversity", "div/vendi", "div/num_classes"]:
            if key in bands:
                print(f"  {key:<30} {cell(bands[key])}")
    def num(value: float | None) -> str:  # null = undefined (e.g. no problem with 2 correct samples)
        return "nan" if value is None else f"{value:.3f}"

    for name, c in (data.get("collapse") or {}).items():
        print(f"\ncollapse of {name} vs reference (answer diversity): total {num(c['total'])} = residual "
              f"{num(c['residual'])} + quality control {num(c['quality_control'])}")


__all__ = ["ConfigError", "Target", "evaluate_model", "print_summary", "resolve_target", "run_eval"]
