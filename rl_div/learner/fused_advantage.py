"""A row-local advantage finished inside the update's forward, so ARM needs no separate pi_old
forward (issue 15, item 2; the splits are in rl_div.algos.row_local).

When the update's forward is pi_old (rl_div.learner.onpolicy: one PPO epoch, one optimizer step), an estimator
with a row-local split (``A~_i = base_i + [shaped_i] s_i``, s_i from row i's log-probs only) runs in
two places:

- before the update, :func:`advantage_before_update` gives its reward part (``base``) where the
  whole estimator would need log-probs that nobody has computed yet;
- in the update, :class:`RowShaper` takes each micro-batch's detached log-probs (and prompt log-probs,
  which that forward then also computes), gives the micro-batch's final advantages before its loss,
  keeps the per-row values, and after the loop returns the final advantages [B] and the estimator's
  metrics over the whole batch, exactly as the estimator computes them from a separate forward.

Every consumer of the advantages after the update starts must see the final A~: the loss and
token weights per micro-batch do (they run after the shaping of their rows); the zero-signal check
runs before the first micro-batch on "may be non-zero" (base != 0 or shaped) and again on the final
A~ after the last one (the learner skips the optimizer step then, as it would have from the start);
token weights over the whole mini-batch read every row's advantage first and keep the separate
forward (rl_div.learner.onpolicy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rl_div.algos import ADVANTAGES, AdvantageInputs, AdvantageOutput
from rl_div.algos.row_local import ROW_LOCAL, RowLocalSplit, apply_shaping, full_params
from rl_div.data import RolloutBatch

if TYPE_CHECKING:
    from rl_div.config import Config


class ShapingLeftNoSignal(Exception):
    """Raised by the learner when the finished advantages are all 0 (and no other loss term acts):
    the step is skipped as a zero-signal step, as it would have been with the separate forward."""


def row_local_split(cfg: Config) -> RowLocalSplit | None:
    """The configured estimator's row-local split (rl_div.algos.row_local.ROW_LOCAL) when it declares
    ``row_local``, else None."""
    name = cfg.algo.advantage
    return ROW_LOCAL[name] if ADVANTAGES.needs(name).row_local else None


def advantage_before_update(inputs: AdvantageInputs, cfg: Config) -> AdvantageOutput:
    """The configured estimator on whole-batch inputs; when the policy's log-probs are not there yet
    (the update's forward will be pi_old) and the estimator has a row-local split, its reward part:
    base advantages [B] and the metrics known from rewards alone. The learner then returns the final
    advantages and every metric from its update (:class:`RowShaper`)."""
    split = row_local_split(cfg)
    if split is not None and inputs.response_logprobs is None:
        part = split.reward_part(inputs, **full_params(cfg.algo.advantage, cfg.algo.advantage_params))
        return AdvantageOutput(part.base, dict(part.metrics))
    return ADVANTAGES[cfg.algo.advantage](inputs, **cfg.algo.advantage_params)


class RowShaper:
    """Finishes a row-local advantage over the micro-batches of one update, in row order.

    Built from the batch's rewards / correct / group_index (every reward finite: rows whose reward
    failed bring the separate forward back, rl_div.learner.onpolicy.separate_forward). :meth:`shape` is
    called once per micro-batch, consecutive rows from the first (one mini-batch in batch order, as
    the fused update runs); :meth:`finish` after the last.
    """

    def __init__(self, cfg: Config, batch: RolloutBatch, split: RowLocalSplit) -> None:
        assert batch.rewards is not None and bool(torch.isfinite(batch.rewards).all())
        correct = batch.correct
        correct = correct if correct is not None and bool(torch.isfinite(correct).all()) else None
        self.split = split
        self.needs_prompt_logprobs = bool(ADVANTAGES.needs(cfg.algo.advantage).prompt_logprobs)
        self.params = full_params(cfg.algo.advantage, cfg.algo.advantage_params)
        self.part = split.reward_part(AdvantageInputs(rewards=batch.rewards, group_index=batch.group_index,
                                                      correct=correct), **self.params)
        self.values: dict[str, list[torch.Tensor]] = {}
        self.rows_done = 0
        self.finished: AdvantageOutput | None = None  # finish()'s result, shared by the skip check and the caller

    @staticmethod
    def for_batch(cfg: Config, batch: RolloutBatch) -> RowShaper | None:
        """A shaper when the configured estimator has a row-local split, else None."""
        split = row_local_split(cfg)
        return None if split is None else RowShaper(cfg, batch, split)

    def may_be_nonzero(self) -> torch.Tensor:
        """[B] bool: rows whose final advantage can be non-zero (known before any forward)."""
        return (self.part.base != 0) | self.part.shaped

    def shape(self, micro: RolloutBatch, logprobs: torch.Tensor, prompt_logprobs: torch.Tensor | None,
              prompt_mask: torch.Tensor) -> torch.Tensor:
        """The final advantages [b] (on CPU) of the next b rows, from pi_old's numbers for them:
        logprobs [b, T] of the response tokens, prompt_logprobs [b, P] (None unless needed) and
        prompt_mask [b, P] (:func:`rl_div.learner.forward.prompt_logprob_mask`), without gradient."""
        rows = slice(self.rows_done, self.rows_done + micro.size)
        self.rows_done += micro.size
        base, shaped = self.part.base[rows], self.part.shaped[rows]
        assert base.numel() == micro.size, "RowShaper.shape: more rows than the batch has"
        values = self.split.row_values(
            logprobs.detach().cpu(), micro.response_mask.float(),
            None if prompt_logprobs is None else prompt_logprobs.detach().cpu(), prompt_mask.float().cpu(),
            dtype=base.dtype, **self.params)
        for name, value in values.items():
            self.values.setdefault(name, []).append(value)
        return apply_shaping(base, shaped, values["shaping"])[1]

    def finish(self) -> AdvantageOutput:
        """The final advantages [B] and the estimator's metrics, once every row was shaped (computed
        once: no row can be shaped after the last)."""
        if self.finished is None:
            assert self.rows_done == self.part.base.numel(), "RowShaper.finish: rows left unshaped"
            values = {name: torch.cat(parts) for name, parts in self.values.items()}
            shaping, adv = apply_shaping(self.part.base, self.part.shaped, values["shaping"])
            self.finished = AdvantageOutput(adv.float(),
                                            self.split.metrics(self.part, values, shaping, adv, **self.params))
        return self.finished
