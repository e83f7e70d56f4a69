"""The advantage stage of a training step: the configured estimator over the rows that carry its signal
(rl_div.algos.ADVANTAGES through rl_div.learner.fused_advantage), and those rows."""

from __future__ import annotations

import torch

from rl_div.algos import ADVANTAGES, AdvantageInputs
from rl_div.algos.advantage_base import signal_rows, unscored_verdicts
from rl_div.config import Config
from rl_div.data import RolloutBatch
from rl_div.learner.forward import prompt_logprob_mask
from rl_div.learner.fused_advantage import advantage_before_update


def trained_rows(batch: RolloutBatch, cfg: Config) -> torch.Tensor:
    """[B] bool: rows with a finite reward and, for an estimator that reads verdicts (passk, arm,
    w_reinforce / nsr / psr), a finite verdict (rl_div.algos.advantage_base.signal_rows)."""
    assert batch.rewards is not None
    return signal_rows(batch.rewards, batch.correct, ADVANTAGES.needs(cfg.algo.advantage))


def compute_advantages(batch: RolloutBatch, cfg: Config, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured advantage over :func:`trained_rows`; the other rows get advantage 0. step: training
    steps done before this batch (an estimator's schedule reads it, AdvantageInputs.step).

    Returns advantages [B] and the estimator's metrics, with ``adv/unscored_verdicts``: rows left out
    for a NaN verdict alone (a finite reward), 0 for an estimator that does not read verdicts.
    """
    assert batch.rewards is not None
    valid = trained_rows(batch, cfg)
    skipped = {"adv/unscored_verdicts": float(unscored_verdicts(batch.rewards, batch.correct,
                                                                ADVANTAGES.needs(cfg.algo.advantage)))}
    rows = valid.nonzero().squeeze(1)
    if rows.numel() == 0:  # every reward (or verdict) failed: no signal, and the learner skips the step
        return torch.zeros(batch.size), {"adv/zero_signal_frac": 1.0, **skipped}
    sub = batch if bool(valid.all()) else batch.select(rows)
    inputs = AdvantageInputs(  # correct keeps NaN (unscored) for an estimator that does not declare verdicts
        rewards=sub.rewards, group_index=sub.group_index, correct=sub.correct,
        response_logprobs=sub.old_logprobs, behavior_logprobs=sub.behavior_logprobs,
        response_mask=sub.response_mask.float(), prompt_logprobs=sub.prompt_logprobs,
        prompt_mask=prompt_logprob_mask(sub.prompt_mask).float(), step=step,
    )
    out = advantage_before_update(inputs, cfg)  # a row-local one's reward part when the update finishes it
    advantages = torch.zeros(batch.size)
    advantages[rows] = out.advantages.float()
    return advantages, {**out.metrics, **skipped}


def scored_rows(batch: RolloutBatch, cfg: Config) -> RolloutBatch:
    """The rows :func:`trained_rows` keeps: a failed reward (or, for a verdict-reading estimator, a
    failed verdict) is no signal, and its tokens must not dilute the token-mean or feed the KL /
    entropy terms."""
    valid = trained_rows(batch, cfg)
    return batch if bool(valid.all()) else batch.select(valid.nonzero().squeeze(1))
