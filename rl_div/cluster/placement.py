"""Where a run's actors go: one Ray placement-group bundle per learner / rollout actor (one shared
bundle when they share a GPU), the rules a config must follow for its weight-sync transport, and
the check of a plan against the cluster's resources. Pure functions; rl_div.cluster.actors does the Ray part.

    object_store  a bundle for the learner, one per rollout worker (CPU-only bundles on CPU)
    nccl          the same: learner and engines on different GPUs (NCCL cannot broadcast between
                  two ranks on one GPU), so every bundle holds its own GPUs
    cuda_ipc      one bundle with one GPU, shared by the learner and the single engine (each actor
                  asks half of it from the bundle, which makes Ray put both on the same device)

Actors that ask for nothing (0 CPUs, 0 GPUs) get no bundle: Ray refuses empty bundles, and
nothing needs reserving for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rl_div.config.rollout_backends import ROLLOUT_BACKENDS

if TYPE_CHECKING:
    from rl_div.config import Config

Resources = dict[str, float]


@dataclass(frozen=True)
class ActorSlot:
    """One actor's place: its bundle index in the plan (None: no reservation) and what it asks."""

    name: str
    bundle: int | None
    num_cpus: float
    num_gpus: float
    resources: Mapping[str, float] = field(default_factory=dict)  # custom Ray resources (node pinning)


@dataclass(frozen=True)
class PlacementPlan:
    bundles: list[Resources]
    bundle_owners: list[str]  # who each bundle is for, for error messages
    learner: ActorSlot
    rollout: list[ActorSlot]
    learners: list[ActorSlot] = field(default_factory=list)  # every learner rank (train.num_learners)


def plan_placement(cfg: Config) -> PlacementPlan:
    """The bundles a run needs and which actor goes into which."""
    r, t = cfg.rollout, cfg.train
    learner_res, rollout_res = dict(cfg.cluster.learner_resources), dict(cfg.cluster.rollout_resources)
    bundles: list[Resources] = []
    owners: list[str] = []

    def bundle(owner: str, cpus: float, gpus: float, custom: Mapping[str, float]) -> int | None:
        resources = {k: float(v) for k, v in {"CPU": cpus, "GPU": gpus, **custom}.items() if v > 0}
        if not resources:
            return None
        bundles.append(resources)
        owners.append(owner)
        return len(bundles) - 1

    if r.weight_sync == "cuda_ipc":  # config rules: one engine, learner and engine on one GPU each
        shared = bundle("learner + rollout worker 0 (one shared GPU)", t.num_cpus + r.num_cpus_per_worker, 1.0,
                        learner_res)
        return PlacementPlan(bundles, owners, ActorSlot("learner", shared, t.num_cpus, 0.5, learner_res),
                             [ActorSlot("rollout worker 0", shared, r.num_cpus_per_worker, 0.5)])
    learners = [ActorSlot(name, bundle(name, t.num_cpus, t.num_gpus, learner_res), t.num_cpus, t.num_gpus,
                          learner_res)
                for name in (["learner"] if t.num_learners == 1 else [f"learner {i}" for i in range(t.num_learners)])]
    rollout = [ActorSlot(f"rollout worker {i}", bundle(f"rollout worker {i}", r.num_cpus_per_worker,
                                                       r.num_gpus_per_worker, rollout_res), r.num_cpus_per_worker,
                         r.num_gpus_per_worker, rollout_res)
               for i in range(0 if r.colocate else r.num_workers)]  # colocated: the learner samples
    return PlacementPlan(bundles, owners, learners[0], rollout, learners)


def cluster_problems(plan: PlacementPlan, cfg: Config, total: Mapping[str, float],
                     nodes: list[Mapping[str, float]]) -> list[str]:
    """Why the cluster (total = ray.cluster_resources(), nodes = each alive node's resources)
    cannot hold the plan, the rollout backend's own rule included; empty when it can, as far as
    totals and node sizes tell."""
    out = []
    needed: Resources = {}
    for b in plan.bundles:
        for k, v in b.items():
            needed[k] = needed.get(k, 0.0) + v
    short = {k: (v, total.get(k, 0.0)) for k, v in needed.items() if v > total.get(k, 0.0) + 1e-9}
    if short:
        what = ", ".join(f"{need:g} {k} (the cluster has {have:g})" for k, (need, have) in short.items())
        out.append(f"the run needs {what}: {describe(plan)}")
    elif nodes:
        for owner, b in zip(plan.bundle_owners, plan.bundles, strict=True):
            if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in b.items()) for node in nodes):
                largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
                out.append(f"{owner} needs {format_resources(b)} on one node; no node has that "
                           f"(largest: {format_resources({k: largest.get(k, 0.0) for k in ('CPU', 'GPU')})})")
    out += ROLLOUT_BACKENDS.get(cfg.rollout.backend).cluster_problems(cfg.rollout, total)
    return out


def describe(plan: PlacementPlan) -> str:
    return "; ".join(f"{o}: {format_resources(b)}" for o, b in zip(plan.bundle_owners, plan.bundles, strict=True))


def format_resources(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items() if not math.isclose(v, 0.0)) or "nothing"
