"""Token log-probs and full-distribution entropies straight from final hidden states.

The naive path lets the model build logits for every position and vocabulary entry, [B, L, V],
before anything is chunked: at V = 151,936 that tensor (and its gradient) is the learner's peak
memory. Here the LM head is applied chunk by chunk to the selected positions only, [N, D] hidden
states at a time ``chunk_rows`` rows, and only per-row numbers are kept: log p of the sampled token,
the entropy H = -sum_v p_v log p_v, and the log-partition. Backward recomputes each chunk's logits
from the saved hidden states and head weights (one extra [chunk, D] x [D, V] matmul per chunk), so
no [N, V] tensor exists in forward or backward.

Per chunk, with z = float32(h W^T + b) / temperature (the cast comes first, then the division, so a
bf16 model is tempered in float32), lse = logsumexp(z), log q = z - lse, p = exp(log q):

    logp = z[id] - lse                     d logp / dz = onehot(id) - p
    H    = -sum p log q                    dH / dz     = -p (log q + H)

and d/d(logits) = d/dz / temperature. Entries with a -inf logit (a masked vocabulary entry) have
p = 0 and contribute 0 to H and to both gradients (never 0 * -inf = NaN).

Precision. The head's matmuls run in the dtype the model computes in (``compute_dtype``: the autocast
dtype where the call runs under autocast, else the weight's dtype). For float32 (and float64) that is
the weight's own dtype, as before. For bfloat16 (or float16) the four matmuls per chunk (logits,
their recomputation in backward, d hidden, d weight) take bf16 operands and accumulate in float32
(cuBLAS does; on CPU the operands are widened, the same arithmetic), and the logits and weight-gradient
products come out in float32 (``torch.mm(..., out_dtype=float32)`` on CUDA). Softmax
statistics (lse, log q, p, H) and the weight-gradient sum over chunks are float32 in every case.
Forward and the recomputing backward call the same function on the same values, so the backward's
logits are the forward's bit for bit.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

DEFAULT_CHUNK_ROWS = 256
LOW_PRECISION = (torch.bfloat16, torch.float16)


def head_compute_dtype(device_type: str, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype the head's matmuls run in: the autocast dtype when the caller runs under autocast
    (the learner's bf16 forwards over float32 master weights), else the weight's own dtype (float32;
    bf16 under FSDP2's MixedPrecisionPolicy, whose unsharded parameters are bf16)."""
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) in LOW_PRECISION:
        return torch.get_autocast_dtype(device_type)
    return weight_dtype


def _mm_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[m, k] @ [k, n] of low-precision operands -> float32 [m, n] with float32 accumulation. CUDA: one
    bf16 tensor-core GEMM writing float32 (``torch.mm(..., out_dtype=float32)``). Elsewhere the operands
    are widened first: a bf16 x bf16 product is exact in float32, so that is the same arithmetic (up to
    the summation order) at float32 speed, which is what lets a CPU test measure the GPU's error."""
    if a.is_cuda and _cuda_mm_out_dtype():
        return torch.mm(a, b, out_dtype=torch.float32)
    if a.is_cuda:  # a torch without the overload: bf16 output (one more rounding, 2^-9 of |logit|)
        return torch.mm(a, b).float()
    return torch.mm(a.float(), b.float())


