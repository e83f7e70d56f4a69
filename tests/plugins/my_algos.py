"""A user-style plugin registering advantages, token weights and a loss by import (tests use
"plugins.my_algos").

The learner runs inside a Ray actor, so using these names in a run shows that registered plugin
names work in every process. Some declare what they read at registration (``needs=``), some declare
nothing (the registry's default applies), one uses the older function-attribute style.
"""

from __future__ import annotations

import torch

from rl_div.algos import ADVANTAGES, LOSSES, TOKEN_WEIGHTS, AdvantageNeeds, TokenWeightNeeds
from rl_div.algos.advantage_base import AdvantageInputs, AdvantageOutput
from rl_div.algos.losses import LossInputs, LossOutput
from rl_div.algos.token_weights import TokenWeightInputs, TokenWeightOutput


@ADVANTAGES.register("test_raw_reward")
def raw_reward_advantage(inputs: AdvantageInputs, *, offset: float = 0.0) -> AdvantageOutput:
    """A = r - offset, no grouping at all."""
    return AdvantageOutput(inputs.rewards - offset, {"test/raw_reward_calls": 1.0})


@LOSSES.register("test_nan_loss")
def nan_loss(inputs: LossInputs, **_: float) -> LossOutput:
    """A loss that is NaN but still has a gradient path: the learner must skip the step."""
    loss = (inputs.logprobs * inputs.mask).sum() * torch.tensor(float("nan"))
    return LossOutput(loss, {})


@ADVANTAGES.register("test_reward_only", needs=AdvantageNeeds(response_logprobs=False))
def reward_only_advantage(inputs: AdvantageInputs) -> AdvantageOutput:
    """A = 2 r - 1 from rewards alone, and it says so: the separate pi_old forward is not needed."""
    return AdvantageOutput(2.0 * inputs.rewards - 1.0, {})


@ADVANTAGES.register("test_prompt_reader", needs=AdvantageNeeds(response_logprobs=False, prompt_logprobs=True))
def prompt_reader_advantage(inputs: AdvantageInputs) -> AdvantageOutput:
    """A = r + mean prompt log-prob per row: reads the prompt log-probs, and declares it."""
    if inputs.prompt_logprobs is None or inputs.prompt_mask is None:
        raise ValueError("test_prompt_reader needs prompt_logprobs")
    mask = inputs.prompt_mask
    mean = (inputs.prompt_logprobs * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return AdvantageOutput(inputs.rewards + mean, {})


@ADVANTAGES.register("test_legacy_reward_only")
def legacy_reward_only_advantage(inputs: AdvantageInputs) -> AdvantageOutput:
    """As test_reward_only, declared the older way: a function attribute set after definition."""
    return AdvantageOutput(inputs.rewards - inputs.rewards.mean(), {})


legacy_reward_only_advantage.needs_response_logprobs = False  # type: ignore[attr-defined]


@TOKEN_WEIGHTS.register("test_kl_everywhere", needs=TokenWeightNeeds(entropy=False, kl_term=True))
def kl_everywhere(inputs: TokenWeightInputs, *, coef: float = 0.1) -> TokenWeightOutput:
    """Weights 1 and a KL coefficient on every valid token: a loss term that acts without advantage."""
    return TokenWeightOutput(torch.ones_like(inputs.logprobs), coef * inputs.mask, {})


@TOKEN_WEIGHTS.register("test_half_weights")
def half_weights(inputs: TokenWeightInputs) -> TokenWeightOutput:
    """Every token weighs 0.5; declares nothing, so it gets TokenWeightNeeds()'s defaults."""
    return TokenWeightOutput(0.5 * torch.ones_like(inputs.logprobs), None, {})
