"""The chunked LM head (rl_div.metrics.lm_head) against the naive full-logits computation, and the
learner's policy_forward on real transformers models: same values and gradients, no [B, L, V]."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rl_div.data import PromptRecord, RolloutBatch
from rl_div.learner.forward import policy_forward, prompt_logprob_mask
from rl_div.metrics.lm_head import head_logprobs_and_entropy, split_lm_head
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama


def reference(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor,
              temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Textbook log p(id) and H = -sum p log p in float64 numpy from the full [N, V] logits."""
    z = hidden.detach().double().numpy() @ weight.detach().double().numpy().T
    if bias is not None:
        z = z + bias.detach().double().numpy()
    z = z / temperature
    mx = z.max(-1, keepdims=True)
    logq = z - (mx + np.log(np.exp(z - mx).sum(-1, keepdims=True)))
    p = np.exp(logq)
    ent = -(p * np.where(p > 0, logq, 0.0)).sum(-1)
    return np.take_along_axis(logq, ids.numpy()[:, None], 1)[:, 0], ent


def naive(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor,
          temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The same under autograd: full [N, V] logits, log_softmax, entropy (p = 0 entries give 0)."""
    z = torch.nn.functional.linear(hidden, weight, bias).double() / temperature
    logq = torch.log_softmax(z, -1)
    safe = torch.where(torch.isneginf(logq), torch.zeros_like(logq), logq)
    return logq.gather(1, ids[:, None]).squeeze(1), -(logq.exp() * safe).sum(-1)


def case(n: int = 13, d: int = 8, v: int = 50, seed: int = 0, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g)
    b = torch.randn(v, generator=g) if bias else None
    ids = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, ids


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("chunk_rows", [1, 4, 13, 100])
def test_values_match_the_float64_reference(temperature: float, chunk_rows: int) -> None:
    hidden, weight, bias, ids = case()
    logp, ent = head_logprobs_and_entropy(hidden, weight, ids, bias, temperature=temperature, chunk_rows=chunk_rows)
    ref_logp, ref_ent = reference(hidden, weight, bias, ids, temperature)
    assert logp.dtype == ent.dtype == torch.float32 and logp.shape == ent.shape == (13,)
    np.testing.assert_allclose(logp.numpy(), ref_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent.numpy(), ref_ent, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradients_match_autograd_through_full_logits(temperature: float) -> None:
    """float64 everywhere: our backward (recomputed per chunk) vs autograd of the naive formula,
    for an arbitrary mix of d/dlogp and d/dH (as the PPO loss and an entropy bonus give)."""
    hidden, weight, bias, ids = (t.double() if t.is_floating_point() else t for t in case(seed=1))
    g = torch.Generator().manual_seed(2)
    w_logp, w_ent = torch.randn(13, generator=g).double(), torch.randn(13, generator=g).double()
    grads = []
    for fn in (lambda h, w, b: head_logprobs_and_entropy(h, w, ids, b, temperature=temperature, chunk_rows=5),
               lambda h, w, b: naive(h, w, b, ids, temperature)):
        leaves = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
        logp, ent = fn(*leaves)
        (logp * w_logp + ent * w_ent).sum().backward()
        grads.append([t.grad for t in leaves])
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_gradcheck_one_output_at_a_time() -> None:
    """Finite differences, with only logp or only H used downstream (a None output gradient)."""
    hidden, weight, bias, ids = (t.double() if t.is_floating_point() else t for t in case(n=5, d=3, v=7, seed=3))
    leaves = tuple(t.requires_grad_(True) for t in (hidden, weight, bias))
    for which in (0, 1):
        torch.autograd.gradcheck(
            lambda h, w, b, which=which: head_logprobs_and_entropy(h, w, ids, b, temperature=0.8, chunk_rows=2)[which],
            leaves)


def test_minus_inf_logits_give_finite_values_and_gradients() -> None:
    """A bias of -inf masks vocabulary entries: p = 0 there, H and gradients stay finite and exact."""
    hidden, weight, bias, ids = case(seed=4)
    bias = bias.double()
    bias[::3] = float("-inf")
    ids = torch.where(ids % 3 == 0, ids + 1, ids)  # sampled tokens are never masked ones
    hidden, weight = hidden.double(), weight.double()
    logp, ent = head_logprobs_and_entropy(hidden, weight, ids, bias, temperature=0.9, chunk_rows=4)
    ref_logp, ref_ent = reference(hidden, weight, bias, ids, 0.9)
    np.testing.assert_allclose(logp.numpy(), ref_logp, rtol=1e-10)
    np.testing.assert_allclose(ent.numpy(), ref_ent, rtol=1e-10)
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, e = head_logprobs_and_entropy(h, w, ids, bias, temperature=0.9, chunk_rows=4)
    (lp.sum() + e.sum()).backward()
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp2, e2 = naive(h2, w2, bias, ids, 0.9)
    (lp2.sum() + e2.sum()).backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(w.grad).all()
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-10, atol=1e-10)


def test_bf16_is_cast_to_float32_before_the_temperature() -> None:
    """bf16 logits / 0.7 in bf16 loses ~3 significant digits; the cast must come first. The bf16
    operands' product itself comes out in float32 (float32 accumulation, no bf16 rounding of the logits)."""
    hidden, weight, _, ids = case(n=64, d=16, v=300, seed=5, bias=False)
    hidden, weight = hidden.bfloat16(), weight.bfloat16()
    logp, ent = head_logprobs_and_entropy(hidden, weight, ids, temperature=0.7, chunk_rows=16)
    z = (hidden.double() @ weight.double().T) / 0.7  # the bf16 operands' exact product, tempered exactly
    logq = torch.log_softmax(z, -1)
    torch.testing.assert_close(logp.double(), logq.gather(1, ids[:, None]).squeeze(1), rtol=0, atol=1e-4)
    torch.testing.assert_close(ent.double(), -(logq.exp() * logq).sum(-1), rtol=0, atol=1e-4)


def test_bad_shapes_fail_clearly() -> None:
    hidden, weight, _, ids = case()
    with pytest.raises(ValueError, match="token_ids"):
        head_logprobs_and_entropy(hidden, weight, ids[:-1])
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        head_logprobs_and_entropy(hidden[None], weight, ids)
    with pytest.raises(ValueError, match="chunk_rows"):
        head_logprobs_and_entropy(hidden, weight, ids, chunk_rows=0)


# ---- policy_forward on real models --------------------------------------------------------------
def tiny_batch(tok, prompts: list[str], responses: list[str]) -> RolloutBatch:
    """Left-padded prompts and right-padded responses of different lengths."""
    p_ids = [tok(p)["input_ids"] for p in prompts]
    r_ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
    p_len, t_len, b = max(map(len, p_ids)), max(map(len, r_ids)), len(prompts)
    pi, pm = torch.full((b, p_len), tok.pad_token_id), torch.zeros(b, p_len, dtype=torch.long)
    ri, rm = torch.full((b, t_len), tok.pad_token_id), torch.zeros(b, t_len, dtype=torch.long)
    for i, (p, r) in enumerate(zip(p_ids, r_ids, strict=True)):
        pi[i, p_len - len(p):], pm[i, p_len - len(p):] = torch.tensor(p), 1
        ri[i, : len(r)], rm[i, : len(r)] = torch.tensor(r), 1
    return RolloutBatch(prompt_ids=pi, prompt_mask=pm, response_ids=ri, response_mask=rm,
                        behavior_logprobs=torch.zeros(b, t_len), group_index=torch.arange(b),
                        truncated=torch.zeros(b, dtype=torch.bool),
                        prompts=[PromptRecord(p, "0") for p in prompts], response_texts=responses)


def naive_policy_forward(model, batch: RolloutBatch, temperature: float):
    """The model's own full [B, L, V] logits, float64, tempered, log_softmax: response and prompt."""
    ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    att = torch.cat([batch.prompt_mask, batch.response_mask], 1)
    logits = model(input_ids=ids, attention_mask=att, position_ids=(att.cumsum(1) - 1).clamp(min=0)).logits
    logq = torch.log_softmax(logits.double() / temperature, -1)
    p_len = batch.prompt_ids.shape[1]
    resp = logq[:, p_len - 1 : -1]
    logp = resp.gather(2, batch.response_ids[..., None]).squeeze(2)
    ent = -(resp.exp() * resp).sum(-1)
    prompt = logq[:, : p_len - 1].gather(2, batch.prompt_ids[:, 1:, None]).squeeze(2)
    return logp, ent, torch.nn.functional.pad(prompt, (1, 0))


@pytest.fixture(scope="module")
def llama():
    tok = build_char_tokenizer()
    model = make_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=0)
    with torch.no_grad():  # tied weights: give the head a bias-free but non-trivial scale
        model.get_output_embeddings().weight.mul_(4.0)
    return model.double(), tok


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_policy_forward_matches_full_logits_values_and_grads(llama, temperature: float) -> None:
    model, tok = llama
    batch = tiny_batch(tok, ["12+3=", "a much longer prompt ="], ["15", "x y z 17"])
    mask, pmask = batch.response_mask.bool(), prompt_logprob_mask(batch.prompt_mask).bool()
    model.zero_grad()
    logp, ent, plogp = policy_forward(model, batch, chunk_rows=3, with_prompt=True, temperature=temperature)
    (logp[mask].sum() + 0.3 * ent[mask].sum()).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    r_logp, r_ent, r_plogp = naive_policy_forward(model, batch, temperature)
    (r_logp[mask].sum() + 0.3 * r_ent[mask].sum()).backward()
    torch.testing.assert_close(logp[mask], r_logp[mask], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ent[mask], r_ent[mask], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(plogp[pmask], r_plogp[pmask], rtol=1e-10, atol=1e-10)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_policy_forward_without_prompt_returns_none(llama) -> None:
    model, tok = llama
    batch = tiny_batch(tok, ["1+1="], ["2"])
    with torch.no_grad():
        assert policy_forward(model, batch, chunk_rows=4)[2] is None


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward run on this thread on CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_of_the_full_logits_size_in_forward_or_backward() -> None:
    """With V much larger than everything else, no op may produce a [B, L, V] (or [B, T, V]) tensor:
    the largest allowed is one chunk, chunk_rows x V (>= the [V, D] weight gradient here)."""
    tok = build_char_tokenizer()
    model = make_tiny_llama(tok, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    model.resize_token_embeddings(20_000, mean_resizing=False)
    batch = tiny_batch(tok, ["What is 12 + 30? Answer:"] * 4, ["42, because 12 + 30 = 42"] * 4)
    response_positions = int(batch.response_mask.sum())
    chunk = 32  # > hidden size 16, so the [V, D] embedding gradient is smaller than one chunk
    with LargestTensor() as seen:
        logp, ent, _ = policy_forward(model, batch, chunk_rows=chunk, temperature=0.9)
        (logp.sum() + ent.sum()).backward()
    assert seen.largest <= chunk * 20_000 < response_positions * 20_000 // 3


def test_split_lm_head_refuses_soft_capped_logits(llama) -> None:
    model, _ = llama
    assert split_lm_head(model) is not None
    model.config.final_logit_softcapping = 30.0
    try:
        assert split_lm_head(model) is None
    finally:
        model.config.final_logit_softcapping = None


def test_activation_checkpointing_gives_the_same_gradients(llama) -> None:
    import copy

    from rl_div.learner.single import enable_activation_checkpointing

    model, tok = llama
    batch = tiny_batch(tok, ["7*6=", "1+1="], ["42", "2"])
    grads = []
    for ckpt in (False, True):
        m = copy.deepcopy(model).train()
        if ckpt:
            enable_activation_checkpointing(m)
            assert any(getattr(layer, "gradient_checkpointing", False) for layer in m.modules())
        logp, ent, _ = policy_forward(m, batch, chunk_rows=4, temperature=0.8)
        (logp.sum() + ent.sum()).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_prompt_logprobs_of_shared_prompts_match_each_row(llama) -> None:
    """Rows that share a prompt (a group) get its log-probs computed once: still every row's own."""
    model, tok = llama
    batch = tiny_batch(tok, ["12+3=", "a much longer prompt =", "12+3=", "12+3="], ["15", "x y z 17", "4", "999"])
    pmask = prompt_logprob_mask(batch.prompt_mask).bool()
    with torch.no_grad():
        plogp = policy_forward(model, batch, chunk_rows=3, with_prompt=True)[2]
        reference = naive_policy_forward(model, batch, 1.0)[2]
    assert plogp is not None
    torch.testing.assert_close(plogp[pmask], reference[pmask], rtol=1e-10, atol=1e-10)
    assert bool((plogp[~pmask] == 0).all())
