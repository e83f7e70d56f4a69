"""Policy losses and their aggregation over tokens, registered by name (docs/algorithms.md section 4).

Every loss is ``fn(inputs: LossInputs, **params) -> LossOutput``. Gradient accumulation: the
learner splits a mini-batch into micro-batches and passes the mini-batch's token and sequence
counts (:func:`count_denominators`) as ``token_denominator`` / ``seq_denominator``; then the sum
of the micro-batch losses equals the loss of the whole mini-batch, and so do the gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rl_div.algos.offpolicy import truncated_importance_weights
from rl_div.registry import Registry

# log rho and ref - log p are clamped before exp so a stale or diverged token cannot overflow
# (same bound as verl).
_LOG_RATIO_BOUND = 20.0


@dataclass
class LossInputs:
    logprobs: torch.Tensor  # [B, T] WITH grad
    old_logprobs: torch.Tensor  # [B, T] the learner's pi_old
    advantages: torch.Tensor  # [B] or [B, T]
    mask: torch.Tensor  # [B, T]
    token_weights: torch.Tensor | None = None  # [B, T]
    kl_penalty_coef: torch.Tensor | None = None  # [B, T]
    ref_logprobs: torch.Tensor | None = None  # [B, T] for the k3 KL
    entropy: torch.Tensor | None = None  # [B, T] WITH grad, for the entropy bonus
    behavior_logprobs: torch.Tensor | None = None  # [B, T] the sampler's; None = no off-policy correction


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar with grad
    metrics: dict[str, float | torch.Tensor]  # a 0-dim tensor is read at the end of the update


LossFn = Callable[..., LossOutput]
LOSSES: Registry[LossFn] = Registry("loss")


def count_denominators(mask: torch.Tensor) -> tuple[float, float]:
    """(number of valid tokens, number of sequences with at least one valid token) of a mask.

    Call it on the whole mini-batch's mask and pass the two numbers to every micro-batch's loss.

    Args:
        mask: [B, T].
    """
    valid = mask.bool()
    return float(valid.sum().item()), float(valid.any(dim=1).sum().item())


def _own_or(given: float | None, own: torch.Tensor) -> float | torch.Tensor:
    """The given denominator, else the micro-batch's own count (a 0-dim tensor, at least 1: an empty
    micro-batch sums to 0; avoid 0 / 0). The count stays on the device: no host read per loss."""
    if given is None:
        return own.clamp(min=1)
    if given <= 0:
        raise ValueError(f"a loss denominator must be positive, got {given}")
    return float(given)


def _token_mean(
    x: torch.Tensor, m: torch.Tensor, norm_constant: float | None, tok: float | None, seq: float | None
) -> torch.Tensor:
    """Sum over all valid tokens / number of valid tokens (or tok)."""
    return (x * m).sum() / _own_or(tok, m.sum())


def _seq_mean_token_mean(
    x: torch.Tensor, m: torch.Tensor, norm_constant: float | None, tok: float | None, seq: float | None
) -> torch.Tensor:
    """Mean over sequences (or / seq) of each sequence's token mean; empty rows contribute 0."""
    per_seq = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    return per_seq.sum() / _own_or(seq, (m.sum(dim=1) > 0).sum().to(per_seq.dtype))


def _seq_mean_token_sum_norm(
    x: torch.Tensor, m: torch.Tensor, norm_constant: float | None, tok: float | None, seq: float | None
) -> torch.Tensor:
    """Mean over sequences (or / seq) of token sum / norm_constant (Dr. GRPO).

    Unlike verl's mode of this name, the sum is also divided by the sequence count, as the name
    says; that only rescales the loss by a constant batch size.
    """
    if norm_constant is None or norm_constant <= 0:
        raise ValueError("agg 'seq-mean-token-sum-norm' needs a positive norm_constant (e.g. max length)")
    per_seq = (x * m).sum(dim=1) / norm_constant
    return per_seq.sum() / _own_or(seq, (m.sum(dim=1) > 0).sum().to(per_seq.dtype))


AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    norm_constant: float | None = None,
    token_denominator: float | None = None,
    seq_denominator: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token quantity to a scalar.

    Modes: "token-mean" = sum / #tokens; "seq-mean-token-mean" = mean over sequences of the
    per-sequence token mean; "seq-mean-token-sum-norm" = mean over sequences of token sum /
    norm_constant. ``token_denominator`` / ``seq_denominator``, when given, replace this batch's own
    #tokens / #sequences (sequences with at least one valid token), so micro-batch results add up.

    Args:
        per_token: [B, T]; mask: [B, T].
    Returns:
        scalar (keeps the graph of per_token).
    """
    try:
        fn = AGGREGATIONS[mode]
    except KeyError:
        raise ValueError(f"unknown loss aggregation {mode!r} (valid: {', '.join(AGGREGATIONS)})") from None
    m = mask.to(per_token.dtype)
    # masked_fill, not multiply, so NaN/inf on padding cannot leak into the sum
    x = per_token.masked_fill(~mask.bool(), 0.0)
    return fn(x, m, norm_constant, token_denominator, seq_denominator)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi_theta || pi_ref) per token: exp(d) - d - 1 with d = ref - logp.

    d is clamped to [-20, 20] before exp. Shapes: [B, T], [B, T] -> [B, T], >= 0.
    """
    d = (ref_logprobs - logprobs).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    return torch.exp(d) - d - 1.0


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """0-dim float64 mean of x over valid (0 when none), left on the device: the update loop reads its
    metrics once (rl_div.learner.metric_sums.resolve). The same float64 division as Python floats."""
    n = valid.sum()
    total = x.detach().masked_fill(~valid, 0.0).sum().double()
    return torch.where(n > 0, total / n.clamp(min=1), torch.zeros((), dtype=torch.float64, device=total.device))


