"""The entropy-shaped advantage (Cheng et al. 2025; rl_div.algos.entropy_advantage): hand-worked values,
the authors' one line as an independent implementation transcribed here, that the weight form equals
the PPO-clip loss on the shaped advantage exactly (the reason it is a token weight), and that it
trains the same through the fused on-policy update as with the separate pi_old forward."""

from __future__ import annotations

import math

import pytest
import torch

from rl_div.algos import LOSSES, TOKEN_WEIGHTS, LossInputs, TokenWeightInputs
from rl_div.config import ConfigError, load_config


def t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def lucidrains_shaped_advantage(advantages: torch.Tensor, entropy: torch.Tensor, scale: float,
                                kappa: float) -> torch.Tensor:
    """Transcribed from lucidrains/x-transformers-rl, x_transformers_rl/x_transformers_rl.py,
    WorldModelActorCritic.compute_actor_loss ("maybe encourage exploration by adding action entropy to
    advantages - Cheng et al."; the version stored in the code index, file id 17459859126):

        entropy_reward = entropy_scale * entropy.detach()
        max_entropy_reward = advantages.abs() / kappa
        advantages = advantages + entropy_reward.clamp(max = max_entropy_reward)
    """
    entropy_reward = scale * entropy.detach()
    max_entropy_reward = advantages.abs() / kappa
    return advantages + entropy_reward.clamp(max=max_entropy_reward)


def inputs_of(adv: torch.Tensor, ent: torch.Tensor, mask: torch.Tensor) -> TokenWeightInputs:
    lp = torch.zeros_like(adv)
    return TokenWeightInputs(advantages=adv, logprobs=lp, old_logprobs=lp, mask=mask, old_entropy=ent * 2,
                             entropy=ent)


def test_hand_worked_values() -> None:
    # alpha 0.4, kappa 2: psi = min(0.4 H, |A| / 2)
    adv = t([[1.0, 1.0, -2.0, 0.0, 1.0]])
    ent = t([[1.0, 5.0, 1.0, 3.0, 9.0]])
    out = TOKEN_WEIGHTS["entropy_advantage"](inputs_of(adv, ent, t([[1, 1, 1, 1, 0]])))
    # shaped: 1 + 0.4 = 1.4; 1 + min(2, 0.5) = 1.5; -2 + min(0.4, 1) = -1.6; 0 stays 0; padding -> weight 1
    assert out.weights[0].tolist() == pytest.approx([1.4, 1.5, 0.8, 1.0, 1.0], abs=1e-12)
    assert out.kl_penalty_coef is None
    # psi over the tokens with A != 0: (0.4 + 0.5 + 0.4) / 3; capped: the second token only
    assert out.metrics["entropy_adv/psi_mean"] == pytest.approx(1.3 / 3)
    assert out.metrics["entropy_adv/capped_frac"] == pytest.approx(1 / 3)
    old = TOKEN_WEIGHTS["entropy_advantage"](inputs_of(adv, ent, t([[1, 1, 1, 1, 0]])), entropy_source="old",
                                             alpha=0.1, kappa=4.0)
    # H_old = 2 H: psi = min(0.2 H, |A| / 4) = 0.2, 0.25, 0.2
    assert old.weights[0].tolist() == pytest.approx([1.2, 1.25, 0.9, 1.0, 1.0], abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("alpha", "kappa"), [(0.4, 2.0), (0.1, 2.0), (1.0, 1.0), (0.05, 10.0)])
def test_matches_the_reference_on_random_inputs(seed: int, alpha: float, kappa: float) -> None:
    g = torch.Generator().manual_seed(seed)
    b, width = 12, 9
    rewards = torch.randint(0, 2, (b,), generator=g).double()
    rewards[0:4] = 1.0  # an all-correct group: A = 0
    rewards[4:8] = 0.0  # an all-wrong group: A = 0
    group = torch.arange(b) // 4
    mean = torch.stack([rewards[group == k].mean() for k in range(3)])[group]
    std = torch.stack([rewards[group == k].std(unbiased=False) for k in range(3)])[group]
    adv_rows = (rewards - mean) / (std + 1e-6)
    lengths = torch.randint(0, width + 1, (b,), generator=g)  # uneven lengths, an empty row possible
    mask = (torch.arange(width)[None, :] < lengths[:, None]).double()
    adv = adv_rows[:, None].expand(b, width).clone()
    ent = 3 * torch.rand(b, width, generator=g, dtype=torch.float64)
    ent[9, 0] = adv[9, 0].abs() / kappa / alpha if alpha else 0.0  # a tie: alpha H == |A| / kappa exactly
    out = TOKEN_WEIGHTS["entropy_advantage"](inputs_of(adv, ent, mask), alpha=alpha, kappa=kappa)
    expected = lucidrains_shaped_advantage(adv, ent, alpha, kappa)
    valid = mask.bool()
    torch.testing.assert_close((adv * out.weights)[valid], expected[valid], rtol=1e-12, atol=1e-12)
    assert bool((out.weights[0:8] == 1.0).all())  # zero-signal groups stay unshaped
    # token-local: any split into micro-batches gives the same weights
    for micro in (1, 5):
        parts = [TOKEN_WEIGHTS["entropy_advantage"](inputs_of(adv[s:s + micro], ent[s:s + micro], mask[s:s + micro]),
                                                    alpha=alpha, kappa=kappa).weights for s in range(0, b, micro)]
        torch.testing.assert_close(torch.cat(parts), out.weights, rtol=0, atol=0)


