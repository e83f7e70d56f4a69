"""Chunked log-probs and entropies against a float64 reference, chunk-size invariance, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl_div.metrics import entropy_from_logits, logprobs_and_entropy, masked_mean


def reference_float64(logits: torch.Tensor, ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """log p(id) and H = -sum p log p from the textbook formulas in float64 numpy."""
    x = logits.detach().double().numpy()
    mx = x.max(-1, keepdims=True)
    lse = mx + np.log(np.exp(x - mx).sum(-1, keepdims=True))
    logp = x - lse
    p = np.exp(logp)
    ent = -(p * np.where(p > 0, logp, 0.0)).sum(-1)
    tok = np.take_along_axis(logp, ids.numpy()[..., None], -1)[..., 0]
    return tok, ent


def make(n: int, t: int, v: int, seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=g) * scale
    ids = torch.randint(0, v, (n, t), generator=g)
    return logits, ids


def test_matches_float64_reference() -> None:
    logits, ids = make(3, 5, 50)
    logp, ent = logprobs_and_entropy(logits, ids, chunk_rows=4)
    ref_logp, ref_ent = reference_float64(logits, ids)
    assert logp.dtype == ent.dtype == torch.float32
    assert logp.shape == ent.shape == (3, 5)
    np.testing.assert_allclose(logp.numpy(), ref_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent.numpy(), ref_ent, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy_from_logits(logits, chunk_rows=7).numpy(), ref_ent, rtol=1e-5, atol=1e-5)


def test_closed_forms() -> None:
    v = 37
    uniform = torch.zeros(2, 3, v)
    assert torch.allclose(entropy_from_logits(uniform), torch.full((2, 3), math.log(v)))
    # a two-way tie between tokens 0 and 1 with everything else at -inf: H = log 2, log p = log 1/2
    two = torch.full((1, 1, v), float("-inf"))
    two[..., :2] = 0.0
    logp, ent = logprobs_and_entropy(two, torch.tensor([[1]]))
    assert torch.isfinite(ent).all()
    assert ent.item() == pytest.approx(math.log(2), rel=1e-6)
    assert logp.item() == pytest.approx(math.log(0.5), rel=1e-6)
    # logits (a, 0, ..., 0): Z = e^a + V - 1, H = log Z - a e^a / Z (a full-distribution entropy,
    # not the sampled token's -log p, which would be a - log Z or -log Z)
    for a in (2.0, 5.0, 60.0):
        peaked = torch.zeros(1, 1, v)
        peaked[..., 0] = a
        z = math.exp(a) + v - 1
        want = math.log(z) - a * math.exp(a) / z
        assert entropy_from_logits(peaked).item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_bf16_input() -> None:
    logits, ids = make(2, 6, 64)
    low = logits.to(torch.bfloat16)
    logp, ent = logprobs_and_entropy(low, ids, chunk_rows=5)
    assert logp.dtype == ent.dtype == torch.float32
    ref_logp, ref_ent = reference_float64(low.float(), ids)  # reference on the same bf16 values
    np.testing.assert_allclose(logp.numpy(), ref_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent.numpy(), ref_ent, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    t=st.integers(1, 6),
    v=st.integers(2, 20),
    chunk=st.integers(1, 30),
    seed=st.integers(0, 1000),
)
def test_chunked_equals_unchunked(n: int, t: int, v: int, chunk: int, seed: int) -> None:
    logits, ids = make(n, t, v, seed)
    logp1, ent1 = logprobs_and_entropy(logits, ids, chunk_rows=chunk)
    logp2, ent2 = logprobs_and_entropy(logits, ids, chunk_rows=n * t)
    torch.testing.assert_close(logp1, logp2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ent1, ent2, rtol=1e-6, atol=1e-6)


def test_non_contiguous_input() -> None:
    logits, ids = make(3, 7, 11)
    shifted = logits[:, :-1]  # the usual "logits predict the next token" slice; not contiguous
    assert not shifted.is_contiguous()
    logp, ent = logprobs_and_entropy(shifted, ids[:, 1:], chunk_rows=4)
    ref_logp, ref_ent = reference_float64(shifted, ids[:, 1:])
    np.testing.assert_allclose(logp.numpy(), ref_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent.numpy(), ref_ent, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 8, 1000])
def test_gradient_matches_unchunked(chunk: int) -> None:
    logits, ids = make(2, 4, 9, seed=3)
    w1, w2 = torch.randn(2, 4), torch.randn(2, 4)

    x = logits.double().requires_grad_(True)  # unchunked float64 autograd reference
    lp = torch.log_softmax(x, -1)
    ref_logp = lp.gather(-1, ids[..., None])[..., 0]
    ref_ent = -(lp.exp() * lp).sum(-1)
    ref_loss = (w1.double() * ref_logp).sum() + (w2.double() * ref_ent).sum()
    (ref_grad,) = torch.autograd.grad(ref_loss, x)

    y = logits.clone().requires_grad_(True)
    logp, ent = logprobs_and_entropy(y, ids, chunk_rows=chunk)
    (grad,) = torch.autograd.grad((w1 * logp).sum() + (w2 * ent).sum(), y)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)


def test_bf16_gradient_flows() -> None:
    logits, ids = make(2, 3, 8)
    y = logits.to(torch.bfloat16).requires_grad_(True)
    logp, ent = logprobs_and_entropy(y, ids, chunk_rows=2)
    (logp.sum() + ent.sum()).backward()
    assert y.grad is not None and y.grad.dtype == torch.bfloat16 and torch.isfinite(y.grad.float()).all()


def test_never_upcasts_more_than_a_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    n, t, v, chunk = 3, 5, 16, 4
    logits, ids = make(n, t, v)
    y = logits.to(torch.bfloat16).requires_grad_(True)
    rows_seen: list[int] = []
    real = torch.log_softmax

    def spy(x: torch.Tensor, dim: int) -> torch.Tensor:
        rows_seen.append(x.numel() // x.shape[-1])
        return real(x, dim)

    monkeypatch.setattr(torch, "log_softmax", spy)
    saved: list[tuple[torch.dtype, int]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append((tensor.dtype, tensor.numel()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logp, ent = logprobs_and_entropy(y, ids, chunk_rows=chunk)
    forward_calls = len(rows_seen)
    (logp.sum() + ent.sum()).backward()
    assert forward_calls > 1 and max(rows_seen) <= chunk
    assert len(rows_seen) == 2 * forward_calls  # backward recomputes chunk by chunk
    # nothing float32 and vocabulary-sized is kept for backward: only the bf16 input slices
    assert all(numel < n * t * v for dtype, numel in saved if dtype == torch.float32)


def test_empty_and_bad_shapes() -> None:
    logp, ent = logprobs_and_entropy(torch.zeros(0, 4, 5), torch.zeros(0, 4, dtype=torch.long))
    assert logp.shape == ent.shape == (0, 4)
    assert entropy_from_logits(torch.zeros(2, 0, 5)).shape == (2, 0)
    with pytest.raises(ValueError):
        logprobs_and_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        entropy_from_logits(torch.zeros(3, 4))
    with pytest.raises(ValueError):
        entropy_from_logits(torch.zeros(2, 3, 4), chunk_rows=0)


def test_masked_mean() -> None:
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)  # (1 + 2 + 4) / 3; padding ignored
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))
    none = torch.zeros_like(mask)
    assert math.isnan(masked_mean(x, none).item())
    assert masked_mean(x, none, empty=0.0).item() == 0.0
    rows = masked_mean(x, torch.tensor([[1, 0, 0], [0, 0, 0]]), dim=1)
    assert rows[0].item() == 1.0 and math.isnan(rows[1].item())
    # gradient reaches only the selected positions
    y = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    masked_mean(y, torch.tensor([True, False, True])).backward()
    torch.testing.assert_close(y.grad, torch.tensor([0.5, 0.0, 0.5]))


@pytest.mark.parametrize("chunk", [1, 1024])
@pytest.mark.parametrize("scale", [0.5, 10.0, 1e4])
def test_gradient_with_neg_inf_logits_is_finite_and_right(chunk: int, scale: float) -> None:
    """Issue 8 item 16: a -inf logit (masked vocab entry) gave a NaN gradient for its whole row once
    |dL/dH| > 1. Reference: the same rows without the masked entries, where the gradient must match;
    the masked entries get gradient 0."""
    torch.manual_seed(0)
    finite = torch.randn(2, 3, 5, dtype=torch.float32)
    masked = torch.full((2, 3, 2), -math.inf)
    logits = torch.cat([finite, masked], dim=-1).requires_grad_(True)
    ids = torch.randint(0, 5, (2, 3))
    logp, ent = logprobs_and_entropy(logits, ids, chunk)
    ((ent + logp) * scale).sum().backward()

    ref = finite.clone().requires_grad_(True)
    ref_logp, ref_ent = logprobs_and_entropy(ref, ids, chunk)
    ((ref_ent + ref_logp) * scale).sum().backward()
    assert logits.grad is not None and ref.grad is not None
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad[..., :5], ref.grad, rtol=1e-5, atol=1e-5 * scale)
    assert torch.equal(logits.grad[..., 5:], torch.zeros(2, 3, 2))
    torch.testing.assert_close(ent, ref_ent.detach())

    only = logits.detach().requires_grad_(True)  # entropy_from_logits shares the fixed term
    ent_only = entropy_from_logits(only, chunk)
    (ent_only * -scale).sum().backward()
    assert only.grad is not None and torch.isfinite(only.grad).all()
    torch.testing.assert_close(ent_only, ref_ent.detach())