def _policy_loss(
    inputs: LossInputs,
    *,
    clip: bool,
    clip_low: float,
    clip_high: float,
    agg: str,
    norm_constant: float | None,
    kl_coef: float,
    entropy_coef: float,
    token_denominator: float | None,
    seq_denominator: float | None,
    tis: str,
    tis_cap: float,
) -> LossOutput:
    """Shared body of "ppo_clip" (clip=True) and "pg" (clip=False)."""
    if kl_coef != 0.0 and inputs.ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs LossInputs.ref_logprobs, which is None")
    if entropy_coef != 0.0 and inputs.entropy is None:
        raise ValueError("entropy_coef != 0 needs LossInputs.entropy, which is None")
    valid = inputs.mask.bool()
    adv = inputs.advantages
    adv = adv[:, None] if adv.dim() == 1 else adv
    adv = adv.to(inputs.logprobs.dtype)
    log_ratio = (inputs.logprobs - inputs.old_logprobs).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    ratio = torch.exp(log_ratio)
    pg = -adv * ratio
    if clip:
        pg = torch.maximum(pg, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    if inputs.token_weights is not None:
        pg = pg * inputs.token_weights
    tis_metrics: dict[str, float] = {}
    if inputs.behavior_logprobs is not None:  # truncated importance sampling of pi_old / pi_behavior
        correction = truncated_importance_weights(inputs.old_logprobs, inputs.behavior_logprobs, inputs.mask,
                                                  cap=tis_cap, level=tis)
        pg = pg * correction.weights.to(pg.dtype)
        tis_metrics = correction.metrics
    if inputs.kl_penalty_coef is not None:
        pg = pg + inputs.kl_penalty_coef * log_ratio.abs()

    def agg_(x: torch.Tensor, own: bool = False) -> torch.Tensor:
        # own=True: this micro-batch's own denominators, for metrics that must not depend on
        # how the mini-batch was split
        return aggregate(
            x,
            inputs.mask,
            agg,
            norm_constant=norm_constant,
            token_denominator=None if own else token_denominator,
            seq_denominator=None if own else seq_denominator,
        )

    loss = agg_(pg)
    metrics = {
        "loss/pg": agg_(pg.detach(), own=True),
        "loss/ratio_mean": _masked_mean(ratio, valid),
        "loss/log_ratio_abs_mean": _masked_mean(log_ratio.abs(), valid),
        **tis_metrics,
    }
    if clip:
        r = ratio.detach()
        metrics["loss/clip_frac_low"] = _masked_mean(((adv < 0) & (r < 1.0 - clip_low)).double(), valid)
        metrics["loss/clip_frac_high"] = _masked_mean(((adv > 0) & (r > 1.0 + clip_high)).double(), valid)
    if inputs.ref_logprobs is not None:
        kl = k3_kl(inputs.logprobs, inputs.ref_logprobs)
        if kl_coef != 0.0:
            loss = loss + kl_coef * agg_(kl)
        metrics["loss/kl"] = agg_(kl.detach(), own=True)
    if inputs.entropy is not None:
        if entropy_coef != 0.0:
            loss = loss - entropy_coef * agg_(inputs.entropy)
        metrics["loss/entropy"] = agg_(inputs.entropy.detach(), own=True)
    if inputs.kl_penalty_coef is not None:
        metrics["loss/kl_cov_frac"] = _masked_mean((inputs.kl_penalty_coef != 0).double(), valid)
    metrics["loss/total"] = loss.detach()
    return LossOutput(loss, metrics)


@LOSSES.register("ppo_clip")
def ppo_clip(
    inputs: LossInputs,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    agg: str = "token-mean",
    norm_constant: float | None = None,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
    token_denominator: float | None = None,
    seq_denominator: float | None = None,
    tis: str = "token",
    tis_cap: float = 2.0,
) -> LossOutput:
    """PPO clipped surrogate with decoupled clip range (clip-higher), aggregated by ``agg``.

    Per token: -min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A) * w + c_kl |log rho|, with
    w = token_weights (1 if None) and c_kl = kl_penalty_coef (0 if None); rho = exp(log rho),
    log rho clamped to [-20, 20]. Then loss = agg(that) + kl_coef * agg(k3 KL to ref)
    - entropy_coef * agg(entropy). Metrics: loss/pg, loss/kl, loss/entropy are this micro-batch's
    own aggregates (independent of the denominators); loss/clip_frac_low is the fraction of valid
    tokens with A < 0 and rho < 1 - clip_low, loss/clip_frac_high with A > 0 and rho > 1 + clip_high;
    loss/total is the returned loss.

    Off-policy correction (rl_div/algos/offpolicy.py): when ``behavior_logprobs`` are given, the
    per-token surrogate is multiplied by the truncated importance weight
    min(pi_old / pi_behavior, tis_cap), per token (``tis="token"``, default) or one weight per
    response from the summed log-ratio (``tis="sequence"``); ``tis="none"`` turns it off. Equal to
    the uncorrected loss when pi_behavior == pi_old. Metrics offpolicy/is_weight_mean, _max
    (untruncated) and offpolicy/is_capped_frac.

    Shapes: logprobs, old_logprobs, mask [B, T]; advantages [B] or [B, T] -> scalar.
    """
    return _policy_loss(
        inputs,
        clip=True,
        clip_low=clip_low,
        clip_high=clip_high,
        agg=agg,
        norm_constant=norm_constant,
        kl_coef=kl_coef,
        entropy_coef=entropy_coef,
        token_denominator=token_denominator,
        seq_denominator=seq_denominator,
        tis=tis,
        tis_cap=tis_cap,
    )


@LOSSES.register("pg")
def pg(
    inputs: LossInputs,
    *,
    agg: str = "token-mean",
    norm_constant: float | None = None,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
    token_denominator: float | None = None,
    seq_denominator: float | None = None,
    tis: str = "token",
    tis_cap: float = 2.0,
) -> LossOutput:
    """Plain importance-weighted policy gradient: per token -rho A * w (no clipping).

    Choice: -rho A rather than -log p A. Its gradient is -rho A grad log p, which equals REINFORCE
    on-policy (rho = 1) and stays unbiased off-policy, and its value is comparable with ppo_clip.
    Everything else (weights, kl_penalty_coef, KL, entropy, aggregation) is as in :func:`ppo_clip`.

    Shapes: logprobs, old_logprobs, mask [B, T]; advantages [B] or [B, T] -> scalar.
    """
    return _policy_loss(
        inputs,
        clip=False,
        clip_low=0.0,
        clip_high=0.0,
        agg=agg,
        norm_constant=norm_constant,
        kl_coef=kl_coef,
        entropy_coef=entropy_coef,
        token_denominator=token_denominator,
        seq_denominator=seq_denominator,
        tis=tis,
        tis_cap=tis_cap,
    )
