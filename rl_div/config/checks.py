"""Checks that run before any work starts (before Ray, before a model loads), each failing with one
:class:`~rl_div.config.ConfigError` line that names the field or file.

* :func:`check_registry_names` (at config load): plugin modules import, every registered name exists
  and every ``*_params`` key is a keyword its function takes (built-in and plugin functions alike);
  then :func:`check_capabilities`: what the named entries declare they need fits the config.
* :func:`check_rollout_backend` (at config load and at the start of a run): the rollout backend's
  declaration takes the config's weight-sync transport and GPU layout.
* :func:`check_inputs` (at the start of a run): model and data paths exist, and a local machine has
  the GPUs the config asks for.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rl_div.config.lora import check_lora
from rl_div.config.method_params import LEARNER_LOSS_KEYWORDS, param_type_problem
from rl_div.config.rollout_backends import ROLLOUT_BACKENDS, backends_taking
from rl_div.config.schema import Config, ConfigError
from rl_div.registry import Registry, import_plugins, unknown_name_message

# How a Hugging Face hub id looks: 'name' or 'namespace/name'. Anything else is a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def check_plugins(modules: list[str]) -> None:
    """Import every ``run.plugins`` module; any failure (missing module, syntax error, an exception at
    import) is a config error naming the module."""
    for module in modules:
        try:
            import_plugins([module])
        except Exception as err:
            cause = err.__cause__ if isinstance(err, ImportError) and err.__cause__ is not None else err
            raise ConfigError(f"run.plugins: module {module!r} could not be imported "
                              f"({type(cause).__name__}: {cause})") from None


def check_registry_names(cfg: Config) -> None:
    """Fail early on names no registry knows and on ``*_params`` their functions do not take,
    after importing the run's plugin modules."""
    from rewards import REWARDS, reward_scope
    from rewards.registry import is_stateful
    from rl_div.algos import ADVANTAGES, LOSSES, TOKEN_WEIGHTS
    from rl_div.tasks import TASKS

    check_plugins(cfg.run.plugins)
    algo = cfg.algo
    # (field, kind, name, registry, params, positional arguments the caller passes, keywords it passes)
    checks: list[tuple[str, str, str, Registry, Mapping[str, Any] | None, int, tuple[str, ...]]] = [
        ("algo.advantage", "advantage", algo.advantage, ADVANTAGES, algo.advantage_params, 1, ()),
        ("algo.token_weight", "token weight", algo.token_weight, TOKEN_WEIGHTS, algo.token_weight_params, 1, ()),
        ("algo.loss", "loss", algo.loss, LOSSES, algo.loss_params, 1, LEARNER_LOSS_KEYWORDS),
    ]
    for i, r in enumerate(cfg.reward.rewards):
        fn = REWARDS.get(r.name) if r.name in REWARDS else None
        positional = 4 if fn is not None and reward_scope(fn) == "group" else 2
        supplied = ("state",) if fn is not None and is_stateful(fn) else ()  # the scorer passes a stateful one's
        checks.append((f"reward.rewards[{i}].name", "reward", r.name, REWARDS, r.params, positional, supplied))
    if cfg.data.source == "task":
        checks.append(("data.task", "task", cfg.data.task, TASKS, None, 0, ()))
    for field, kind, name, registry, params, positional, supplied in checks:
        if name not in registry:
            raise ConfigError(f"{field}: {unknown_name_message(kind, name, registry.names())}")
        if params is not None:
            params_field = field.removesuffix(".name") + (".params" if field.endswith(".name") else "_params")
            check_params(params_field, f"{kind} {name!r}", registry[name], dict(params), positional, supplied)
    check_capabilities(cfg)
    check_rollout_backend(cfg)
    check_benchmark_settings(cfg)


def check_benchmark_settings(cfg: Config, names: list[str] | tuple[str, ...] = ()) -> None:
    """The benchmarks section's names exist (after its user files are registered): prompt style,
    extractor, the benchmarks named by paths and sampling, and ``names`` (the ones to evaluate)."""
    from rewards import ANSWER_EXTRACTORS
    from rl_div.benchmarks import BENCHMARKS, PROMPT_STYLES, load_user_benchmarks

    b = cfg.benchmarks
    for i, path in enumerate(b.user_files):
        try:
            load_user_benchmarks(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"benchmarks.user_files[{i}]: {err}") from err
    named = [("benchmarks.prompt_style", "benchmark prompt style", b.prompt_style, PROMPT_STYLES),
             ("benchmarks.extractor", "answer extractor", b.extractor, ANSWER_EXTRACTORS)]
    named += [(f"benchmarks.{field}", "benchmark", name, BENCHMARKS)
              for field in ("paths", "sampling") for name in getattr(b, field)]
    named += [("eval.benchmarks", "benchmark", name, BENCHMARKS) for name in [*cfg.eval.benchmarks, *names]]
    for field, kind, name, registry in named:
        if name not in registry:
            raise ConfigError(f"{field}: {unknown_name_message(kind, name, registry.names())}")
    if cfg.guard.benchmark is not None and cfg.guard.benchmark not in cfg.eval.benchmarks:
        raise ConfigError(f"guard.benchmark: {cfg.guard.benchmark!r} is not in eval.benchmarks "
                          f"({cfg.eval.benchmarks}); the guard can only watch an evaluated benchmark")


