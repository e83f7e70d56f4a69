"""rollout's shaping fields: dynamic sampling, overlong responses, the temperature schedule. A module of
their own so RolloutConfig stays one compact block (it inherits them). What they do:
rl_div/train/dynamic_sampling.py, rl_div/algos/overlong.py, rl_div/train/rollout_shaping.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class RolloutShapingFields(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)  # as sections.Section (which imports this)

    dynamic_sampling: Literal["off", "filter", "replace"] = Field(
        "off", description="Groups whose G responses carry no signal (zero variance of dynamic_sampling_signal): "
        "'off' trains them (today); 'filter' (DAPO) drops them and draws further rounds of prompts_per_step "
        "prompts through the rollout pipeline until prompts_per_step informative groups are kept or "
        "dynamic_sampling_max_rounds rounds ran (a short batch is trained as is and counted; informative groups "
        "beyond prompts_per_step wait for the next step while they are within max_off_policy_steps); 'replace' "
        "(POLARIS) replaces them by copies of the same round's informative groups, without a new round.",
    )
    dynamic_sampling_max_rounds: int = Field(
        4, ge=1, description="filter: most rollout rounds (batches of prompts_per_step prompts) drawn for one "
        "training step, the first included; bounds the extra generation.",
    )
    dynamic_sampling_signal: Literal["reward", "correct"] = Field(
        "reward", description="What must vary within a group for it to count as informative: the summed reward, "
        "or the verifier's correctness (0/1). NaN values (failed rewards) are left out of the test and counted.",
    )
    log_groups: bool = Field(
        False, description="Write each trained batch's per-group data (uid, rewards, correctness, behaviour "
        "version) to groups/step_*.json in the run folder.",
    )
    overlong: Literal["none", "mask", "penalty"] = Field(
        "none", description="Responses that hit max_new_tokens: 'none' trains them as any other; 'mask' keeps their "
        "reward in the group's statistics but drops their tokens from the loss (TRL's mask_truncated_completions); "
        "'penalty' adds DAPO's soft overlong punishment to the reward: 0 up to max_new_tokens - overlong_buffer "
        "tokens, falling linearly to -overlong_penalty_factor at max_new_tokens.",
    )
    overlong_buffer: int = Field(
        4, ge=1, description="penalty: L_cache, the last tokens before max_new_tokens over which the penalty grows "
        "(OpenRLHF's --overlong_buffer_len); at most max_new_tokens.",
    )
    overlong_penalty_factor: float = Field(
        1.0, ge=0, description="penalty: the penalty at max_new_tokens (OpenRLHF's --overlong_penalty_factor).",
    )
    temperature_schedule: Literal["constant", "linear", "step"] = Field(
        "constant", description="Training sampling temperature per step: 'constant' = temperature; 'linear' = from "
        "temperature at step 0 to temperature_final at train.steps; 'step' = temperature, then each "
        "temperature_milestones [step, value] from its step on. The learner's log-probs and entropies use each "
        "row's own sampling temperature. Evaluation uses eval.temperature.",
    )
    temperature_final: float | None = Field(None, gt=0, description="linear: the temperature at train.steps.")
    temperature_milestones: list[tuple[int, float]] = Field(
        default_factory=list, description="step: [[step, temperature], ...] in increasing step order.",
    )

    @field_validator("dynamic_sampling", mode="before")
    @classmethod
    def yaml_off(cls, value: object) -> object:
        """YAML reads a bare ``off`` as false: it means "off" here."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def check_shaping(self) -> RolloutShapingFields:
        max_new = getattr(self, "max_new_tokens", None)
        if self.overlong == "penalty" and max_new is not None and self.overlong_buffer > max_new:
            raise ValueError(f"rollout.overlong_buffer ({self.overlong_buffer}) exceeds rollout.max_new_tokens "
                             f"({max_new})")
        if self.temperature_schedule == "linear" and self.temperature_final is None:
            raise ValueError("rollout.temperature_schedule=linear needs rollout.temperature_final")
        if self.temperature_schedule == "step":
            steps = [s for s, _ in self.temperature_milestones]
            if not steps or steps != sorted(set(steps)) or any(t <= 0 for _, t in self.temperature_milestones):
                raise ValueError("rollout.temperature_schedule=step needs rollout.temperature_milestones: "
                                 "[[step, temperature], ...] with increasing steps and temperatures > 0")
        return self
