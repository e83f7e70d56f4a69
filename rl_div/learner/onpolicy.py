"""When the learner's separate no-grad forward is redundant (issue 15).

Every step needs pi_old's log-probs (the ratio's denominator), its entropies (STEER's H_old and the
logged policy/entropy) and, with a KL term, the reference's log-probs. With one PPO epoch and one
optimizer step on the whole batch, pi_old IS the policy being updated (also when rollouts lag: pi_old
is the learner's current weights, the sampler's policy is another thing), so the update's own forward
provides all of them: old log-probs = its log-probs detached (ratio exactly 1), H_old = its entropies
detached, and the reference forward runs inside the update's micro-batch loop
(:meth:`rl_div.learner.single.Learner.update_on_policy`). The separate forward (``policy_stats``) still runs
when any of these hold:

- ``train.ppo_epochs > 1`` or more than one mini-batch: later optimizer steps need the weights from
  before the first one;
- the advantage reads the policy's log-probs before the update in a way the update's forward cannot
  serve: the sampler's own log-probs are another engine's numbers (equal to 1e-7 at best, and a
  different policy when rollouts lag), no sampler returns prompt log-probs, and with micro-batches a
  batch-wide function of the log-probs is known only after the last micro-batch's forward. An
  estimator whose advantage is row-local apart from reward-only parts (ARM: A_i and the reweighted
  groups come from rewards, c(o_i|q) and c(q) from row i's own response and prompt log-probs)
  registers a split in rl_div.algos.row_local.ROW_LOCAL, declares ``AdvantageNeeds(row_local=True)``
  and is finished inside the update's micro-batch loop from each micro-batch's own forward, which
  then also computes the prompt log-probs (rl_div.learner.fused_advantage); it fuses. Otherwise a
  plugin estimator declares ``AdvantageNeeds(response_logprobs=False)`` at registration to skip the
  separate forward; one that declares nothing keeps it (``ADVANTAGES.needs``);
- a sharded learner (train.strategy=fsdp2), or token weights over the whole mini-batch
  (train.token_weight_scope=mini): both read pi_old of every row (and its advantage) before the
  first micro-batch;
- the model has dropout: ``policy_stats`` runs in eval mode and the update in train mode, so the
  update's forward would not be pi_old;
- a step where some rewards failed: the update trains on the scored rows only, while the step
  metrics (entropy, log-prob gap) cover every row, as they always have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rl_div.algos import ADVANTAGES
from rl_div.learner.plan import token_weights_over_mini_batch

if TYPE_CHECKING:
    from rl_div.config import Config


def needs_prompt_logprobs(cfg: Config) -> bool:
    """Whether the advantage reads prompt log-probs (its declaration's ``prompt_logprobs``: ARM's):
    only then does the learner compute them."""
    return bool(ADVANTAGES.needs(cfg.algo.advantage).prompt_logprobs)


def needs_policy_logprobs(cfg: Config) -> bool:
    """Whether the advantage reads the policy's log-probs (response_logprobs or prompt_logprobs of
    AdvantageInputs) before the update, as its declaration says; one that declares nothing is
    assumed to read them (rl_div.algos.advantage_base.undeclared_advantage_needs)."""
    return bool(ADVANTAGES.needs(cfg.algo.advantage).policy_logprobs)


def active_dropout(model: torch.nn.Module) -> list[str]:
    """The dropout settings above 0 of a model: dropout modules by name and ``*dropout*`` /
    ``*pdrop*`` fields of an HF config (some attention code drops out without a module)."""
    found = [name for name, m in model.named_modules()
             if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]
    config = getattr(model, "config", None)
    fields = config.to_dict() if hasattr(config, "to_dict") else {}
    found += [f"config.{k}" for k, v in fields.items()
              if ("dropout" in k or "pdrop" in k) and isinstance(v, int | float) and not isinstance(v, bool) and v > 0]
    return found


def fuses_policy_forward(cfg: Config, dropout: list[str]) -> tuple[bool, str]:
    """(whether the update's forward stands in for the separate pi_old forward, why).

    cfg: the run's config; dropout: :func:`active_dropout` of the learner's model.
    """
    t, advantage = cfg.train, ADVANTAGES.needs(cfg.algo.advantage)
    batch = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    if t.ppo_epochs != 1:
        return False, f"train.ppo_epochs={t.ppo_epochs}: later epochs need pi_old from before the first step"
    if t.mini_batch_size and t.mini_batch_size < batch:
        return False, f"train.mini_batch_size={t.mini_batch_size} < {batch} rows: several optimizer steps per batch"
    if advantage.policy_logprobs and not advantage.row_local:
        return False, f"advantage {cfg.algo.advantage!r} reads the policy's log-probs before the update"
    if t.strategy != "single":
        return False, f"train.strategy={t.strategy}: the sharded update is planned from pi_old computed beforehand"
    if token_weights_over_mini_batch(cfg):
        return False, "train.token_weight_scope=mini: token weights over the mini-batch read pi_old before the update"
    if dropout:
        return False, f"the model has dropout ({', '.join(dropout[:3])}): train-mode forwards are not pi_old"
    if advantage.row_local:
        return True, (f"one PPO epoch, one optimizer step per batch: the update's forward is pi_old, and "
                      f"advantage {cfg.algo.advantage!r} is finished from it row by row")
    return True, "one PPO epoch, one optimizer step per batch: the update's forward is pi_old"


def separate_forward(fused: bool, rewards: torch.Tensor | None, trained: torch.Tensor | None = None) -> bool:
    """Whether this step runs the separate forward: always unless fused, and also when a reward
    failed (rewards [B] has a NaN) or a row is left out of the update for another reason (trained [B]
    bool has a False: a NaN verdict for an estimator that reads verdicts), since the metrics cover rows
    the update does not see."""
    if not fused or rewards is None or not bool(torch.isfinite(rewards).all()):
        return True
    return trained is not None and not bool(trained.all())
