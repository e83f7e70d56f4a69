"""Per-round shaping of training rollouts: the sampling temperature of each step
(rollout.temperature_schedule) and DAPO's overlong penalty added to the rewards (rollout.overlong =
"penalty"; the formula is rl_div.algos.overlong). Evaluation uses neither."""

from __future__ import annotations

from rl_div.algos.overlong import overlong_penalty
from rl_div.config import RolloutConfig
from rl_div.data import RolloutBatch

OVERLONG_COMPONENT = "overlong_penalty"  # its reward component: reward/overlong_penalty is its mean


def scheduled_temperature(r: RolloutConfig, step: int, total_steps: int) -> float:
    """The temperature a round launched at ``step`` (0-based) samples with: constant (r.temperature),
    linear from r.temperature at step 0 to r.temperature_final at total_steps (held past it), or
    step-wise (r.temperature, then each milestone's value from its step on)."""
    if r.temperature_schedule == "linear":
        assert r.temperature_final is not None
        frac = min(1.0, step / total_steps) if total_steps > 0 else 1.0
        return r.temperature + (r.temperature_final - r.temperature) * frac
    if r.temperature_schedule == "step":
        value = r.temperature
        for start, temperature in r.temperature_milestones:
            if step >= start:
                value = temperature
        return value
    return r.temperature


def apply_overlong_penalty(batch: RolloutBatch, r: RolloutConfig) -> RolloutBatch:
    """rollout.overlong = "penalty": DAPO's soft overlong punishment of each response's length added to
    its reward (a failed reward stays NaN), kept as the reward component "overlong_penalty". Any other
    setting: the batch unchanged."""
    if r.overlong != "penalty":
        return batch
    assert batch.rewards is not None
    penalty = overlong_penalty(batch.response_lengths, r.max_new_tokens, r.overlong_buffer, r.overlong_penalty_factor)
    batch.rewards = batch.rewards + penalty
    batch.reward_components = {**batch.reward_components, OVERLONG_COMPONENT: penalty}
    return batch


def shaping_metrics(batch: RolloutBatch) -> dict[str, float]:
    """rollout/temperature: the mean sampling temperature of the trained rows (the schedule's value at
    the step that launched them); rollout/overlong_penalised_frac (rollout.overlong = "penalty"): the
    fraction of rows whose overlong penalty is below 0."""
    out: dict[str, float] = {}
    if batch.sampling_temperature is not None and batch.size:
        out["rollout/temperature"] = float(batch.sampling_temperature.double().mean())
    penalty = batch.reward_components.get(OVERLONG_COMPONENT)
    if penalty is not None and penalty.numel():
        out["rollout/overlong_penalised_frac"] = float((penalty < 0).float().mean())
    return out