def check_capabilities(cfg: Config) -> None:
    """What the configured entries declare (``Registry.needs``) against the rest of the config: a
    sharded learner computes a reweighting token weight over the whole mini-batch only, since its
    micro-batches differ with the world size; a token weight with a KL term (kl_cov) needs more than one
    optimizer step per batch to act; an advantage that reads verdicts (passk, arm, w_reinforce...) needs a
    verifier among the rewards. Run after the names are known to exist."""
    from rewards.registry import REWARDS, is_verifier
    from rl_div.algos import ADVANTAGES, TOKEN_WEIGHTS

    verifiers = [r.name for r in cfg.reward.rewards if r.name in REWARDS and is_verifier(REWARDS.get(r.name))]
    if ADVANTAGES.needs(cfg.algo.advantage).verdicts and not verifiers:
        # without one every row's verdict is NaN, so every row would be left out of every step
        raise ConfigError(f"algo.advantage={cfg.algo.advantage!r} reads the verifier's verdict, but reward.rewards "
                          f"({[r.name for r in cfg.reward.rewards]}) has no verifier; add one (e.g. "
                          "{name: task_verifier, weight: 0.0} to keep the reward unchanged)")

    t, token_weight = cfg.train, cfg.algo.token_weight
    needs = TOKEN_WEIGHTS.needs(token_weight)
    if t.strategy == "fsdp2" and needs.reweights and not needs.token_local and t.token_weight_scope != "mini":
        raise ConfigError("train.strategy='fsdp2' needs train.token_weight_scope='mini' for token weight "
                          f"{token_weight!r} (micro-batches differ with the world size)")
    rows = cfg.rollout.group_size * cfg.rollout.prompts_per_step
    one_step = t.ppo_epochs == 1 and (t.mini_batch_size is None or t.mini_batch_size >= rows)
    if TOKEN_WEIGHTS.needs(token_weight).kl_term and one_step:
        # its term is c * |log(pi_theta / pi_old)|: with one optimizer step per batch the ratio is 1 at the
        # only step, so the term and its gradient are 0 (PRIME-RL/Entropy-Mechanism-of-RL issue 1)
        raise ConfigError(f"algo.token_weight={token_weight!r} does nothing with one optimizer step per batch "
                          f"(train.ppo_epochs=1, train.mini_batch_size unset or >= the {rows} rows): its |log ratio| "
                          "term is 0 at ratio 1; set train.ppo_epochs>=2 or a smaller train.mini_batch_size")


def check_rollout_backend(cfg: Config) -> None:
    """rollout.backend is registered (after the run's plugins import), takes rollout.weight_sync, and
    its own GPU rules (rl_div.config.rollout_backends.RolloutBackend) accept the config's layout; with
    rollout.colocate, it declares a colocated sampler."""
    check_plugins(cfg.run.plugins)
    r = cfg.rollout
    if r.backend not in ROLLOUT_BACKENDS:
        message = unknown_name_message("rollout backend", r.backend, ROLLOUT_BACKENDS.names())
        raise ConfigError(f"rollout.backend: {message}")
    backend = ROLLOUT_BACKENDS[r.backend]
    if r.weight_sync not in backend.transports:
        takers = ", ".join(backends_taking(r.weight_sync)) or "none"
        raise ConfigError(f"rollout.weight_sync: the {r.backend} backend takes {', '.join(backend.transports)} only, "
                          f"not {r.weight_sync!r} (backends that take it: {takers})")
    if r.colocate and not backend.colocated:
        takers = ", ".join(n for n in ROLLOUT_BACKENDS.names() if ROLLOUT_BACKENDS[n].colocated) or "none"
        raise ConfigError(f"rollout.colocate: the {r.backend} backend has no colocated sampler (backends that have "
                          f"one: {takers})" + (f"; {backend.colocate_hint}" if backend.colocate_hint else ""))
    problems = backend.gpu_problems(r, cfg.train)
    if problems:
        raise ConfigError("; ".join(problems))


