"""The run configuration's schema: Config, the sections (rl_div.config.sections) joined, with the rules
that span sections; and ConfigError. Loading (YAML, ``inherit``, ``key=value`` overrides, readable
errors) is rl_div.config.load."""

from __future__ import annotations

from pydantic import Field, model_validator

from rl_div.config.benchmarks import BenchmarksConfig
from rl_div.config.colocate import colocate_problems
from rl_div.config.guard import GuardConfig
from rl_div.config.lora import lora_problems
from rl_div.config.sections import (
    AlgoConfig,
    BootstrapConfig,
    CheckpointConfig,
    ClusterConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    Section,
    TrackingConfig,
    TrainConfig,
)


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and the closest valid name."""


def gpu_problems(rollout: RolloutConfig, train: TrainConfig) -> list[str]:
    """What a config asks of GPUs that cannot work, whatever the cluster and the backend (empty list: fine).
    The backend's own rules (RolloutBackend.gpu_problems) are checked by rl_div.config.checks, after the
    run's plugins are imported."""
    r, t = rollout, train
    tp, gpus = r.tensor_parallel_size, r.num_gpus_per_worker
    out = []
    if t.num_gpus > 1:
        out.append(f"train.num_gpus={t.num_gpus:g}: the learner is one process on one device (use 0 or 1)")
    if r.weight_sync == "cuda_ipc" and not (r.num_workers == 1 and tp == 1 and t.num_gpus == 1 and gpus == 1):
        out.append("rollout.weight_sync=cuda_ipc puts the learner and one vLLM engine on one shared GPU: it needs "
                   "rollout.num_workers=1, rollout.tensor_parallel_size=1, train.num_gpus=1 and "
                   f"rollout.num_gpus_per_worker=1 (got {r.num_workers}, {tp}, {t.num_gpus:g}, {gpus:g})")
    if r.weight_sync == "nccl" and not (t.num_gpus == 1 and gpus >= 1):
        out.append("rollout.weight_sync=nccl broadcasts from the learner's GPU to engines on other GPUs: it needs "
                   f"train.num_gpus=1 and rollout.num_gpus_per_worker>=1 (got {t.num_gpus:g}, {gpus:g})")
    return out


class Config(Section):
    run: RunConfig = Field(default_factory=RunConfig, description="Run identity and outputs.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy.")
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig, description="Demo base model.")
    data: DataConfig = Field(default_factory=DataConfig, description="Prompts.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Rewards.")
    algo: AlgoConfig = Field(default_factory=AlgoConfig, description="Advantage, weights, loss.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out pass@k evaluation.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoints.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Metric sinks.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray.")
    guard: GuardConfig = Field(default_factory=GuardConfig, description="Collapse guard (rl_div/train/guard.py).")
    benchmarks: BenchmarksConfig = Field(default_factory=BenchmarksConfig, description="Standard test sets.")

    @model_validator(mode="after")
    def check_placement(self) -> Config:
        problems = gpu_problems(self.rollout, self.train)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def check_guard(self) -> Config:
        g, base = self.guard, self.algo.loss_params.get("entropy_coef", 0.0)
        if g.enabled and "passk" in g.rules and not self.eval.at_start:
            raise ValueError("guard.rules has passk, which needs eval.at_start=true (the base model's interval)")
        if g.adapt and isinstance(base, (int, float)) and g.coef_max < base:
            raise ValueError(f"guard.coef_max ({g.coef_max}) is below algo.loss_params.entropy_coef ({base}), "
                             "the controller's minimum")
        return self

    @model_validator(mode="after")
    def check_batch_shapes(self) -> Config:
        batch = self.rollout.group_size * self.rollout.prompts_per_step
        mini = self.train.mini_batch_size
        if mini is not None and mini > batch:
            raise ValueError(f"train.mini_batch_size ({mini}) exceeds the rollout batch ({batch})")
        return self

    @model_validator(mode="after")
    def check_strategy(self) -> Config:
        t = self.train
        if t.strategy == "single" and t.num_learners != 1:
            raise ValueError(f"train.num_learners={t.num_learners} needs train.strategy='fsdp2' "
                             "('single' is one learner)")
        if t.strategy == "fsdp2" and self.rollout.weight_sync != "object_store":
            raise ValueError(f"train.strategy='fsdp2' supports rollout.weight_sync='object_store' only, "
                             f"got {self.rollout.weight_sync!r}")
        if t.packing_tokens is not None and not t.packing:
            raise ValueError(f"train.packing_tokens={t.packing_tokens} sizes packed sequences: it needs "
                             "train.packing=true")
        if lora_problems(self):
            raise ValueError("; ".join(lora_problems(self)))
        if colocate_problems(self):  # rollout.colocate (rl_div.config.colocate)
            raise ValueError("; ".join(colocate_problems(self)))
        # which token weights need token_weight_scope='mini' is their declaration's to say: checked
        # with the registries, after the plugins import (rl_div.config.checks.check_capabilities)
        return self
