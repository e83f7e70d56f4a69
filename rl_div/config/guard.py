"""The ``guard`` section (the collapse guard, rl_div/train/guard.py) and its ``guard.controller`` block:
what moves the loss's entropy coefficient under ``guard.adapt`` (rl_div/train/entropy_control.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rl_div.config.sections import Section


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


class GuardConfig(Section):
    enabled: bool = Field(
        False, description="Watch for diversity collapse while training (rules below; guard/* metrics every step, "
        "a warning line in train.log when a rule fires). Off: the run is unchanged."
    )
    benchmark: str | None = Field(
        None, description="Watch this benchmark of eval.benchmarks (its pass@k and distinct correct answers) "
        "instead of the held-out split.",
    )
    rules: list[Literal["entropy_rate", "distinct_correct", "passk", "zero_variance"]] = Field(
        default_factory=lambda: ["entropy_rate", "distinct_correct", "passk"],
        description="Rules that may fire: entropy_rate (training entropy falling too fast), distinct_correct "
        "(distinct correct answers per prompt below distinct_fraction of the base model's), passk (held-out "
        "pass@k at the largest k below the base model's interval), zero_variance (opt-in: the smoothed share of "
        "generated groups with no reward variance, sampling/zero_variance_frac, above zero_variance_max). See "
        "rl_div/train/guard.py.",
    )
    zero_variance_max: float = Field(
        0.8, gt=0, le=1, description="zero_variance fires when the smoothed sampling/zero_variance_frac (groups "
        "whose rewards do not vary, before any filtering) exceeds this."
    )
    smooth_steps: int = Field(
        10, ge=1, description="Training metrics are smoothed as the mean of the last smooth_steps steps; the "
        "entropy reference is the mean of the first smooth_steps steps."
    )
    entropy_window: int = Field(25, ge=1, description="entropy_rate: steps over which the drop is measured.")
    entropy_max_drop: float = Field(
        0.06, gt=0, description="entropy_rate fires when the smoothed entropy fell by more than this fraction of "
        "the reference entropy over the last entropy_window steps."
    )
    distinct_fraction: float = Field(
        0.8, gt=0, le=1, description="distinct_correct fires below this fraction of the base model's distinct "
        "correct answers per prompt (base: the step-0 evaluation with eval.at_start, else the first "
        "smooth_steps training steps)."
    )
    passk_z: float = Field(
        1.96, gt=0, description="passk: the base interval is mean - passk_z * sd / sqrt(problems) of the step-0 "
        "evaluation's per-problem pass@k (1.96: a 95% normal interval); needs eval.at_start."
    )
    adapt: bool = Field(
        False, description="Raise the loss's entropy coefficient while a rule fires and decay it back when none "
        "does, within [algo.loss_params.entropy_coef (or 0), coef_max]; every change is logged."
    )
    coef_step: float = Field(0.002, gt=0, description="adapt: added to the entropy coefficient per firing step.")
    coef_decay: float = Field(
        0.9, gt=0, lt=1, description="adapt: per step without a firing rule, the coefficient's excess over its "
        "minimum is multiplied by this (snapped to the minimum below coef_step / 10)."
    )
    coef_max: float = Field(0.05, ge=0, description="adapt: upper bound of the entropy coefficient.")
    controller: EntropyControlConfig = Field(
        default_factory=EntropyControlConfig, description="adapt: what moves the entropy coefficient (the rules "
        "above, or an entropy controller toward a target entropy; below)."
    )

    @model_validator(mode="after")
    def check_adapt(self) -> GuardConfig:
        if self.adapt and not self.enabled:
            raise ValueError("guard.adapt=true needs guard.enabled=true")
        if self.enabled and not self.rules:
            raise ValueError("guard.rules is empty: name at least one rule, or set guard.enabled=false")
        if self.controller.mode != "rules" and not self.adapt:
            raise ValueError(f"guard.controller.mode={self.controller.mode} needs guard.adapt=true "
                             "(and guard.enabled=true)")
        return self