def accepted_keywords(fn: Callable[..., Any], positional: int) -> tuple[list[str], list[str]] | None:
    """(keywords fn takes, those of them without a default) after its first ``positional``
    parameters; None when it takes ``**kwargs`` (any keyword)."""
    accepted, required = [], []
    taken = 0
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and taken < positional:
            taken += 1
            continue
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            accepted.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return accepted, required


def check_params(field: str, what: str, fn: Callable[..., Any], params: dict[str, Any], positional: int,
                 supplied: tuple[str, ...] = ()) -> None:
    """Every key of ``params`` must be a keyword ``fn`` takes, with a value its type hint accepts
    (rl_div.config.method_params), and every keyword it requires must be given (by ``params`` or by the
    caller: ``supplied``)."""
    keywords = accepted_keywords(fn, positional)
    if keywords is None:
        return
    accepted, required = keywords
    for key, value in params.items():
        if key not in accepted:
            raise ConfigError(f"{field}: {unknown_name_message(f'{what} parameter', key, accepted)}")
        problem = param_type_problem(fn, key, value)
        if problem is not None:
            raise ConfigError(f"{field}.{key}: {what} parameter {key!r} {problem}")
    missing = [k for k in required if k not in params and k not in supplied]
    if missing:
        raise ConfigError(f"{field}: {what} needs parameter(s) {', '.join(missing)}")


def check_inputs(cfg: Config) -> None:
    """Model and data paths exist, the rollout backend and the registered entries' declarations accept the
    config, and the local machine has the GPUs asked for; see the module docstring. Runs at the start of
    every Trainer, before its output folder or Ray."""
    check_model_path(cfg.model.path)
    data = cfg.data
    if data.source != "task":
        for field, value in (("data.path", data.path), ("data.eval_path", data.eval_path)):
            if value is None:
                continue
            path = Path(value)
            if data.source == "jsonl" and not path.is_file():
                raise ConfigError(f"{field}: {value!r} " + ("is a directory, not a JSONL file" if path.is_dir()
                                                            else "does not exist"))
            if data.source == "parquet" and not path.exists():
                raise ConfigError(f"{field}: {value!r} does not exist")
            if data.source == "hf" and not path.exists() and not _HUB_ID.match(value):
                raise ConfigError(f"{field}: {value!r} does not exist (and is not an HF hub name like 'org/name')")
    # again: a Config built (or changed) in Python has not been through load_config's checks
    check_rollout_backend(cfg)  # imports the run's plugins first
    check_capabilities(cfg)
    check_devices(cfg)
    try:
        check_lora(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_model_path(value: str) -> None:
    """'bootstrap' or 'tiny_qwen' (built here), an existing from_pretrained directory, or a hub id
    (in the local cache when HF_HUB_OFFLINE is set)."""
    if value in ("bootstrap", "tiny_qwen"):
        return
    path = Path(value)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path: {value!r} is not a model directory (no config.json)")
        return
    if not _HUB_ID.match(value):
        raise ConfigError(f"model.path: {value!r} does not exist (and is not an HF hub name like 'org/name')")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(value, "config.json"), str):
            raise ConfigError(f"model.path: {value!r} is neither a local directory nor in the HF cache, and "
                              "HF_HUB_OFFLINE=1 forbids downloading it")


def check_devices(cfg: Config) -> None:
    """A local run (no cluster address) must fit the GPUs of this machine; a cluster's GPUs are not
    visible from the driver and are left to Ray."""
    if cfg.cluster.address or os.environ.get("RAY_ADDRESS"):
        return
    wanted, how = gpus_wanted(cfg)
    if wanted <= 0:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if wanted > have:
        raise ConfigError(f"{how} = {wanted:g} GPUs, "
                          f"but this machine has {have} CUDA GPU(s) and no cluster.address / RAY_ADDRESS is set")


def gpus_wanted(cfg: Config) -> tuple[float, str]:
    """The GPUs a run holds, and how they were counted: every learner rank and every engine on its own
    GPUs, or with weight_sync=cuda_ipc one GPU that the learner and the one engine share (the single
    bundle of cluster.placement.plan_placement)."""
    t, r = cfg.train, cfg.rollout
    if r.weight_sync == "cuda_ipc":
        return 1.0, "rollout.weight_sync=cuda_ipc (learner and engine share one GPU)"
    return (t.num_gpus * t.num_learners + r.num_gpus_per_worker * r.num_workers,
            "train.num_gpus * train.num_learners + rollout.num_gpus_per_worker * rollout.num_workers")
