"""Log-probs and entropies of sampled responses under a policy: the forward pass every learner
(single, FSDP2 ranks, the TRL integration) and the tests' references share. The LM head runs chunk
by chunk over the real response (and, for ARM, prompt) positions only, so no [B, L, V] logits
tensor is built (rl_div.metrics.lm_head)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from rl_div.algos.grouping import distinct_rows
from rl_div.data import RolloutBatch
from rl_div.learner.packing import Packing, run_packed, sequence_tokens_for
from rl_div.metrics.entropy import logprobs_and_entropy
from rl_div.metrics.lm_head import head_logprobs_and_entropy, split_lm_head


class _Columns(NamedTuple):
    """The token columns of a batch that policy_forward runs: prompt_ids / prompt_mask [B, P'],
    response_ids / response_mask [B, T']."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor


def padding_columns(prompt_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[int, int]:
    """(lead, keep): the leading prompt columns that are padding in every row ([B, P] mask; at most
    P - 1 of them), and the response columns up to the last one any row uses ([B, T] mask; at least 1)."""
    used_p = prompt_mask.bool().any(dim=0).nonzero()
    lead = int(used_p[0]) if used_p.numel() else prompt_mask.shape[1]
    used_t = response_mask.bool().any(dim=0).nonzero()
    keep = int(used_t[-1]) + 1 if used_t.numel() else 1
    return min(lead, max(prompt_mask.shape[1] - 1, 0)), keep


def policy_forward(model: torch.nn.Module, batch: RolloutBatch, chunk_rows: int,
                   with_prompt: bool = False, temperature: float | torch.Tensor = 1.0,
                   packing: Packing | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-probs and full-distribution entropies of the sampled response tokens.

    Returns logp [B, T], entropy [B, T] (float32, grad flows if enabled; 0 at padded positions) and,
    when with_prompt, prompt log-probs [B, P] aligned with prompt_ids (0 where
    :func:`prompt_logprob_mask` is 0, e.g. the first real token). Logits are cast to float32 and then
    divided by the sampling temperature, so that pi_old is the distribution the rollout sampled from
    (top-p / top-k truncation is not modelled: with those on, ratios are taken against the
    untruncated tempered policy). temperature: one for every row, or [B] per row (each row's logits
    divided by its own; the decoder runs once, the head once per distinct temperature).

    The model runs without its LM head (and without a KV cache); the head is applied chunk by chunk
    to the hidden states of the real response positions only (and of the prompt positions only when
    with_prompt, for ARM), so no [B, L, V] logits tensor is ever built
    (rl_div.metrics.lm_head). Models whose logits are not a plain linear head fall back to the
    model's full logits.

    A micro-batch costs its own longest row, not the whole batch's padded width: the prompt columns
    that are padding in every row (left) and the response columns past every row's end (right) are
    dropped before the model runs, and the outputs padded back with zeros. Positions count real
    tokens only and padded keys are masked, so the dropped columns change nothing but the cost.
    With packing (train.packing) the model runs on the rows' real tokens only, packed end to end
    (rl_div.learner.packing): the same outputs, without the padding inside the kept columns.
    """
    lead, keep = padding_columns(batch.prompt_mask, batch.response_mask)
    columns = _Columns(batch.prompt_ids[:, lead:], batch.prompt_mask[:, lead:], batch.response_ids[:, :keep],
                       batch.response_mask[:, :keep])
    logp, entropy, prompt_logp = _forward_columns(model, columns, chunk_rows, with_prompt, temperature, packing)
    dropped = batch.response_ids.shape[1] - keep
    if dropped:
        logp, entropy = (torch.nn.functional.pad(t, (0, dropped)) for t in (logp, entropy))
    if prompt_logp is not None and lead:
        prompt_logp = torch.nn.functional.pad(prompt_logp, (lead, 0))
    return logp, entropy, prompt_logp


@torch.no_grad()
def response_stats(model: torch.nn.Module, batch: RolloutBatch, temperature: float, micro_batch_size: int,
                   chunk_rows: int) -> dict[str, torch.Tensor]:
    """{old_logprobs, old_entropy}: [B, T] float32 on CPU, :func:`policy_forward` of the batch's responses
    at ``temperature``, ``micro_batch_size`` rows at a time, without gradient, on the module as it is (no
    autocast, no reference): a forward-only scorer such as rl-div eval's rollout workers."""
    model.eval()
    parts = [policy_forward(model, micro, chunk_rows, temperature=temperature)
             for micro in batch.micro_batches(micro_batch_size)]
    return {"old_logprobs": torch.cat([p[0].float().cpu() for p in parts]),
            "old_entropy": torch.cat([p[1].float().cpu() for p in parts])}


def _forward_columns(model: torch.nn.Module, batch: _Columns, chunk_rows: int, with_prompt: bool,
                     temperature: float, packing: Packing | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """policy_forward on the columns it kept."""
    p_len = batch.prompt_ids.shape[1]
    temperature = uniform_or_rows(temperature)
    device = next(model.parameters()).device
    input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1).to(device)
    attention = torch.cat([batch.prompt_mask, batch.response_mask], dim=1).to(device)
    # Left padding: positions count real tokens only, as generate() numbered them.
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
    response_ids, response_mask = batch.response_ids.to(device), batch.response_mask.to(device).bool()
    prompt_mask = prompt_logprob_mask(batch.prompt_mask).to(device).bool()
    parts = split_lm_head(model)
    if parts is None:
        logits = _padded_or_packed(lambda **kw: model(**kw).logits, model, input_ids, attention, position_ids,
                                   packing)
        return _full_logits_forward(logits, input_ids, p_len, response_ids, prompt_mask if with_prompt else None,
                                    chunk_rows, temperature)
    decoder, head = parts
    hidden = _padded_or_packed(lambda **kw: decoder(**kw).last_hidden_state, model, input_ids, attention,
                               position_ids, packing)
    # Hidden state at position i predicts token i+1.
    logp, entropy = _head_by_temperature(hidden[:, p_len - 1 : -1], head, response_ids, response_mask, chunk_rows,
                                         temperature)
    prompt_logp = None
    if with_prompt:  # once per distinct prompt (a group's rows share one; causal attention: the
        # response does not change them), without gradient: only advantages read them (ARM's c(q))
        first, inverse = distinct_rows(torch.cat([input_ids[:, :p_len], prompt_mask], dim=1))
        with torch.no_grad():
            first_temperature = temperature[first.cpu()] if isinstance(temperature, torch.Tensor) else temperature
            prompt_logp, _ = _head_by_temperature(hidden[first, :p_len - 1].detach(), head, input_ids[first, 1:p_len],
                                                  prompt_mask[first, 1:], chunk_rows, first_temperature)
        prompt_logp = torch.nn.functional.pad(prompt_logp[inverse], (1, 0))
    return logp, entropy, prompt_logp


def _padded_or_packed(run: Callable[..., torch.Tensor], model: torch.nn.Module, input_ids: torch.Tensor,
                      attention: torch.Tensor, position_ids: torch.Tensor, packing: Packing | None) -> torch.Tensor:
    """run(**model inputs) -> [b, l, *] on the padded rows (input_ids / attention / position_ids [B, L]), or on
    their real tokens packed (packing; rl_div.learner.packing) with the output scattered back to [B, L, *]."""
    if packing is None or not bool(attention.any()):  # no real token: nothing to pack
        return run(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, use_cache=False)
    return run_packed(lambda ids, pos: run(input_ids=ids, position_ids=pos, use_cache=False), input_ids, attention,
                      position_ids, sequence_tokens_for(model, packing.sequence_tokens))


def batch_temperature(batch: RolloutBatch, given: float | None, default: float) -> float | torch.Tensor:
    """The temperature a forward over batch divides its logits by: ``given`` when set (evaluation's),
    else the rows' own sampling temperatures [B] (rollout.temperature_schedule), else ``default``."""
    if given is not None:
        return given
    return default if batch.sampling_temperature is None else batch.sampling_temperature


def uniform_or_rows(temperature: float | torch.Tensor) -> float | torch.Tensor:
    """A float when every row shares one temperature, else the [B] CPU tensor of row temperatures."""
    if not isinstance(temperature, torch.Tensor):
        return float(temperature)
    values = temperature.detach().cpu().double().unique()
    return float(values[0]) if values.numel() == 1 else temperature.detach().cpu().double()


def _head_by_temperature(hidden: torch.Tensor, head: torch.nn.Linear, ids: torch.Tensor, mask: torch.Tensor,
                         chunk_rows: int, temperature: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """_masked_head at one temperature, or per distinct row temperature ([B]) on that temperature's rows
    (disjoint masks, so the parts add up)."""
    if not isinstance(temperature, torch.Tensor):
        return _masked_head(hidden, head, ids, mask, chunk_rows, temperature)
    logp = entropy = None
    for value in temperature.unique().tolist():
        rows = mask & (temperature == value).to(mask.device)[:, None]
        lp, ent = _masked_head(hidden, head, ids, rows, chunk_rows, float(value))
        logp, entropy = (lp, ent) if logp is None else (logp + lp, entropy + ent)
    assert logp is not None and entropy is not None
    return logp, entropy


def _masked_head(hidden: torch.Tensor, head: torch.nn.Linear, ids: torch.Tensor, mask: torch.Tensor,
                 chunk_rows: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [B, T, D], ids/mask [B, T] -> (logp, entropy) [B, T] float32 (float64 for a float64
    model), computed where mask is set (0 elsewhere)."""
    logp, entropy = head_logprobs_and_entropy(hidden[mask], head.weight, ids[mask], head.bias,
                                              temperature=temperature, chunk_rows=chunk_rows)
    zeros = torch.zeros(mask.shape, dtype=logp.dtype, device=mask.device)
    return zeros.masked_scatter(mask, logp), zeros.masked_scatter(mask, entropy)


def _full_logits_forward(logits: torch.Tensor, input_ids: torch.Tensor, p_len: int, response_ids: torch.Tensor,
                         prompt_mask: torch.Tensor | None, chunk_rows: int, temperature: float | torch.Tensor,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """policy_forward for models without a plain linear head, from the model's own [B, L, V] logits."""
    if isinstance(temperature, torch.Tensor):
        logits = logits.float() / temperature.to(logits.device, torch.float32)[:, None, None]
    elif temperature != 1.0:
        logits = logits.float() / temperature
    logp, entropy = logprobs_and_entropy(logits[:, p_len - 1 : -1], response_ids, chunk_rows)
    prompt_logp = None
    if prompt_mask is not None:
        with torch.no_grad():
            plogp, _ = logprobs_and_entropy(logits[:, : p_len - 1].detach(), input_ids[:, 1:p_len], chunk_rows)
        prompt_logp = torch.nn.functional.pad(plogp, (1, 0)) * prompt_mask
    return logp, entropy, prompt_logp


def prompt_logprob_mask(prompt_mask: torch.Tensor) -> torch.Tensor:
    """[B, P] mask of prompt tokens that have a prediction (real and not the first real token)."""
    previous_real = torch.nn.functional.pad(prompt_mask[:, :-1], (1, 0))
    return prompt_mask * previous_real
