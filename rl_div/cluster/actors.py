"""Ray: start locally or connect to a cluster, and place the rollout, reward and learner actors.

The learner and rollout actors go into one placement group (rl_div.cluster.placement plans its bundles),
reserved before any actor starts: a run the cluster cannot hold fails in seconds, naming what is
missing, instead of leaving an actor pending until some later timeout. Every actor imports the
run's plugin modules before it reads a registry, so a user-registered advantage, loss or reward
works inside Ray workers as it does in the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray

import rl_div
from rl_div.cluster.faults import StartupError
from rl_div.cluster.learner_group import LearnerGroup, start_learner_group
from rl_div.cluster.placement import (
    ActorSlot,
    PlacementPlan,
    cluster_problems,
    describe,
    format_resources,
    plan_placement,
)
from rl_div.config import Config, ConfigError
from rl_div.config.rollout_backends import ROLLOUT_BACKENDS

log = logging.getLogger("rl_div")

# Per-actor weight-loading progress bars would drown the run's own progress bar.
# Ray's single-machine mode: its node address (and so every server's listening address) is 127.0.0.1.
LOCAL_RAY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "RAY_DEDUP_LOGS": "1"}


def init_ray(cfg: Config) -> None:
    """Connect to cfg.cluster.address / RAY_ADDRESS if set, else start a local Ray (no dashboard).
    Already connected (the CLI starts Ray while it imports the trainer): only say where."""
    if ray.is_initialized():
        if cfg.cluster.address or os.environ.get("RAY_ADDRESS"):
            log.info("connected to the Ray cluster (%d alive nodes); driver's rl_div from %s",
                     sum(n["Alive"] for n in ray.nodes()), os.path.dirname(rl_div.__file__))
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    env_vars = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"), "TOKENIZERS_PARALLELISM": "false",
                **QUIET_ENV}
    if address:
        # On a cluster, code and plugins travel with `ray job submit --working-dir` (launch/).
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True)
        log.info("connected to the Ray cluster at %s (%d alive nodes); driver's rl_div from %s", address,
                 sum(n["Alive"] for n in ray.nodes()), os.path.dirname(rl_div.__file__))
        return
    local = local_resources(cfg)  # one node: the totals are its resources
    problems = cluster_problems(plan_placement(cfg), cfg, local, [local])
    if problems:  # refused before Ray starts and before the run writes anything
        raise PlacementError("this machine cannot hold the run: " + "; ".join(problems) +
                             f" (Ray not started; a local Ray would have {format_resources(local)})")
    # Locally the workers see the driver's import path, so plugin modules next to the run resolve.
    paths = [p for p in [os.getcwd(), *sys.path] if p and os.path.isdir(p)]
    env_vars["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    with loopback_only():  # a local run is reachable from this machine only (docs: README, Reliability)
        ray.init(num_cpus=cfg.cluster.num_cpus, include_dashboard=False, runtime_env={"env_vars": env_vars},
                 log_to_driver=True, logging_level=logging.WARNING)


def local_resources(cfg: Config) -> dict[str, float]:
    """The CPUs and GPUs a Ray started here would have: cluster.num_cpus (else what Ray counts, the
    container's CPU quota included) and the GPUs torch sees (CUDA_VISIBLE_DEVICES applied)."""
    cpus: float = cfg.cluster.num_cpus or 0
    if not cpus:
        try:
            from ray._private.utils import get_num_cpus  # Ray's own count (cgroup quotas)

            cpus = get_num_cpus()
        except (ImportError, AttributeError):
            cpus = usable_cpus()
    import torch

    return {"CPU": float(cpus), "GPU": float(torch.cuda.device_count() if torch.cuda.is_available() else 0)}


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While Ray starts locally inside this block, it listens on 127.0.0.1 only (GCS, raylet, agents,
    workers), not on every interface. Ray on Linux resolves its node address to the machine's outward
    IP (even when given 127.0.0.1) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, its single-machine
    mode, and then binds its servers to the loopback address. Ray's processes started here inherit
    the variable; the driver read it when it imported ray, so its constant is set too. Both are put
    back afterwards, so a later connection to a cluster from this process is unaffected."""
    from ray._private import ray_constants

    saved = os.environ.get(LOCAL_RAY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_RAY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(LOCAL_RAY_ENV, None)
        else:
            os.environ[LOCAL_RAY_ENV] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


class RolloutHost:
    """Ray actor body for one rollout worker of any backend."""

    def __init__(self, backend: str, plugins: list[str], torch_threads: int, **worker_kwargs: Any) -> None:
        import torch

        from rl_div.registry import import_plugins
        from rl_div.rollout import make_rollout_worker

        import_plugins(plugins)
        torch.set_num_threads(torch_threads)
        self.worker = make_rollout_worker(backend, **worker_kwargs)

    def generate(self, prompts: list, spec: Any) -> Any:
        return self.worker.generate(prompts, spec)

    def set_weights(self, weights: Any, version: int) -> int:
        self.worker.set_weights(weights, version)
        return version

    def policy_version(self) -> int:
        return self.worker.policy_version()

    def policy_stats(self, batch: Any, temperature: float, micro_batch_size: int, chunk_rows: int) -> dict[str, Any]:
        """old_logprobs / old_entropy [B, T] of the batch under this worker's own copy of the policy (a
        backend declaring holds_policy_module): rl-div eval's entropies without a learner."""
        from rl_div.learner.forward import response_stats

        return response_stats(self.worker.model, batch, temperature, micro_batch_size, chunk_rows)

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> bool:
        """Answers once the constructor (model load, engine start-up) has finished."""
        return True


