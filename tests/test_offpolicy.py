"""Truncated importance sampling of pi_old / pi_behavior (rl_div/algos/offpolicy.py) and its use in the losses.

Every expected number is computed by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from rl_div.algos.losses import LOSSES, LossInputs
from rl_div.algos.offpolicy import truncated_importance_weights


def lg(*ps: float) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in ps]], dtype=torch.float64)


# pi_old / pi_behavior per token: 0.5/0.25 = 2.0, 0.3/0.3 = 1.0, 0.9/0.6 = 1.5; the 4th token is padding.
OLD = torch.cat([lg(0.5, 0.3, 0.9), torch.tensor([[0.0]], dtype=torch.float64)], dim=1)
BEHAVIOR = torch.cat([lg(0.25, 0.3, 0.6), torch.tensor([[-50.0]], dtype=torch.float64)], dim=1)
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)


def test_token_level_weights_and_cap_by_hand() -> None:
    out = truncated_importance_weights(OLD, BEHAVIOR, MASK, cap=1.8, level="token")
    assert out.weights.tolist()[0] == pytest.approx([1.8, 1.0, 1.5, 1.0])  # 2.0 capped at 1.8; padding 1
    assert out.metrics["offpolicy/is_weight_mean"] == pytest.approx((2.0 + 1.0 + 1.5) / 3)
    assert out.metrics["offpolicy/is_weight_max"] == pytest.approx(2.0)  # untruncated; padding's e^50 not counted
    assert out.metrics["offpolicy/is_capped_frac"] == pytest.approx(1 / 3)
    default = truncated_importance_weights(OLD, BEHAVIOR, MASK)  # cap 2: nothing above it
    assert default.weights.tolist()[0] == pytest.approx([2.0, 1.0, 1.5, 1.0])
    assert default.metrics["offpolicy/is_capped_frac"] == 0.0


def test_sequence_level_weight_is_the_capped_product() -> None:
    # second row: 0.4/0.8 = 0.5 and 0.6/0.6 = 1 -> product 0.5 (below the cap)
    old = torch.cat([OLD, torch.cat([lg(0.4, 0.6), torch.zeros(1, 2, dtype=torch.float64)], dim=1)])
    behavior = torch.cat([BEHAVIOR, torch.cat([lg(0.8, 0.6), torch.zeros(1, 2, dtype=torch.float64)], dim=1)])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    out = truncated_importance_weights(old, behavior, mask, cap=2.0, level="sequence")
    # row 0: 2.0 * 1.0 * 1.5 = 3.0 -> capped to 2 on every real token
    assert out.weights.tolist() == [pytest.approx([2.0, 2.0, 2.0, 1.0]), pytest.approx([0.5, 0.5, 1.0, 1.0])]
    assert out.metrics["offpolicy/is_weight_mean"] == pytest.approx((3.0 + 0.5) / 2)
    assert out.metrics["offpolicy/is_weight_max"] == pytest.approx(3.0)
    assert out.metrics["offpolicy/is_capped_frac"] == pytest.approx(0.5)


def test_bad_level_or_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tis level"):
        truncated_importance_weights(OLD, BEHAVIOR, MASK, level="tokens")
    with pytest.raises(ValueError, match="tis_cap must be positive"):
        truncated_importance_weights(OLD, BEHAVIOR, MASK, cap=0.0)


@pytest.mark.parametrize("loss", ["ppo_clip", "pg"])
def test_loss_and_gradient_carry_the_weights(loss: str) -> None:
    # logprobs == old: rho = 1, no clipping; per token -A * w with A = 1, token-mean over 3 tokens.
    logp = OLD.clone().requires_grad_(True)
    inputs = LossInputs(logprobs=logp, old_logprobs=OLD, advantages=torch.tensor([1.0], dtype=torch.float64),
                        mask=MASK, behavior_logprobs=BEHAVIOR)
    out = LOSSES[loss](inputs, tis_cap=1.8)
    assert out.loss.item() == pytest.approx(-(1.8 + 1.0 + 1.5) / 3)
    out.loss.backward()
    assert logp.grad is not None
    # d/d logp of -exp(logp - old) * A * w / 3 at logp = old is -w / 3 (the weight is a constant)
    assert logp.grad.tolist()[0] == pytest.approx([-1.8 / 3, -1.0 / 3, -1.5 / 3, 0.0])
    assert out.metrics["offpolicy/is_capped_frac"] == pytest.approx(1 / 3)
    off = LOSSES[loss](LossInputs(logprobs=OLD, old_logprobs=OLD, advantages=torch.tensor([1.0], dtype=torch.float64),
                                  mask=MASK, behavior_logprobs=BEHAVIOR), tis="none")
    assert float(off.loss) == pytest.approx(-1.0)


@pytest.mark.parametrize("tis", ["token", "sequence"])
def test_equal_to_the_on_policy_loss_when_behavior_is_pi_old(tis: str) -> None:
    g = torch.Generator().manual_seed(3)
    b, t = 5, 7
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 2
    mask = (torch.arange(t)[None, :] < torch.tensor([7, 3, 1, 5, 6])[:, None]).double()

    def run(behavior: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        logp = (old + (torch.rand(b, t, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 0.5)
                ).requires_grad_(True)
        adv = torch.randn(b, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        out = LOSSES["ppo_clip"](LossInputs(logprobs=logp, old_logprobs=old, advantages=adv, mask=mask,
                                            behavior_logprobs=behavior), tis=tis, kl_coef=0.0)
        out.loss.backward()
        assert logp.grad is not None
        return float(out.loss), logp.grad

    on_policy, on_grad = run(None)
    corrected, corrected_grad = run(old.clone())
    assert corrected == on_policy
    assert torch.equal(corrected_grad, on_grad)


def test_max_off_policy_steps_is_validated() -> None:
    from rl_div.config import ConfigError, load_config

    assert load_config(None, []).rollout.max_off_policy_steps == 0  # synchronous by default
    assert load_config(None, ["rollout.max_off_policy_steps=1"]).rollout.max_off_policy_steps == 1
    with pytest.raises(ConfigError, match="max_off_policy_steps"):
        load_config(None, ["rollout.max_off_policy_steps=3"])
    with pytest.raises(ConfigError, match="cuda_ipc"):
        load_config(None, ["rollout.backend=vllm", "rollout.weight_sync=cuda_ipc", "rollout.max_off_policy_steps=1"])
