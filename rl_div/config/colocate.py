"""``rollout.colocate``: the learner actor samples with its own policy module (verl's hybrid engine on one
process; TRL's GRPOTrainer generates the same way). A module of its own so RolloutConfig stays one compact
block (it inherits the field) and the rules across sections sit together; what it does:
rl_div/cluster/colocated.py (the learner that samples) and rl_div/train/rollout_pipeline.py (no rollout
actor, no weight push)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from rl_div.config.schema import Config


class ColocateFields(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)  # as sections.Section (which imports this)

    colocate: bool = Field(
        False, description="Sample in the learner actor with the policy module it trains (no rollout actor, no "
        "weight copy, no sync; the weights version is still logged, and sync/logprob_gap compares the sampler's "
        "cached incremental forward with the learner's full forward of the same weights). Needs a backend that "
        "declares a colocated sampler (hf); vLLM's colocated form is rollout.weight_sync: cuda_ipc.",
    )


def colocate_problems(cfg: Config) -> list[str]:
    """What rollout.colocate cannot run with, one line per problem naming the fields (empty: fine). The
    backend's own answer (RolloutBackend.colocated) is checked with the registries, after the plugins import
    (rl_div.config.checks)."""
    r, t = cfg.rollout, cfg.train
    if not r.colocate:
        return []
    out = []
    if r.max_off_policy_steps:
        out.append(f"rollout.colocate samples in the learner actor between its updates, so nothing generates "
                   f"ahead: it needs rollout.max_off_policy_steps=0 (got {r.max_off_policy_steps})")
    if t.strategy != "single":
        out.append("rollout.colocate runs with train.strategy='single' only: FSDP2 ranks would have to step "
                   "generate()'s per-layer all-gathers in lockstep over rows of different lengths; use a "
                   "separate rollout actor (rollout.colocate=false) with fsdp2")
    if r.num_workers != 1 or r.num_gpus_per_worker:
        out.append(f"rollout.colocate samples in the one learner actor on the learner's device (train.num_gpus): "
                   f"rollout.num_workers must be 1 and rollout.num_gpus_per_worker 0 (got {r.num_workers}, "
                   f"{r.num_gpus_per_worker:g})")
    return out
