"""``guard.controller``: what moves the loss's entropy coefficient under ``guard.adapt``
(rl_div/train/guard.py, rl_div/train/entropy_control.py). Its own module: a compact block of fields that
GuardConfig holds as one nested section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EntropyControlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    mode: Literal["rules", "target_entropy", "entropic"] = Field(
        "rules", description="rules: raise the coefficient while a guard rule fires, decay it otherwise; "
        "target_entropy: Skywork-OR1's adaptive entropy (TRL's use_adaptive_entropy): +-target_delta per step "
        "toward entropy_target, the bonus only while entropy <= entropy_target; entropic: EntroPIC's PI "
        "controller on entropy_target - entropy. Both stay in [0, guard.coef_max]."
    )
    entropy_target: float | None = Field(
        None, gt=0, description="target_entropy / entropic: the target mean token entropy H* in nats (the logged "
        "policy/entropy); required by both (set it near the entropy seen early in training)."
    )
    target_delta: float = Field(
        0.005, gt=0, description="target_entropy: the coefficient's step per training step (Skywork-OR1's and TRL's "
        "0.005)."
    )
    kp: float = Field(0.05, ge=0, description="entropic: proportional gain on entropy_target - entropy.")
    ki: float = Field(0.005, ge=0, description="entropic: integral gain on the running sum of that error.")

    @model_validator(mode="after")
    def check_target(self) -> EntropyControlConfig:
        if self.mode != "rules" and self.entropy_target is None:
            raise ValueError(f"guard.controller.mode={self.mode} needs guard.controller.entropy_target (nats; e.g. "
                             "the policy/entropy of the first steps)")
        return self
