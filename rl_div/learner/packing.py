"""Padding-free packing of a micro-batch (train.packing): the real tokens of its rows laid end to end
in a few token-budget sequences, each row with its own position ids (0, 1, ... as generate() numbered
them), and attention that never crosses rows.

The decoder runs with ``attention_mask=None`` and the packed ``position_ids``: transformers reads the
row boundaries from the position ids (a position that does not follow its left neighbour starts a
new row). On sdpa / eager it builds a block-diagonal causal mask from them
(``masking_utils.find_packed_sequence_indices``); on flash-attention (GPU) it calls the varlen kernel
with cumulative row lengths taken from them (``modeling_flash_attention_utils._is_packed_sequence``,
which needs every row in ONE packed sequence: ``sequence_tokens`` says so). Every query then sees
exactly the keys the padded forward lets it see (its own row's real tokens up to itself), at the
same positions, so the outputs are the padded forward's up to float summation order.

The model's output is scattered back to the padded [B, L, ...] layout (zeros where the padded forward
had padding), so everything after the decoder (the chunked LM head over the real response positions,
token weights, losses) reads the very per-token quantities the padded path gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Varlen kernels: transformers runs one packed sequence (batch size 1) as cumulative row lengths.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class Packing:
    """A forward on packed rows (train.packing). sequence_tokens: tokens per packed sequence
    (train.packing_tokens; None = chosen per model by sequence_tokens_for)."""

    sequence_tokens: int | None = None


@dataclass(frozen=True)
class PackedLayout:
    """Where the real tokens of a [B, L] micro-batch sit in S packed sequences of W tokens.

    source: [N] flat indices (into B * L) of the real tokens, in packing order; slot: [N] flat
    indices (into S * W) where each lands; positions: [S, W] position ids (each row 0..n-1, a
    sequence's unused tail its own run 0..k-1, so it is a separate "row" no real token attends to).
    """

    source: torch.Tensor
    slot: torch.Tensor
    positions: torch.Tensor
    shape: tuple[int, int]


def pack_rows(lengths: list[int], budget: int) -> list[list[int]]:
    """First-fit decreasing: rows (by index, lengths[i] tokens, 0-length rows left out) into as few
    bins of at most `budget` tokens as the heuristic finds; a row longer than budget gets a bin of its
    own. Each bin lists its rows in ascending index order. Pure; the same on every rank."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        fit = next((b for b, free in enumerate(room) if free >= lengths[i]), None)
        if fit is None:
            bins.append([i])
            room.append(budget - lengths[i])
        else:
            bins[fit].append(i)
            room[fit] -= lengths[i]
    return [sorted(b) for b in bins]


def packed_layout(attention: torch.Tensor, position_ids: torch.Tensor, sequence_tokens: int | None) -> PackedLayout:
    """The layout of attention [B, L] (1 = real token) packed into sequences of
    W = max(sequence_tokens, longest row) tokens (sequence_tokens None: the longest row; 0: all real
    tokens in one sequence). position_ids [B, L]: each real token's position (kept as they are)."""
    real = attention.bool().cpu()
    lengths = real.sum(dim=1).tolist()
    longest = max(lengths)
    total = sum(lengths)
    width = total if sequence_tokens == 0 else max(sequence_tokens or longest, longest)
    bins = pack_rows(lengths, width)
    cols = real.shape[1]
    source, slot, positions = [], [], torch.zeros(len(bins), width, dtype=torch.long)
    for s, rows in enumerate(bins):
        used = 0
        for r in rows:
            idx = real[r].nonzero().squeeze(1)
            source.append(r * cols + idx)
            slot.append(s * width + used + torch.arange(len(idx)))
            positions[s, used : used + len(idx)] = position_ids[r].cpu()[idx]
            used += len(idx)
        positions[s, used:] = torch.arange(width - used)
    return PackedLayout(torch.cat(source), torch.cat(slot), positions, (len(bins), width))


def run_packed(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], input_ids: torch.Tensor,
               attention: torch.Tensor, position_ids: torch.Tensor, sequence_tokens: int | None) -> torch.Tensor:
    """fn(packed_ids [S, W], packed_positions [S, W]) -> [S, W, *] (a decoder's hidden states, a model's
    logits), run on the packed rows of input_ids / attention / position_ids [B, L] and returned in the
    padded layout [B, L, *] (zeros at padding). Differentiable through fn's output."""
    device = input_ids.device
    layout = packed_layout(attention, position_ids, sequence_tokens)
    s, w = layout.shape
    source, slot = layout.source.to(device), layout.slot.to(device)
    packed_ids = torch.zeros(s * w, dtype=input_ids.dtype, device=device)
    packed_ids[slot] = input_ids.reshape(-1)[source]
    out = fn(packed_ids.view(s, w), layout.positions.to(device))
    flat = out.reshape(s * w, *out.shape[2:])
    b, length = input_ids.shape
    unpacked = flat.new_zeros(b * length, *out.shape[2:]).index_copy(0, source, flat.index_select(0, slot))
    return unpacked.view(b, length, *out.shape[2:])


