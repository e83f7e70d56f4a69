"""Per-token loss weights and entropy interventions, registered by name (docs/algorithms.md section 3).

Every function is ``fn(inputs: TokenWeightInputs, **params) -> TokenWeightOutput``. The weights
multiply the per-token policy loss; ``kl_penalty_coef`` (KL-Cov) is a per-token coefficient on
|log rho| that the loss adds. Everything here is computed without gradient, over the valid tokens
of the micro-batch it is given. Values on padding are irrelevant (the loss masks them); the
re-weighting methods put a neutral 1 there and the masking methods a 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rl_div.registry import Registry

_ROUND_SLACK = 1e-9  # keeps fraction * n from rounding up on float noise (0.14 * 50 -> 7, not 8)


@dataclass
class TokenWeightInputs:
    advantages: torch.Tensor  # [B, T] per-response advantage broadcast over tokens
    logprobs: torch.Tensor  # [B, T] current policy, detached
    old_logprobs: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T]
    old_entropy: torch.Tensor | None = None  # [B, T] full-distribution entropy under pi_old
    entropy: torch.Tensor | None = None  # [B, T] under the current policy, detached
    generator: torch.Generator | None = None  # for clip_cov's random choice


@dataclass
class TokenWeightOutput:
    weights: torch.Tensor  # [B, T] multiplies the per-token policy loss
    kl_penalty_coef: torch.Tensor | None  # [B, T] coefficient on |log rho| (kl_cov) or None
    metrics: dict[str, float]


@dataclass(frozen=True)
class TokenWeightNeeds:
    """What a token weight reads and adds, declared at registration
    (``@TOKEN_WEIGHTS.register(name, needs=TokenWeightNeeds(...))``) and read with
    ``TOKEN_WEIGHTS.needs(name)``. One registered without a declaration gets the defaults.

    reweights: its weights are not all ones, and depend on the tokens they are computed over (so a
    sharded learner computes them over the whole mini-batch, and TRL multiplies them into its
    advantages); only "none" says False. entropy: reads ``entropy`` / ``old_entropy`` (TRL computes
    entropies only then). kl_term: returns a ``kl_penalty_coef``, a loss term that acts without an
    advantage (a zero-advantage mini-batch is then not skipped; TRL's loss has no place for it).
    token_local: each token's weight reads only that token's own inputs (no max, mean or top-k over
    tokens), so the weights are the same over any set of tokens: a sharded learner may compute them per
    micro-batch, and token_weight_scope=mini needs no separate pi_old forward for them.
    """

    reweights: bool = True
    entropy: bool = True
    kl_term: bool = False
    token_local: bool = False


TokenWeightFn = Callable[..., TokenWeightOutput]
TOKEN_WEIGHTS: Registry[TokenWeightFn] = Registry("token weight", needs_type=TokenWeightNeeds)


@TOKEN_WEIGHTS.register("none", needs=TokenWeightNeeds(reweights=False, entropy=False))
def none(inputs: TokenWeightInputs) -> TokenWeightOutput:
    """No re-weighting: all ones. [B, T] -> [B, T]."""
    return TokenWeightOutput(torch.ones_like(inputs.logprobs), None, {})


def steer_omega(
    advantages: torch.Tensor,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    old_entropy: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """STEER's predicted entropy change per token.

    Omega = (A / p_old) * p (1 - p) * (log p + H_old), with p = exp(logprobs) clamped to
    [1e-8, 1 - 1e-8] (log p is taken of the clamped p) and p_old = exp(old_logprobs) clamped below
    at 1e-8 (old log-prob < ln 1e-8 = -18.4), as the official implementation does. Unclamped, a p_old
    that underflows (old log-prob < about -104 in float32) made Omega infinite, zeroed below, so the
    most surprising tokens got the neutral weight 1, the opposite of the method's intent; clamped,
    they get a large |Omega| and a small weight. Remaining non-finite values and padding are set to 0.

    Args:
        advantages, logprobs, old_logprobs, old_entropy, mask: [B, T].
    Returns:
        [B, T] Omega, finite.
    """
    omega = _omega_raw(advantages, logprobs, old_logprobs, old_entropy)
    keep = torch.isfinite(omega) & mask.bool()
    return torch.where(keep, omega, torch.zeros_like(omega))


def _omega_raw(
    advantages: torch.Tensor, logprobs: torch.Tensor, old_logprobs: torch.Tensor, old_entropy: torch.Tensor
) -> torch.Tensor:
    """Omega before non-finite values are zeroed. All [B, T]."""
    p = logprobs.exp().clamp(1e-8, 1.0 - 1e-8)
    p_old = old_logprobs.exp().clamp(min=1e-8)
    return (advantages / p_old) * p * (1.0 - p) * (p.log() + old_entropy)


def steer_lambda(
    omega: torch.Tensor,
    mask: torch.Tensor,
    *,
    variant: str = "exp",
    lambda_min: float = 0.8,
    lambda_max: float = 1.2,
    omega_floor: float = 0.02,
) -> torch.Tensor:
    """Map |Omega| to a loss weight lambda; larger predicted entropy change -> smaller weight.

    With M = max(max |Omega| over valid tokens, omega_floor):
      "exp":    k = -ln(lambda_min) / M, lambda = clip(exp(-k |Omega|), lambda_min, 1)
                (lambda_max is unused; the token with |Omega| = M gets exactly lambda_min).
      "linear": lambda = lambda_max - (lambda_max - lambda_min) |Omega| / M, i.e. |Omega| mapped
                onto [lambda_min, lambda_max] in reverse order. Choice (docs/algorithms.md section 6): the
                floor applies here too (the paper gives it for "exp"), so a batch of near-zero Omega is not
                stretched across the whole range and M is never 0.
    Padding gets 1.

    Args:
        omega: [B, T] finite; mask: [B, T].
    Returns:
        [B, T] lambda.
    """
    valid = mask.bool()
    mag = omega.abs()
    peak = mag[valid].max().item() if valid.any() else 0.0
    m = max(peak, omega_floor)
    if variant == "exp":
        k = -math.log(lambda_min) / m
        lam = torch.exp(-k * mag).clamp(lambda_min, 1.0)
    elif variant == "linear":
        lam = lambda_max - (lambda_max - lambda_min) * mag / m
    else:
        raise ValueError(f"steer variant must be 'exp' or 'linear', got {variant!r}")
    return torch.where(valid, lam, torch.ones_like(lam))


def _masked_stats(x: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    v = x[valid]
    if v.numel() == 0:
        return {"mean": 0.0, "min": 0.0, "max": 0.0}
    return {"mean": float(v.mean().item()), "min": float(v.min().item()), "max": float(v.max().item())}


@TOKEN_WEIGHTS.register("steer", needs=TokenWeightNeeds(entropy=True))
def steer(
    inputs: TokenWeightInputs,
    *,
    variant: str = "exp",
    lambda_min: float = 0.8,
    lambda_max: float = 1.2,
    omega_floor: float = 0.02,
) -> TokenWeightOutput:
    """STEER token weights: :func:`steer_omega` then :func:`steer_lambda`. Needs old_entropy.

    Shapes: all inputs [B, T] -> weights [B, T].
    """
    if inputs.old_entropy is None:
        raise ValueError("token weight 'steer' needs TokenWeightInputs.old_entropy, which is None")
    valid = inputs.mask.bool()
    raw = _omega_raw(inputs.advantages, inputs.logprobs, inputs.old_logprobs, inputs.old_entropy)
    nonfinite = int((~torch.isfinite(raw) & valid).sum().item())
    omega = torch.where(torch.isfinite(raw) & valid, raw, torch.zeros_like(raw))
    lam = steer_lambda(
        omega,
        inputs.mask,
        variant=variant,
        lambda_min=lambda_min,
        lambda_max=lambda_max,
        omega_floor=omega_floor,
    )
    lam_stats = _masked_stats(lam, valid)
    n_valid = max(int(valid.sum().item()), 1)
    metrics = {
        "steer/lambda_mean": lam_stats["mean"],
        "steer/lambda_min": lam_stats["min"],
        "steer/lambda_max": lam_stats["max"],
        "steer/omega_abs_max": _masked_stats(omega.abs(), valid)["max"],
        "steer/omega_abs_mean": _masked_stats(omega.abs(), valid)["mean"],
        "steer/nonfinite_frac": nonfinite / n_valid,
    }
    return TokenWeightOutput(lam, None, metrics)


def token_covariance(advantages: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cov_{i,t} = (A - mean A)(log p - mean log p), means over the valid tokens; 0 on padding.

    Args:
        advantages, logprobs, mask: [B, T].
    Returns:
        [B, T].
    """
    valid = mask.bool()
    n = valid.sum().clamp(min=1)
    a_mean = advantages.masked_fill(~valid, 0.0).sum() / n
    lp_mean = logprobs.masked_fill(~valid, 0.0).sum() / n
    cov = (advantages - a_mean) * (logprobs - lp_mean)
    return cov.masked_fill(~valid, 0.0)


def _count_floor(fraction: float, n: int) -> int:
    """max(1, floor(fraction * n)) tokens, as verl's Clip-Cov/KL-Cov; 0 when n = 0."""
    return max(1, int(fraction * n + _ROUND_SLACK)) if n > 0 else 0


@TOKEN_WEIGHTS.register("clip_cov", needs=TokenWeightNeeds(entropy=False))
def clip_cov(
    inputs: TokenWeightInputs,
    *,
    fraction: float = 2e-4,
    cov_low: float = 1.0,
    cov_high: float = 5.0,
) -> TokenWeightOutput:
    """Clip-Cov (Cui et al. 2025): weight 0 on a random subset of tokens with Cov in (low, high).

    The subset has min(max(1, floor(fraction * n_valid)), n_candidates) tokens, drawn uniformly
    without replacement with ``inputs.generator`` (as verl, the count is a fraction of all valid
    tokens, not of the candidates). Unlike verl, tokens that PPO already clips are not excluded
    (the clip range belongs to the loss, not here). Others, padding included, get weight 1.

    Shapes: advantages, logprobs, mask [B, T] -> weights [B, T].
    """
    valid = inputs.mask.bool()
    cov = token_covariance(inputs.advantages, inputs.logprobs, inputs.mask)
    candidates = torch.nonzero(((cov > cov_low) & (cov < cov_high) & valid).flatten()).flatten()
    n_valid = int(valid.sum().item())
    n_pick = min(_count_floor(fraction, n_valid), int(candidates.numel()))
    perm = torch.randperm(int(candidates.numel()), generator=inputs.generator)
    chosen = candidates[perm[:n_pick].to(candidates.device)]
    weights = torch.ones_like(inputs.logprobs).flatten()
    weights[chosen] = 0.0
    metrics = {
        "clip_cov/frac": n_pick / max(n_valid, 1),
        "clip_cov/candidate_frac": int(candidates.numel()) / max(n_valid, 1),
    }
    return TokenWeightOutput(weights.view_as(inputs.logprobs), None, metrics)


@TOKEN_WEIGHTS.register("kl_cov", needs=TokenWeightNeeds(entropy=False, kl_term=True))
def kl_cov(inputs: TokenWeightInputs, *, fraction: float = 0.002, beta: float = 1.0) -> TokenWeightOutput:
    """KL-Cov (Cui et al. 2025): the top max(1, floor(fraction * n_valid)) valid tokens by Cov get a
    penalty coefficient beta on |log rho| (added to their loss); weights stay 1. Ties at the
    cut-off are broken by torch.topk.

    Shapes: advantages, logprobs, mask [B, T] -> weights, kl_penalty_coef [B, T].
    """
    valid = inputs.mask.bool()
    cov = token_covariance(inputs.advantages, inputs.logprobs, inputs.mask)
    n_valid = int(valid.sum().item())
    n_pick = _count_floor(fraction, n_valid)
    ranked = cov.masked_fill(~valid, -math.inf).flatten()
    chosen = torch.topk(ranked, n_pick).indices
    coef = torch.zeros_like(inputs.logprobs).flatten()
    coef[chosen] = beta
    metrics = {
        "kl_cov/frac": n_pick / max(n_valid, 1),
        "kl_cov/cov_threshold": float(ranked[chosen].min().item()) if n_pick else 0.0,
    }
    return TokenWeightOutput(torch.ones_like(inputs.logprobs), coef.view_as(inputs.logprobs), metrics)


def entropy_of(inputs: TokenWeightInputs, entropy_source: str, who: str) -> torch.Tensor:
    """[B, T] the entropy a token weight reads: "current" (inputs.entropy) or "old" (inputs.old_entropy);
    raises for another source or a missing tensor, naming the token weight ``who``."""
    if entropy_source not in ("current", "old"):
        raise ValueError(f"entropy_source must be 'current' or 'old', got {entropy_source!r}")
    field = "entropy" if entropy_source == "current" else "old_entropy"
    ent = getattr(inputs, field)
    if ent is None:
        raise ValueError(f"token weight {who!r} needs TokenWeightInputs.{field}, which is None")
    return ent


@TOKEN_WEIGHTS.register("high_entropy_mask", needs=TokenWeightNeeds(entropy=True))
def high_entropy_mask(
    inputs: TokenWeightInputs, *, top_fraction: float = 0.2, entropy_source: str = "current"
) -> TokenWeightOutput:
    """80/20 rule: keep (weight 1) only valid tokens whose entropy is in the top fraction.

    n = max(1, ceil(top_fraction * n_valid)); every valid token whose entropy is >= the n-th
    largest is kept, so ties at the cut-off are all kept (deterministic). Everything else, padding
    included, gets 0. ``entropy_source``: "current" reads inputs.entropy, "old" inputs.old_entropy.

    Shapes: entropy, mask [B, T] -> weights [B, T].
    """
    ent = entropy_of(inputs, entropy_source, "high_entropy_mask")
    valid = inputs.mask.bool()
    n_valid = int(valid.sum().item())
    if n_valid == 0:
        empty = {"high_entropy_mask/kept_frac": 0.0}
        return TokenWeightOutput(torch.zeros_like(inputs.logprobs), None, empty)
    n_keep = max(1, math.ceil(top_fraction * n_valid - _ROUND_SLACK))
    threshold = torch.topk(ent[valid], n_keep).values.min()
    keep = valid & (ent >= threshold)
    metrics = {
        "high_entropy_mask/kept_frac": float(keep.sum().item()) / n_valid,
        "high_entropy_mask/threshold": float(threshold.item()),
    }
    return TokenWeightOutput(keep.to(inputs.logprobs.dtype), None, metrics)
