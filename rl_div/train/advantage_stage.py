"""The advantage stage of a training step: the configured estimator over the rows whose reward was
computed (rl_div.algos.ADVANTAGES through rl_div.learner.fused_advantage), and those rows."""

from __future__ import annotations

import torch

from rl_div.algos import AdvantageInputs
from rl_div.config import Config
from rl_div.data import RolloutBatch
from rl_div.learner.forward import prompt_logprob_mask
from rl_div.learner.fused_advantage import advantage_before_update


def compute_advantages(batch: RolloutBatch, cfg: Config, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured advantage over rows with a finite reward; unscored rows get advantage 0. step: training
    steps done before this batch (an estimator's schedule reads it, AdvantageInputs.step).

    Returns advantages [B] and the estimator's metrics.
    """
    assert batch.rewards is not None
    valid = torch.isfinite(batch.rewards)
    rows = valid.nonzero().squeeze(1)
    if rows.numel() == 0:  # every reward failed: no signal, and the learner skips the step
        return torch.zeros(batch.size), {"adv/zero_signal_frac": 1.0}
    sub = batch if bool(valid.all()) else batch.select(rows)
    correct = sub.correct if sub.correct is not None and bool(torch.isfinite(sub.correct).all()) else None
    inputs = AdvantageInputs(
        rewards=sub.rewards, group_index=sub.group_index, correct=correct,
        response_logprobs=sub.old_logprobs, behavior_logprobs=sub.behavior_logprobs,
        response_mask=sub.response_mask.float(), prompt_logprobs=sub.prompt_logprobs,
        prompt_mask=prompt_logprob_mask(sub.prompt_mask).float(), step=step,
    )
    out = advantage_before_update(inputs, cfg)  # a row-local one's reward part when the update finishes it
    advantages = torch.zeros(batch.size)
    advantages[rows] = out.advantages.float()
    return advantages, out.metrics


def scored_rows(batch: RolloutBatch) -> RolloutBatch:
    """The rows whose reward was computed: a failed reward is no signal, and its tokens must not
    dilute the token-mean or feed the KL / entropy terms."""
    assert batch.rewards is not None
    valid = torch.isfinite(batch.rewards)
    return batch if bool(valid.all()) else batch.select(valid.nonzero().squeeze(1))