class RewardHost:
    """Ray actor body that scores batches; keeps its isolated verifier process alive across steps."""

    def __init__(self, cfg: Config) -> None:
        from rewards import RewardScorer, RewardSpec
        from rl_div.registry import import_plugins

        import_plugins(cfg.run.plugins)
        specs = [RewardSpec(name=r.name, weight=r.weight, params=dict(r.params)) for r in cfg.reward.rewards]
        r = cfg.reward
        self.scorer = RewardScorer(specs, timeout_s=r.timeout_s, isolated=r.isolated, plugins=list(cfg.run.plugins),
                                   workers=r.num_workers or min(usable_cpus(), 16),
                                   items_per_call=r.items_per_call, group_timeout_s=r.group_timeout_s)
        self.verified: Any = None  # the scorer of score_verified, made on its first use
        from rewards.embedding import warm_up_in_background
        from rewards.registry import REWARDS, uses_embedder

        if cfg.eval.embedding_metrics or any(uses_embedder(REWARDS.get(s.name), s.params) for s in specs):
            warm_up_in_background()  # loads while the actors start: ready for the first evaluation

    def score(self, completions: list[str], records: list, group_index: list[int], state: Any = None) -> Any:
        """RewardScorer.score; state: the stateful rewards' tables for this batch's prompts (the driver keeps
        them: a restarted reward actor loses nothing)."""
        return self.scorer.score(completions, records, group_index, state)

    def score_verified(self, completions: list[str], records: list, group_index: list[int]) -> Any:
        """Correctness by each record's own verifier (benchmark records name benchmark_verify), on the
        same isolated workers as the run's rewards."""
        if self.verified is None:
            from rewards import RewardScorer, RewardSpec

            self.verified = RewardScorer([RewardSpec("task_verifier")], timeout_s=self.scorer.timeout_s,
                                         isolated=self.scorer.isolated, worker=self.scorer.worker,
                                         items_per_call=self.scorer.items_per_call)
        return self.verified.score(completions, records, group_index)

    def embed(self, texts: list[str]) -> Any:
        from rewards.embedding import embed

        return embed(texts)

    def close(self) -> None:
        self.scorer.close()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


class PlacementError(ConfigError):
    """The cluster cannot hold the run as configured (the CLI exits with status 2)."""


@dataclass
class RunPlacement:
    """The run's plan and its reserved placement group (None when no actor reserves anything)."""

    plan: PlacementPlan
    group: Any = None

    def options(self, slot: ActorSlot) -> dict[str, Any]:
        """Ray actor options that put an actor into its bundle."""
        opts: dict[str, Any] = {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus}
        if slot.resources:  # cluster.learner_resources / rollout_resources: pin to the nodes that have them
            opts["resources"] = dict(slot.resources)
        if slot.bundle is not None and self.group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.group, placement_group_bundle_index=slot.bundle)
        return opts


