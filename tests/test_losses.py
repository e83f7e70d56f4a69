"""Policy losses against written-out numbers and an explicit per-token Python loop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl_div.algos import LOSSES, LossInputs, aggregate, k3_kl
from rl_div.registry import UnknownNameError

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ratios written out; old log p = 0 so log p = log ratio. Row 0 has A = +1, row 1 A = -1,
# row 1's last token is padding.
RATIOS = [[1.5, 0.5, 1.0], [0.7, 1.1, 1.3]]
MASK = [[1, 1, 1], [1, 1, 0]]


def _hand_inputs(**extra: torch.Tensor) -> LossInputs:
    lp = t([[math.log(r) for r in row] for row in RATIOS]).requires_grad_(True)
    return LossInputs(lp, torch.zeros(2, 3, dtype=torch.float64), t([1.0, -1.0]), t(MASK), **extra)


def test_ppo_clip_hand_worked_all_modes() -> None:
    # row 0 (A=+1): r 1.5 -> -min(1.5, 1.28) = -1.28 (clipped high); r 0.5 -> -0.5; r 1.0 -> -1.0
    # row 1 (A=-1): r 0.7 -> -min(-0.7, -0.8) = 0.8 (clipped low); r 1.1 -> 1.1; (padding)
    inp = _hand_inputs()
    out = LOSSES["ppo_clip"](inp)
    assert out.loss.item() == pytest.approx((-1.28 - 0.5 - 1.0 + 0.8 + 1.1) / 5)  # -0.176
    assert out.loss.item() == pytest.approx(-0.176)
    assert out.metrics["loss/clip_frac_high"] == pytest.approx(1 / 5)
    assert out.metrics["loss/clip_frac_low"] == pytest.approx(1 / 5)
    out = LOSSES["ppo_clip"](_hand_inputs(), agg="seq-mean-token-mean")
    assert out.loss.item() == pytest.approx(((-2.78 / 3) + (1.9 / 2)) / 2)
    out = LOSSES["ppo_clip"](_hand_inputs(), agg="seq-mean-token-sum-norm", norm_constant=4)
    assert out.loss.item() == pytest.approx(((-2.78 / 4) + (1.9 / 4)) / 2)  # -0.11
    # gradient (token-mean): clipped tokens 0; otherwise d(-A r)/d log p = -A r, / 5 tokens
    inp = _hand_inputs()
    LOSSES["ppo_clip"](inp).loss.backward()
    assert inp.logprobs.grad is not None
    assert inp.logprobs.grad.tolist()[0] == pytest.approx([0.0, -0.1, -0.2])
    assert inp.logprobs.grad.tolist()[1] == pytest.approx([0.0, 0.22, 0.0])


def test_pg_is_unclipped() -> None:
    out = LOSSES["pg"](_hand_inputs())
    assert out.loss.item() == pytest.approx((-1.5 - 0.5 - 1.0 + 0.7 + 1.1) / 5)
    assert "loss/clip_frac_low" not in out.metrics


def test_k3_kl_closed_form() -> None:
    lp = t([[0.0, 0.0, math.log(2)]])
    ref = t([[0.0, math.log(2), 0.0]])
    # d = ref - logp: 0 -> 0; ln 2 -> 2 - ln 2 - 1; -ln 2 -> 0.5 + ln 2 - 1
    expected = [0.0, 1 - math.log(2), math.log(2) - 0.5]
    assert k3_kl(lp, ref)[0].tolist() == pytest.approx(expected)


def test_kl_and_entropy_terms_by_hand() -> None:
    ref = torch.zeros(2, 3, dtype=torch.float64)  # d = -log r per token
    ent = t([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]]).requires_grad_(True)
    out = LOSSES["ppo_clip"](_hand_inputs(ref_logprobs=ref, entropy=ent), kl_coef=0.1, entropy_coef=0.01)
    kl = [1 / r + math.log(r) - 1 for r in [1.5, 0.5, 1.0, 0.7, 1.1]]  # d = -log r: exp(d) - d - 1
    expected = -0.176 + 0.1 * sum(kl) / 5 - 0.01 * (1 + 2 + 3 + 4 + 5) / 5
    assert out.loss.item() == pytest.approx(expected)
    assert out.metrics["loss/kl"] == pytest.approx(sum(kl) / 5)
    assert out.metrics["loss/entropy"] == pytest.approx(3.0)
    out.loss.backward()
    assert ent.grad is not None
    assert ent.grad.flatten().tolist() == pytest.approx([-0.002] * 5 + [0.0])
    with pytest.raises(ValueError, match="ref_logprobs"):
        LOSSES["ppo_clip"](_hand_inputs(), kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy"):
        LOSSES["ppo_clip"](_hand_inputs(), entropy_coef=0.1)


def _loop_loss(
    lp: list[list[float]],
    old: list[list[float]],
    adv: list[float],
    mask: list[list[int]],
    w: list[list[float]],
    klc: list[list[float]],
    ref: list[list[float]],
    ent: list[list[float]],
    mode: str,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
    norm: float = 1.0,
) -> float:
    """Slow reference: per-token terms summed per sequence, then the aggregation by hand."""
    seq_sums, seq_lens = [], []
    for b in range(len(lp)):
        total, n = 0.0, 0
        for j in range(len(lp[b])):
            if not mask[b][j]:
                continue
            r = math.exp(lp[b][j] - old[b][j])
            clipped = min(max(r, 1 - clip_low), 1 + clip_high)
            term = max(-adv[b] * r, -adv[b] * clipped) * w[b][j] + klc[b][j] * abs(lp[b][j] - old[b][j])
            d = ref[b][j] - lp[b][j]
            term += kl_coef * (math.exp(d) - d - 1) - entropy_coef * ent[b][j]
            total += term
            n += 1
        seq_sums.append(total)
        seq_lens.append(n)
    nonempty = [i for i, n in enumerate(seq_lens) if n > 0]
    if mode == "token-mean":
        return sum(seq_sums) / sum(seq_lens)
    if mode == "seq-mean-token-mean":
        return sum(seq_sums[i] / seq_lens[i] for i in nonempty) / len(nonempty)
    return sum(seq_sums[i] / norm for i in nonempty) / len(nonempty)


def _random_case(seed: int, b: int = 5, tt: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, tt + 1, (b,), generator=g)
    mask = (torch.arange(tt)[None, :] < lengths[:, None]).double()
    old = -torch.rand(b, tt, generator=g, dtype=torch.float64) * 2
    return {
        "lp": old + (torch.rand(b, tt, generator=g, dtype=torch.float64) - 0.5) * 0.8,
        "old": old,
        "adv": torch.randn(b, generator=g, dtype=torch.float64),
        "mask": mask,
        "w": torch.rand(b, tt, generator=g, dtype=torch.float64) + 0.5,
        "klc": (torch.rand(b, tt, generator=g) < 0.3).double(),
        "ref": old + torch.randn(b, tt, generator=g, dtype=torch.float64) * 0.3,
        "ent": torch.rand(b, tt, generator=g, dtype=torch.float64) * 3,
    }


def _inputs(c: dict[str, torch.Tensor], rows: slice = slice(None)) -> LossInputs:
    return LossInputs(
        logprobs=c["lp"][rows],
        old_logprobs=c["old"][rows],
        advantages=c["adv"][rows],
        mask=c["mask"][rows],
        token_weights=c["w"][rows],
        kl_penalty_coef=c["klc"][rows],
        ref_logprobs=c["ref"][rows],
        entropy=c["ent"][rows],
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**20), mode=st.sampled_from(MODES))
def test_ppo_clip_matches_loop_reference(seed: int, mode: str) -> None:
    c = _random_case(seed)
    params = {"kl_coef": 0.05, "entropy_coef": 0.01, "agg": mode, "norm_constant": 8.0}
    out = LOSSES["ppo_clip"](_inputs(c), **params)
    lists = {k: v.tolist() for k, v in c.items()}
    ref = _loop_loss(
        lists["lp"], lists["old"], lists["adv"], lists["mask"], lists["w"], lists["klc"], lists["ref"],
        lists["ent"], mode, kl_coef=0.05, entropy_coef=0.01, norm=8.0,
    )  # fmt: skip
    assert out.loss.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # [B, T] advantages give the same loss as [B]
    per_token = _inputs(c)
    per_token.advantages = c["adv"][:, None].expand_as(c["lp"]).clone()
    assert LOSSES["ppo_clip"](per_token, **params).loss.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_micro_batch_denominators_sum_to_full_batch(mode: str) -> None:
    c = _random_case(7, b=6)
    mask = c["mask"]
    n_tokens, n_seqs = float(mask.sum()), float((mask.sum(1) > 0).sum())  # counted here, not by the code
    params = {"kl_coef": 0.05, "entropy_coef": 0.01, "agg": mode, "norm_constant": 8.0}

    full_lp = c["lp"].clone().requires_grad_(True)
    full = LOSSES["ppo_clip"](_inputs({**c, "lp": full_lp}), **params)
    full.loss.backward()

    micro_lp = c["lp"].clone().requires_grad_(True)
    total = 0.0
    for rows in (slice(0, 2), slice(2, 6)):
        part = LOSSES["ppo_clip"](
            _inputs({**c, "lp": micro_lp}, rows), token_denominator=n_tokens, seq_denominator=n_seqs, **params
        )
        part.loss.backward()  # gradients accumulate on micro_lp
        total += part.loss.item()
    assert total == pytest.approx(full.loss.item(), rel=1e-12)
    assert full_lp.grad is not None and micro_lp.grad is not None
    assert torch.allclose(micro_lp.grad, full_lp.grad, rtol=1e-12, atol=1e-15)
    # without the denominators the micro-batch losses do not add up (the test can fail)
    naive = sum(LOSSES["ppo_clip"](_inputs(c, r), **params).loss.item() for r in (slice(0, 2), slice(2, 6)))
    assert naive != pytest.approx(full.loss.item(), rel=1e-6)


def test_aggregate_by_hand_and_errors() -> None:
    x = t([[1.0, 2.0, 3.0], [4.0, float("nan"), 0.0], [9.0, 9.0, 9.0]])
    mask = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # NaN on padding must not leak; row 2 empty
    assert aggregate(x, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(x, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(x, mask, "seq-mean-token-sum-norm", norm_constant=3).item() == pytest.approx((2 + 4 / 3) / 2)
    assert aggregate(x, mask, "token-mean", token_denominator=20).item() == pytest.approx(0.5)
    assert aggregate(x, mask, "seq-mean-token-mean", seq_denominator=6).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="norm_constant"):
        aggregate(x, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(x, mask, "mean")
    with pytest.raises(ValueError, match="positive"):
        aggregate(x, mask, "token-mean", token_denominator=0)


def test_loss_registry_names() -> None:
    assert {"ppo_clip", "pg"} <= set(LOSSES.names())
    with pytest.raises(UnknownNameError, match="did you mean 'ppo_clip'"):
        LOSSES["ppo_clp"]
