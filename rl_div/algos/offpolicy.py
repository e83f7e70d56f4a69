"""Off-policy correction: truncated importance sampling of pi_old / pi_behavior (TIS).

Definition in docs/algorithms.md section 4 (Yao et al. 2025, "Your efficient RL framework secretly brings you
off-policy RL training"; verl's rollout correction). Responses are sampled by the rollout engine,
pi_behavior (``behavior_logprobs``: weights of an older version when rollouts run ahead, and a
different kernel even when they do not); the PPO surrogate is built around the learner's pi_old
(``old_logprobs``). The gradient the surrogate assumes is an expectation under pi_old, so each
token's surrogate term is re-weighted by

    token level:     w_t = min(exp(log pi_old(y_t) - log pi_behavior(y_t)), C)
    sequence level:  w_t = min(exp(sum_s mask_s (log pi_old(y_s) - log pi_behavior(y_s))), C)
                     (the same weight on every token of the response)

with C = ``tis_cap`` (default 2). w is a constant (no gradient flows through it). The loss per
token becomes w_t * l_t(theta) where l_t is the clipped (or plain) surrogate. When pi_behavior ==
pi_old every w_t = 1 and the loss equals the on-policy loss exactly. Log-ratios are clamped to
[-20, 20] before exp, as in the losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TIS_LEVELS = ("token", "sequence", "none")
_LOG_RATIO_BOUND = 20.0


@dataclass
class ImportanceWeights:
    weights: torch.Tensor  # [B, T] truncated weights (1 on padding), no grad
    metrics: dict[str, float]


def truncated_importance_weights(old_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, mask: torch.Tensor,
                                 *, cap: float = 2.0, level: str = "token") -> ImportanceWeights:
    """w = min(pi_old / pi_behavior, cap) per token ("token") or per response ("sequence").

    Metrics (over valid tokens for "token", over non-empty responses for "sequence"):
    offpolicy/is_weight_mean and offpolicy/is_weight_max of the untruncated weight,
    offpolicy/is_capped_frac = fraction whose weight exceeded the cap.

    Shapes: old_logprobs, behavior_logprobs, mask [B, T] -> weights [B, T].
    """
    if level not in TIS_LEVELS:
        raise ValueError(f"unknown tis level {level!r} (valid: {', '.join(TIS_LEVELS)})")
    if not cap > 0:
        raise ValueError(f"tis_cap must be positive, got {cap}")
    valid = mask.bool()
    if level == "none":
        return ImportanceWeights(torch.ones_like(old_logprobs), {})
    log_ratio = (old_logprobs.detach() - behavior_logprobs.to(old_logprobs.dtype)).masked_fill(~valid, 0.0)
    if level == "token":
        raw = torch.exp(log_ratio.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))
        values = raw[valid]
    else:
        raw_seq = torch.exp(log_ratio.sum(dim=1).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))  # [B]
        raw = raw_seq[:, None].expand_as(log_ratio)
        values = raw_seq[valid.any(dim=1)]
    n = values.numel()
    metrics = {
        "offpolicy/is_weight_mean": float(values.mean()) if n else 1.0,
        "offpolicy/is_weight_max": float(values.max()) if n else 1.0,
        "offpolicy/is_capped_frac": float((values > cap).double().mean()) if n else 0.0,
    }
    weights = raw.clamp(max=cap).masked_fill(~valid, 1.0)
    return ImportanceWeights(weights, metrics)