def place_run(cfg: Config) -> RunPlacement:
    """Check the plan against the cluster, reserve its placement group, and wait (at most
    cluster.placement_timeout_s) until every bundle is placed. Raises PlacementError naming the
    missing resources (ray.cluster_resources()) or what is free now (ray.available_resources())."""
    from ray.util.placement_group import placement_group, remove_placement_group

    plan = plan_placement(cfg)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problems = cluster_problems(plan, cfg, ray.cluster_resources(), nodes)
    if problems:
        raise PlacementError("this Ray cluster cannot hold the run: " + "; ".join(problems))
    if not plan.bundles:
        return RunPlacement(plan)
    group = placement_group(plan.bundles, strategy="PACK", name="")
    timeout = cfg.cluster.placement_timeout_s
    try:
        ray.get(group.ready(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
        raise PlacementError(f"the run's resources were not free within cluster.placement_timeout_s={timeout:g} s "
                             f"(other jobs hold them?): needs {describe(plan)}; free now: "
                             f"{format_resources(free)}") from None
    return RunPlacement(plan, group)


def release_placement(placement: RunPlacement | None) -> None:
    """Give the run's reserved resources back (after its actors are gone)."""
    if placement is not None and placement.group is not None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(placement.group)
        placement.group = None


def unplaced(cfg: Config) -> RunPlacement:
    """The plan's per-actor resources without a reservation (tests that start single actors)."""
    return RunPlacement(plan_placement(cfg))


def start_rollout_worker(cfg: Config, model_path: str, placement: RunPlacement | None = None, index: int = 0) -> Any:
    """A new rollout actor holding the policy at model_path (weights are pushed after start), in
    the bundle of rollout worker `index` (a restarted worker goes back into its own bundle)."""
    placement = placement or unplaced(cfg)
    slot = placement.plan.rollout[index]
    actor_cls = ray.remote(RolloutHost).options(max_restarts=0, **placement.options(slot))
    return actor_cls.remote(cfg.rollout.backend, list(cfg.run.plugins), cfg.run.torch_threads,
                            **rollout_worker_args(cfg, model_path, slot.num_gpus))


def rollout_worker_args(cfg: Config, model_path: str, num_gpus: float) -> dict[str, Any]:
    """The worker's constructor keywords: those every backend takes, then its declaration's own
    (rl_div.config.rollout_backends), given the GPUs its actor reserved."""
    backend = ROLLOUT_BACKENDS.get(cfg.rollout.backend)
    return {"model_path": model_path, "dtype": cfg.model.dtype, "trust_remote_code": cfg.model.trust_remote_code,
            "use_chat_template": cfg.model.use_chat_template, "prompt_template": cfg.data.prompt_template,
            **backend.worker_args(cfg, num_gpus)}


def start_learner(cfg: Config, model_path: str, placement: RunPlacement | None = None) -> LearnerGroup:
    """The run's LearnerGroup (rl_div.cluster.learner_group): one Learner actor, or train.num_learners
    FSDP2 ranks; the trainer calls it through the group's verbs."""

    return start_learner_group(cfg, model_path, placement or unplaced(cfg))


def is_up(_: Any) -> bool:
    """Runs inside an actor: it answers, so its constructor has finished."""
    return True


def started_ref(actor: Any) -> Any:
    """A ref that resolves once the actor has started; for a LearnerGroup, once every rank has (a
    sharded group's verb waits for the ranks' setup first, within cluster.startup_timeout_s)."""
    if isinstance(actor, LearnerGroup):
        return actor.on_every_rank(is_up)
    return actor.__ray_call__.remote(is_up)


def wait_started(actors: dict[str, Any], timeout_s: float) -> None:
    """Block until every actor's constructor has finished (learner: model load; rollout worker:
    model load or vLLM engine start-up, compile and CUDA graphs), at most timeout_s in all.

    Raises StartupError naming the actors still starting or the one that crashed, so a slow
    start-up is not mistaken for a hung weight sync.
    """
    start = time.monotonic()
    refs = {name: started_ref(actor) for name, actor in actors.items()}
    pending = list(refs.values())
    while pending:  # one at a time, so each actor's start-up (process, imports, model load) is logged
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, timeout_s - (time.monotonic() - start)))
        if not ready:
            break
        log.info("%s started after %.1f s", next(n for n, r in refs.items() if r == ready[0]), time.monotonic() - start)
    if pending:
        waiting = [name for name, ref in refs.items() if ref in pending]
        raise StartupError(f"{', '.join(waiting)} did not start within cluster.startup_timeout_s={timeout_s:g} s "
                           "(stage: actor start-up: model load, vLLM engine compile / CUDA graphs, downloads)")
    for name, ref in refs.items():
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as err:
            raise StartupError(f"{name} failed to start: {err}") from err
    log.info("actors started in %.1f s", time.monotonic() - start)


def start_reward_worker(cfg: Config) -> Any:
    # No CPU reservation: scoring alternates with rollout and learning within a step.
    return ray.remote(RewardHost).options(num_cpus=0).remote(cfg)
