"""Token log-probs and full-distribution entropies from logits, computed chunk by chunk.

Logits are [N, T, V] in the model's dtype (often bf16). Upcasting the whole tensor to float32 for
log_softmax would cost 4*N*T*V bytes (GBs at V = 150k), so rows of the flattened [N*T, V] are
processed in chunks of at most ``chunk_rows`` and only one chunk is float32 at a time.

Under autograd each chunk runs inside activation checkpointing: otherwise autograd would keep every
chunk's float32 log-softmax for the backward pass and the chunking would save nothing. Backward
recomputes one chunk at a time; gradients are identical to the unchunked computation.

"Entropy" here is always the entropy of the whole next-token distribution, H = -sum_v p_v log p_v,
never the sampled token's -log p.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

# Rows per float32 chunk: 1024 rows x 150k vocab is ~600 MB of float32 per intermediate.
DEFAULT_CHUNK_ROWS = 1024


def _row_blocks(n: int, t: int, chunk_rows: int) -> list[tuple[slice, slice]]:
    """Cover the [n, t] grid in row-major order with blocks of at most ``chunk_rows`` (n, t) cells.

    Whole sequences are grouped when a sequence fits in a chunk, else each sequence is cut along t.
    Slicing the 3-D tensor (instead of flattening it) never copies a non-contiguous input.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if n == 0 or t == 0:  # one empty block keeps output shapes and dtypes uniform
        return [(slice(0, n), slice(0, t))]
    if t <= chunk_rows:
        per = chunk_rows // t
        return [(slice(i, min(i + per, n)), slice(0, t)) for i in range(0, n, per)]
    starts = range(0, t, chunk_rows)
    return [(slice(i, i + 1), slice(s, min(s + chunk_rows, t))) for i in range(n) for s in starts]


def _entropy_of_logsoftmax(logp: torch.Tensor) -> torch.Tensor:
    """[..., V] float32 log-probabilities -> [...] entropy -sum p log p.

    A -inf log p (masked vocab entry, p = 0) is replaced by 0, so its term is 0 * 0 = 0 in the forward
    pass and its gradient is 0 too. (Clamping to the float32 minimum instead gives the right value but
    a NaN gradient once |dL/dH| > 1: dL/dH * finfo.min overflows to -inf, times p = 0.)
    """
    finite_logp = torch.where(torch.isneginf(logp), torch.zeros_like(logp), logp)
    return -(logp.exp() * finite_logp).sum(-1)


def _block_logp_entropy(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, t, V] logits (any float dtype), [b, t] ids -> ([b, t] log p(id), [b, t] entropy), float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logp = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return token_logp, _entropy_of_logsoftmax(logp)


def _block_entropy(logits: torch.Tensor) -> torch.Tensor:
    """[b, t, V] logits -> [b, t] float32 entropy."""
    return _entropy_of_logsoftmax(torch.log_softmax(logits.float(), dim=-1))


def _map_blocks(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    logits: torch.Tensor,
    extra: tuple[torch.Tensor, ...],
    chunk_rows: int,
) -> tuple[torch.Tensor, ...]:
    """Apply ``fn(logits_block, *extra_blocks)`` over row blocks and stitch the [N, T] outputs back."""
    n, t = logits.shape[0], logits.shape[1]
    use_ckpt = torch.is_grad_enabled() and logits.requires_grad
    pieces: list[tuple[torch.Tensor, ...]] = []
    for ns, ts in _row_blocks(n, t, chunk_rows):
        args = (logits[ns, ts], *(e[ns, ts] for e in extra))
        # Checkpointing only under grad: it keeps just the bf16 slice, not the float32 intermediates.
        if use_ckpt:
            pieces.append(checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False))
        else:
            pieces.append(fn(*args))
    n_out = len(pieces[0])
    return tuple(torch.cat([p[i].reshape(-1) for p in pieces]).view(n, t) for i in range(n_out))


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be [N, T, V], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")


def logprobs_and_entropy(
    logits: torch.Tensor, token_ids: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each given token and entropy of each full next-token distribution.

    logits: [N, T, V] (any float dtype; logits[n, t] is the distribution that produced token_ids[n, t]).
    token_ids: [N, T] long.
    Returns (logp [N, T] float32, entropy [N, T] float32). Differentiable w.r.t. logits through both
    outputs; at most ``chunk_rows`` rows are upcast to float32 at a time, in forward and in backward.
    """
    _check_logits(logits)
    if token_ids.shape != logits.shape[:2]:
        shapes = f"{tuple(token_ids.shape)} vs {tuple(logits.shape[:2])}"
        raise ValueError(f"token_ids must have shape logits.shape[:2], got {shapes}")
    logp, ent = _map_blocks(_block_logp_entropy, logits, (token_ids.long(),), chunk_rows)
    return logp, ent


def _entropy_tuple(logits: torch.Tensor) -> tuple[torch.Tensor]:
    return (_block_entropy(logits),)


def entropy_from_logits(logits: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """[N, T, V] logits -> [N, T] float32 full-distribution entropy (nats), chunked like above."""
    _check_logits(logits)
    (ent,) = _map_blocks(_entropy_tuple, logits, (), chunk_rows)
    return ent


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, empty: float = float("nan")
) -> torch.Tensor:
    """Mean of x over positions where mask is true (mask broadcastable to x).

    dim: reduce over all elements (None) or over one dimension. Positions outside the mask are
    replaced by 0 before summing (not multiplied by 0), so NaN/inf in padding cannot leak in.
    empty: value returned where the mask selects nothing (default NaN: the mean is undefined; pass
    0.0 when the result feeds a loss).
    """
    m = mask.bool().expand_as(x)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    count = m.sum() if dim is None else m.sum(dim)
    s = total.sum() if dim is None else total.sum(dim)
    mean = s / count.clamp(min=1).to(s.dtype)
    return torch.where(count > 0, mean, torch.full_like(mean, empty))