def test_nonfinite_entropy_leaves_the_token_unshaped() -> None:
    adv = t([[1.0, -1.0, 1.0]])
    ent = t([[math.nan, math.inf, 1.0]])
    out = TOKEN_WEIGHTS["entropy_advantage"](inputs_of(adv, ent, t([[1, 1, 1]])))
    # inf: min(inf, 0.5) = 0.5 is finite and capped; NaN: no shaping
    assert out.weights[0].tolist() == pytest.approx([1.0, 0.5, 1.4])


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_weight_form_is_the_loss_on_the_shaped_advantage(agg: str) -> None:
    """PPO-clip with weight w = A~/A equals PPO-clip with the shaped per-token advantage A~, ratios away
    from 1 on both sides of the clip included (loss and gradient)."""
    g = torch.Generator().manual_seed(0)
    b, width = 6, 5
    adv = torch.tensor([1.5, -0.7, 0.0, 2.0, -2.0, 0.3], dtype=torch.float64)[:, None].expand(b, width)
    ent = 4 * torch.rand(b, width, generator=g, dtype=torch.float64)
    mask = (torch.rand(b, width, generator=g) > 0.2).double()
    old = -torch.rand(b, width, generator=g, dtype=torch.float64)
    start = old + 0.6 * torch.randn(b, width, generator=g, dtype=torch.float64)  # ratios e^{+-0.6}: clipped too
    w = TOKEN_WEIGHTS["entropy_advantage"](inputs_of(adv, ent, mask)).weights
    shaped = lucidrains_shaped_advantage(adv, ent, 0.4, 2.0)
    a = start.clone().requires_grad_(True)
    b_ = start.clone().requires_grad_(True)
    weighted = LOSSES["ppo_clip"](LossInputs(logprobs=a, old_logprobs=old, advantages=adv[:, 0], mask=mask,
                                             token_weights=w), agg=agg)
    direct = LOSSES["ppo_clip"](LossInputs(logprobs=b_, old_logprobs=old, advantages=shaped, mask=mask), agg=agg)
    assert weighted.metrics["loss/clip_frac_low"] + weighted.metrics["loss/clip_frac_high"] > 0
    torch.testing.assert_close(weighted.loss, direct.loss, rtol=1e-12, atol=1e-12)
    weighted.loss.backward()
    direct.loss.backward()
    torch.testing.assert_close(a.grad, b_.grad, rtol=1e-12, atol=1e-12)


def test_refuses_kappa_below_one_and_missing_entropy() -> None:
    adv = t([[1.0]])
    with pytest.raises(ValueError, match="kappa >= 1"):
        TOKEN_WEIGHTS["entropy_advantage"](inputs_of(adv, adv, adv), kappa=0.5)
    inp = inputs_of(adv, adv, adv)
    inp.entropy = None
    with pytest.raises(ValueError, match="TokenWeightInputs.entropy"):
        TOKEN_WEIGHTS["entropy_advantage"](inp)


def test_declaration_preset_and_sharded_scope() -> None:
    needs = TOKEN_WEIGHTS.needs("entropy_advantage")
    assert needs.reweights and needs.entropy and needs.token_local and not needs.kl_term
    cfg = load_config(None, ["algo=entropy_advantage"])
    assert (cfg.algo.advantage, cfg.algo.token_weight) == ("grpo", "entropy_advantage")
    # token-local: a sharded learner may compute it per micro-batch (STEER may not)
    from rl_div.config.checks import check_capabilities

    check_capabilities(load_config(None, ["algo=entropy_advantage", "train.strategy=fsdp2"]))
    with pytest.raises(ConfigError, match="token_weight_scope"):
        check_capabilities(load_config(None, ["algo=steer", "train.strategy=fsdp2"]))
