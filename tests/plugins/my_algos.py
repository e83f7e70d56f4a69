"""A user-style plugin registering an advantage and a loss by import (tests use "plugins.my_algos").

The learner runs inside a Ray actor, so using these names in a run shows that registered plugin
names work in every process.
"""

from __future__ import annotations

import torch

from rl_div.algos import ADVANTAGES, LOSSES
from rl_div.algos.advantage_base import AdvantageInputs, AdvantageOutput
from rl_div.algos.losses import LossInputs, LossOutput


@ADVANTAGES.register("test_raw_reward")
def raw_reward_advantage(inputs: AdvantageInputs, *, offset: float = 0.0) -> AdvantageOutput:
    """A = r - offset, no grouping at all."""
    return AdvantageOutput(inputs.rewards - offset, {"test/raw_reward_calls": 1.0})


@LOSSES.register("test_nan_loss")
def nan_loss(inputs: LossInputs, **_: float) -> LossOutput:
    """A loss that is NaN but still has a gradient path: the learner must skip the step."""
    loss = (inputs.logprobs * inputs.mask).sum() * torch.tensor(float("nan"))
    return LossOutput(loss, {})
