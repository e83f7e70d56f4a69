"""policy_forward drops the columns that are padding in every row of a micro-batch (left prompt
padding, right response padding): its log-probs, entropies, prompt log-probs and gradients equal the
untrimmed forward's (the same model on the batch's full width)."""

from __future__ import annotations

import pytest
import torch

from rl_div.data import PromptRecord, RolloutBatch
from rl_div.learner.forward import _Columns, _forward_columns, padding_columns, policy_forward
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama


def test_padding_columns_by_hand() -> None:
    prompt = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    response = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    assert padding_columns(prompt, response) == (2, 3)
    assert padding_columns(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)) == (2, 1)
    assert padding_columns(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)) == (0, 4)


def short_rows_of_a_wide_batch(vocab: int) -> RolloutBatch:
    """4 rows padded to the width of a batch whose longest prompt is 12 and response 10 tokens; these
    rows use at most 7 prompt and 6 response tokens."""
    g = torch.Generator().manual_seed(0)
    p_real, t_real = torch.tensor([7, 5, 3, 6]), torch.tensor([6, 2, 5, 1])
    prompt_mask = (torch.arange(12)[None, :] >= (12 - p_real)[:, None]).long()
    response_mask = (torch.arange(10)[None, :] < t_real[:, None]).long()
    return RolloutBatch(
        prompt_ids=torch.randint(4, vocab, (4, 12), generator=g) * prompt_mask, prompt_mask=prompt_mask,
        response_ids=torch.randint(4, vocab, (4, 10), generator=g) * response_mask, response_mask=response_mask,
        behavior_logprobs=torch.zeros(4, 10), group_index=torch.tensor([0, 0, 1, 1]),
        truncated=torch.zeros(4, dtype=torch.bool), prompts=[PromptRecord("p", "a")] * 4, response_texts=[""] * 4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_trimmed_forward_equals_the_full_width_forward(temperature: float) -> None:
    tok = build_char_tokenizer()
    model = make_tiny_llama(tok, seed=1).float()
    batch = short_rows_of_a_wide_batch(len(tok))
    assert padding_columns(batch.prompt_mask, batch.response_mask) == (5, 6)  # something to trim
    results = []
    for trimmed in (True, False):
        model.zero_grad(set_to_none=True)
        if trimmed:
            logp, ent, plogp = policy_forward(model, batch, 4, with_prompt=True, temperature=temperature)
        else:  # the untouched path: every column of the batch
            full = _Columns(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
            logp, ent, plogp = _forward_columns(model, full, 4, True, temperature)
        (logp.sum() + 0.3 * ent.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logp.detach(), ent.detach(), plogp, grads))
    (a_lp, a_en, a_pl, a_g), (b_lp, b_en, b_pl, b_g) = results
    assert a_lp.shape == b_lp.shape == (4, 10) and a_pl.shape == b_pl.shape == (4, 12)
    assert torch.allclose(a_lp, b_lp, atol=1e-6, rtol=0)
    assert torch.allclose(a_en, b_en, atol=1e-6, rtol=1e-6), float((a_en - b_en).abs().max())
    assert torch.allclose(a_pl, b_pl, atol=1e-6, rtol=0)
    assert (a_lp[batch.response_mask == 0] == 0).all() and (a_pl[:, :5] == 0).all()
    assert a_g.keys() == b_g.keys()
    for name in a_g:
        assert torch.allclose(a_g[name], b_g[name], atol=1e-6, rtol=1e-5), name