@functools.cache
def _cuda_mm_out_dtype() -> bool:
    """Whether this torch has the CUDA bf16 -> float32 ``mm`` overload (asked once, on a 1 x 1 product)."""
    one = torch.ones(1, 1, dtype=torch.bfloat16, device="cuda")
    try:
        return torch.mm(one, one, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  temperature: float, compute_dtype: torch.dtype) -> torch.Tensor:
    """[c, D] hidden, [V, D] weight, [V] bias -> [c, V] tempered logits in float32 (float64 stays
    float64): the cast comes first, then the division. weight is already in compute_dtype when that
    is a low-precision dtype (cast once per call, not per chunk)."""
    # Autocast off: forward and the recomputing backward (which runs outside any autocast region)
    # then run the same kernels on the same operands.
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        if compute_dtype in LOW_PRECISION:
            z = _mm_float32(hidden.to(compute_dtype), weight.t())
            if bias is not None:
                z = z + bias.float()
        else:
            z = torch.nn.functional.linear(hidden.to(weight.dtype), weight, bias)
    z = z.to(_acc_dtype(z.dtype))
    return z / temperature if temperature != 1.0 else z


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype softmax statistics are computed in: float32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def _safe_logq(z: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """[c, V] log q = z - lse with 0 where z = -inf (there p = 0, so the 0 is never weighed)."""
    logq = z - lse[:, None]
    return torch.where(torch.isneginf(z), torch.zeros((), dtype=logq.dtype), logq)


class _HeadLogpEntropy(torch.autograd.Function):
    """(hidden [N, D], weight [V, D], bias [V] | None, ids [N]) -> (logp [N], entropy [N]) float32."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                ids: torch.Tensor, temperature: float, chunk_rows: int,
                compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=_acc_dtype(hidden.dtype), device=hidden.device)
        entropy = torch.empty_like(logp)
        lse = torch.empty_like(logp)
        w = weight.to(compute_dtype) if compute_dtype in LOW_PRECISION else weight
        for s in range(0, n, chunk_rows):
            z = _chunk_logits(hidden[s : s + chunk_rows], w, bias, temperature, compute_dtype)
            chunk_lse = torch.logsumexp(z, dim=-1)
            logq = _safe_logq(z, chunk_lse)
            lse[s : s + chunk_rows] = chunk_lse
            logp[s : s + chunk_rows] = z.gather(1, ids[s : s + chunk_rows, None]).squeeze(1) - chunk_lse
            entropy[s : s + chunk_rows] = -(logq.exp() * logq).sum(-1)
            del z, logq
        ctx.save_for_backward(hidden, weight, bias, ids, lse, entropy)
        ctx.temperature, ctx.chunk_rows, ctx.compute_dtype = temperature, chunk_rows, compute_dtype
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, g_logp: torch.Tensor | None, g_ent: torch.Tensor | None) -> tuple[Any, ...]:
        hidden, weight, bias, ids, lse, entropy = ctx.saved_tensors
        temperature, chunk_rows, compute_dtype = ctx.temperature, ctx.chunk_rows, ctx.compute_dtype
        low = compute_dtype in LOW_PRECISION
        w = weight.to(compute_dtype) if low else weight  # the forward's operand again (a cast is exact to repeat)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n = hidden.shape[0]
        acc = lse.dtype
        g_logp = torch.zeros(n, dtype=acc, device=hidden.device) if g_logp is None else g_logp.to(acc)
        g_ent = torch.zeros(n, dtype=acc, device=hidden.device) if g_ent is None else g_ent.to(acc)
        grad_h = torch.empty_like(hidden) if need_h else None
        # Weight/bias gradients accumulate over chunks in float32 (at least) whatever the parameter dtype.
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) \
            if need_b and bias is not None else None
        for s in range(0, n, chunk_rows):
            e = min(s + chunk_rows, n)
            h = hidden[s:e]
            z = _chunk_logits(h, w, bias, temperature, compute_dtype)
            logq = _safe_logq(z, lse[s:e])
            p = logq.exp().masked_fill_(torch.isneginf(z), 0.0)
            del z
            # d/dz = g_logp (onehot - p) - g_ent p (log q + H), built in place in the logq buffer.
            grad_z = logq.add_(entropy[s:e, None]).mul_(g_ent[s:e, None]).add_(g_logp[s:e, None]).mul_(p).neg_()
            del p
            grad_z.scatter_add_(1, ids[s:e, None], g_logp[s:e, None])
            if temperature != 1.0:
                grad_z.div_(temperature)
            if grad_w is not None and low:  # bf16 operands, float32 sum over chunks
                grad_w += _mm_float32(grad_z.t().to(compute_dtype), h.to(compute_dtype))
            elif grad_w is not None:
                grad_w.addmm_(grad_z.t(), h.to(acc))
            if grad_b is not None:
                grad_b += grad_z.sum(0)
            if grad_h is not None:
                grad_h[s:e] = (grad_z.to(w.dtype) @ w).to(hidden.dtype)
            del grad_z
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None)


def head_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, token_ids: torch.Tensor,
                              bias: torch.Tensor | None = None, *, temperature: float = 1.0,
                              chunk_rows: int = DEFAULT_CHUNK_ROWS, compute_dtype: torch.dtype | None = None,
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each given token and the entropy of its full next-token distribution.

    hidden: [N, D] final hidden states (any float dtype) of the positions that predict token_ids.
    weight: [V, D] LM-head weight; bias: [V] or None. token_ids: [N] long.
    temperature: logits are cast to float32, then divided by it (the sampling distribution).
    Returns (logp [N], entropy [N]), float32 (float64 for float64 inputs), differentiable w.r.t.
    hidden, weight and bias. At most ``chunk_rows`` x V float32 values exist at a time, in forward
    and in backward. compute_dtype: the matmuls' operand dtype (module docstring, "Precision");
    default :func:`head_compute_dtype` at the call (autocast's dtype, else the weight's).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be [N, D] and weight [V, D], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if token_ids.shape != hidden.shape[:1]:
        raise ValueError(f"token_ids must be [N] = {hidden.shape[0]}, got {tuple(token_ids.shape)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if compute_dtype is None:
        compute_dtype = head_compute_dtype(hidden.device.type, weight.dtype)
    out = _HeadLogpEntropy.apply(hidden, weight, bias, token_ids.long(), float(temperature), int(chunk_rows),
                                 compute_dtype)
    return out[0], out[1]


def split_lm_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder that returns final hidden states, LM head) of a Hugging Face causal LM, or None when
    the model's logits are not a plain linear map of the decoder's output (logit soft-capping or
    scaling, an unusual head), in which case the caller must use the model's own logits."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    prefix = getattr(model, "base_model_prefix", "model")
    decoder = getattr(model, prefix, None)
    cfg = getattr(model, "config", None)
    altered = any(getattr(cfg, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale"))
    if type(head) is not torch.nn.Linear or decoder is None or decoder is model or altered:
        return None
    return decoder, head