def sequence_tokens_for(model: torch.nn.Module, budget: int | None) -> int | None:
    """The packed sequence width a forward of `model` uses: train.packing_tokens when set; else one
    sequence of every real token (0) for a varlen flash-attention model (its cost grows with each
    row's own length), else the micro-batch's longest row (None: a dense-mask kernel's cost grows with
    the square of the sequence, so sequences stay as short as the longest row)."""
    if budget is not None:
        return budget
    return 0 if attention_implementation(model) in VARLEN_ATTENTION else None


def attention_implementation(model: torch.nn.Module) -> str:
    """The attention implementation a transformers model runs ("sdpa", "eager", "flash_attention_2", ...)."""
    return str(getattr(getattr(model, "config", None), "_attn_implementation", None))


def prepare_packing(model: torch.nn.Module, compute_dtype: torch.dtype, enabled: bool,
                    sequence_tokens: int | None) -> Packing | None:
    """The Packing of train.packing / train.packing_tokens (None when off), with `model` (a learner's
    policy or reference, before any update) made to run packed forwards, or ValueError with one line
    saying why it cannot: on CUDA with flash-attn installed and a half compute
    dtype it switches to varlen flash-attention (transformers' ``set_attn_implementation``; untested
    here, no GPU), then packing_probe_error checks the model's attention on a packed pair of rows."""
    import importlib.util

    if not enabled:
        return None
    first = next(model.parameters())
    on_cuda = first.is_cuda or (first.is_meta and torch.cuda.is_available())
    if on_cuda and compute_dtype != torch.float32 and importlib.util.find_spec("flash_attn") is not None:
        model.set_attn_implementation("flash_attention_2")
    error = packing_probe_error(probe_model(model, "cuda" if on_cuda else "cpu"), compute_dtype)
    if error is not None:
        raise ValueError(error)
    return Packing(sequence_tokens)


def packing_probe_error(model: torch.nn.Module, compute_dtype: torch.dtype = torch.float32) -> str | None:
    """Why packing would be wrong for this model (None: it is exact). Runs two short rows packed into
    one sequence and each alone through the model (no gradient, under autocast in compute_dtype) and
    compares the logits: a model whose attention ignores packed position ids lets the second row see
    the first (a gap of the logits' own order, far above float rounding)."""
    impl = attention_implementation(model)
    device = next(model.parameters()).device
    vocab = int(getattr(model.config, "vocab_size", 8))
    ids = (torch.arange(7, device=device) * 5 + 3) % max(vocab, 1)
    rows = [ids[:3], ids[3:]]
    was_training = model.training
    model.eval()
    half = compute_dtype != torch.float32
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=compute_dtype, enabled=half):
            packed = model(input_ids=ids[None], position_ids=torch.cat([torch.arange(3), torch.arange(4)])[None]
                           .to(device), use_cache=False).logits[0].float()
            alone = torch.cat([model(input_ids=r[None], use_cache=False).logits[0].float() for r in rows])
    finally:
        model.train(was_training)
    gap = float((packed - alone).abs().max())
    if not gap <= (5e-2 if half else 1e-3) * max(1.0, float(alone.abs().max())):
        return f"train.packing: {type(model).__name__} with attention {impl!r} lets packed rows attend to each " \
               f"other (max logit gap {gap:.3g} between a packed and a separate forward); use train.packing=false"
    return None


def probe_model(model: torch.nn.Module, device: str = "cpu") -> torch.nn.Module:
    """The model packing_probe_error runs: the model itself, or for one still on the meta device (the
    FSDP2 learner loads it into its shards later) a one-layer copy of its architecture with a 64-token
    vocabulary and random float32 weights on `device`: the attention kernel, not the weights, decides
    whether packed rows see each other. Built under a forked RNG, so the run's seeded state is unmoved."""
    import copy

    if not any(p.is_meta for p in model.parameters()):
        return model
    config = copy.deepcopy(model.config)
    config.num_hidden_layers, config.vocab_size = 1, 64
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:1]
    with torch.random.fork_rng(devices=[]), torch.device(device):
        return type(model)(config).float()
