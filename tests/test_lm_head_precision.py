"""The chunked LM head in bf16 (rl_div.metrics.lm_head, "Precision"): bf16 operands, float32
accumulation and float32 softmax statistics, against a float64 reference; the float32 path keeps its
arithmetic; forward and the recomputing backward see the same logits.

Tolerances. With bf16-exact hidden states (the decoder's bf16 output), the only rounding before the
float32 arithmetic is the weight's, |dW| <= 2^-9 |W| elementwise, so each tempered logit moves by at most
eps_row = 2^-9 * max_v sum_d |h_d W_vd| / T. Then |d logp| <= |dz_id| + |d lse| <= 2 eps_row, and to first
order |dH| <= eps_row * sum_v p_v |log q_v + H| (dH/dz = -p (log q + H)); the test allows 1.5x that for
the second-order terms and float32's own error. Gradients: each of the backward's products rounds up to
three operands to bf16 (grad_z, W or h), a relative 3 * 2^-9 = 0.6% at worst per product; the test allows
2^-6 = 1.6% relative (Frobenius) error. The float32 head is held to 1e-5 (test_lm_head.py) on the same data.
"""

from __future__ import annotations

import pytest
import torch

from rl_div.metrics.lm_head import head_compute_dtype, head_logprobs_and_entropy

BF16_UNIT = 2.0 ** -9  # half an ulp of 1.0 in bfloat16: the largest relative error of a rounding
N, D, V, TEMPERATURE, CHUNK = 96, 64, 3000, 0.8, 40
G_LOGP, G_ENT = 0.5, 0.2  # the loss weights of the two outputs in every backward here


def data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """hidden [N, D] (bf16-exact values), float32 weight [V, D] scaled to logits of |z| up to ~20 (a
    sharpened head), bias [V], ids [N]."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g).bfloat16().float()
    weight = torch.randn(V, D, generator=g) * D ** -0.5 * 3
    bias = torch.randn(V, generator=g) * 0.5
    ids = torch.randint(0, V, (N,), generator=g)
    return hidden, weight, bias, ids


def float64_reference(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ids: torch.Tensor,
                      ) -> tuple[torch.Tensor, ...]:
    """(logp, entropy, d hidden, d weight, d bias, log q) in float64 from the full [N, V] logits, by autograd."""
    h, w, b = (t.double().requires_grad_(True) for t in (hidden, weight, bias))
    logq = torch.log_softmax((h @ w.T + b) / TEMPERATURE, dim=-1)
    logp, ent = logq.gather(1, ids[:, None]).squeeze(1), -(logq.exp() * logq).sum(-1)
    (G_LOGP * logp.sum() + G_ENT * ent.sum()).backward()
    return logp.detach(), ent.detach(), h.grad, w.grad, b.grad, logq.detach()


def chunked(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ids: torch.Tensor,
            autocast: bool) -> tuple[torch.Tensor, ...]:
    """(logp, entropy, d hidden, d weight, d bias) of the chunked head on float32 parameters, under bf16
    autocast (as the learner's forwards run with model.dtype bfloat16) or not."""
    h, w, b = (t.clone().requires_grad_(True) for t in (hidden, weight, bias))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logp, ent = head_logprobs_and_entropy(h, w, ids, b, temperature=TEMPERATURE, chunk_rows=CHUNK)
    (G_LOGP * logp.sum() + G_ENT * ent.sum()).backward()
    return logp.detach(), ent.detach(), h.grad, w.grad, b.grad


def test_the_compute_dtype_follows_autocast_else_the_weight() -> None:
    assert head_compute_dtype("cpu", torch.float32) == torch.float32
    assert head_compute_dtype("cpu", torch.bfloat16) == torch.bfloat16  # FSDP2's bf16 unsharded parameters
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head_compute_dtype("cpu", torch.float32) == torch.bfloat16


def test_bf16_head_error_against_float64_is_within_the_rounding_bound() -> None:
    hidden, weight, bias, ids = data()
    logp, ent, g_h, g_w, g_b = chunked(hidden, weight, bias, ids, autocast=True)
    r_logp, r_ent, r_h, r_w, r_b, logq = float64_reference(hidden, weight, bias, ids)
    assert logp.dtype == ent.dtype == torch.float32 and g_w.dtype == torch.float32
    eps_row = BF16_UNIT * (hidden.double().abs() @ weight.double().abs().T).max(dim=1).values / TEMPERATURE
    assert ((logp.double() - r_logp).abs() <= 2 * eps_row).all()
    first_order = eps_row * (logq.exp() * (logq + r_ent[:, None]).abs()).sum(-1)
    assert ((ent.double() - r_ent).abs() <= 1.5 * first_order).all()
    for got, ref in ((g_h, r_h), (g_w, r_w), (g_b, r_b)):
        assert float((got.double() - ref).norm() / ref.norm()) < 2.0 ** -6
    # the bf16 head is really running: float32 is ~1e-6 here, bf16 well above it
    assert float((logp.double() - r_logp).abs().max()) > 1e-4


def test_float32_head_is_not_affected_by_the_bf16_path() -> None:
    """No autocast, float32 weight: the float32 arithmetic (error ~1e-6, far below bf16's)."""
    hidden, weight, bias, ids = data()
    logp, ent, g_h, _, _ = chunked(hidden, weight, bias, ids, autocast=False)
    r_logp, r_ent, r_h, *_ = float64_reference(hidden, weight, bias, ids)
    assert float((logp.double() - r_logp).abs().max()) < 1e-5
    assert float((ent.double() - r_ent).abs().max()) < 1e-5
    assert float((g_h.double() - r_h).norm() / r_h.norm()) < 1e-5


def test_float32_head_bitwise_equals_the_plain_float32_formulas() -> None:
    """The float32 path runs the formulas of the module docstring in float32, op for op: forward values
    bit-identical to F.linear -> logsumexp -> gather / -(p log q).sum on each chunk."""
    hidden, weight, bias, ids = data()
    logp, ent = head_logprobs_and_entropy(hidden, weight, ids, bias, temperature=TEMPERATURE, chunk_rows=CHUNK)
    for s in range(0, N, CHUNK):
        z = torch.nn.functional.linear(hidden[s : s + CHUNK], weight, bias) / TEMPERATURE
        lse = torch.logsumexp(z, dim=-1)
        logq = z - lse[:, None]
        assert torch.equal(logp[s : s + CHUNK], z.gather(1, ids[s : s + CHUNK, None]).squeeze(1) - lse)
        assert torch.equal(ent[s : s + CHUNK], -(logq.exp() * logq).sum(-1))


@pytest.mark.parametrize("autocast", [False, True])
def test_recomputed_backward_sees_the_forward_logits(autocast: bool) -> None:
    """The bias gradient sums to 0 over the vocabulary: per row sum_v d/dz = g_logp (1 - sum p) - g_ent
    (sum p log q + H sum p) = 0 exactly when p = exp(z - lse) with the backward's recomputed z and the
    forward's saved lse. Logits recomputed in another precision than the forward's would leave
    |1 - sum p| ~ |d lse| per row, a sum of 5e-2 here (checked)."""
    hidden, weight, bias, ids = data()
    *_, g_b = chunked(hidden, weight, bias, ids, autocast=autocast)
    assert abs(float(g_b.double().sum())) < 1e-4
