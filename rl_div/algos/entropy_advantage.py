"""Entropy-shaped advantage (Cheng et al. 2025, "Reasoning with Exploration: An Entropy Perspective"),
as a token weight (docs/algorithms.md section 3).

The paper adds a per-token, gradient-free term to the advantage:

    psi_t = min(alpha * H_t.detach(), |A_t| / kappa),      A~_t = A_t + psi_t

H_t is the entropy of the full next-token distribution at token t. The clip |A| / kappa keeps the
term from dominating (with kappa > 1 it never flips the advantage's sign), and psi = 0 where A = 0,
so a zero-signal token stays zero-signal.

Where it fits rl_div: a token weight. Since A~ = A * w with w = 1 + psi / A (A != 0; w = 1 where
A = 0) and w >= 1 - 1/kappa > 0 for kappa >= 1, the PPO-clip term with weight w,
max(-A rho, -A clip(rho)) * w, is exactly the term with the shaped advantage A~ (a positive factor
moves through min/max and the sign of A~ is the sign of A, so the same side of the clip is taken).
So the shaped advantage runs through the existing loss, the fused on-policy path and TRL (which
multiplies token weights into its (B, T) advantages: A * w = A~) with no new loss.
"""

from __future__ import annotations

import torch

from rl_div.algos.token_weights import (
    TOKEN_WEIGHTS,
    TokenWeightInputs,
    TokenWeightNeeds,
    TokenWeightOutput,
    entropy_of,
)


def entropy_shaping(advantages: torch.Tensor, entropy: torch.Tensor, *, alpha: float,
                    kappa: float) -> torch.Tensor:
    """psi = min(alpha * H, |A| / kappa), per token, without gradient.

    Args:
        advantages: [B, T] A broadcast over tokens; entropy: [B, T] H >= 0 (detached here).
    Returns:
        [B, T] psi, in the advantages' dtype.
    """
    h = entropy.detach().to(advantages.dtype)
    return torch.minimum(alpha * h, advantages.abs() / kappa)


@TOKEN_WEIGHTS.register("entropy_advantage", needs=TokenWeightNeeds(entropy=True, token_local=True))
def entropy_advantage(inputs: TokenWeightInputs, *, alpha: float = 0.4, kappa: float = 2.0,
                      entropy_source: str = "current") -> TokenWeightOutput:
    """Cheng et al. 2025's entropy-based advantage A~ = A + min(alpha H, |A| / kappa), as the weight
    w = A~ / A on the per-token loss (1 where A = 0, and on padding).

    Defaults: kappa = 2 (the paper's, for PPO and GRPO); alpha = 0.4, the paper's GRPO setting as we
    read it (lucidrains/x-transformers-rl, which implements the same line, defaults to 0.1 and notes
    "0.1 for PPO tested in paper"). OPEN, rl_div's choices: whose entropy (``entropy_source``:
    "current", the policy's own detached entropy, as the paper computes it in the update's forward;
    "old" reads H under pi_old: identical with one PPO epoch); a non-finite entropy gives psi = 0
    (no shaping) rather than a NaN loss. kappa < 1 is refused: the term could then flip the sign of a
    negative advantage, and the weight form would no longer equal the shaped advantage.

    Shapes: advantages, entropy (or old_entropy), mask [B, T] -> weights [B, T].
    """
    if kappa < 1.0:
        raise ValueError(f"entropy_advantage needs kappa >= 1 (the shaping must not flip the advantage's sign), "
                         f"got {kappa}")
    if alpha < 0.0:
        raise ValueError(f"entropy_advantage needs alpha >= 0, got {alpha}")
    ent = entropy_of(inputs, entropy_source, "entropy_advantage")
    adv = inputs.advantages
    valid = inputs.mask.bool()
    psi = entropy_shaping(adv, ent, alpha=alpha, kappa=kappa)
    psi = torch.where(torch.isfinite(psi) & valid, psi, torch.zeros_like(psi))
    nonzero = adv != 0
    weights = torch.where(nonzero, (adv + psi) / torch.where(nonzero, adv, torch.ones_like(adv)),
                          torch.ones_like(adv))
    n_valid = max(int(valid.sum().item()), 1)
    acting = valid & nonzero
    n_acting = max(int(acting.sum().item()), 1)
    capped = acting & (alpha * ent.detach().to(adv.dtype) >= adv.abs() / kappa)
    metrics = {
        "entropy_adv/psi_mean": float(psi[acting].sum().item()) / n_acting,
        "entropy_adv/capped_frac": float(capped.sum().item()) / n_acting,
        "entropy_adv/weight_mean": float(weights[valid].sum().item()) / n_valid,
    }
    return TokenWeightOutput(weights.to(inputs.logprobs.dtype), None, metrics)
