"""train.packing: the learner's forwards on packed rows equal the padded forwards (log-probs,
entropies, prompt log-probs, gradients; the loss of every aggregation and every token weight, and the
updates they make), the layout by hand, and the refusal lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import rank_job_config
from test_dist_fsdp import batch, model_path, off_policy_batch  # noqa: F401  (module fixtures, reused)
from test_forward_trim import short_rows_of_a_wide_batch
from transformers import AttentionInterface, Qwen2Config, Qwen2ForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from rl_div.algos import TOKEN_WEIGHTS
from rl_div.config import ConfigError, load_config
from rl_div.learner.forward import policy_forward
from rl_div.learner.packing import Packing, pack_rows, packed_layout, prepare_packing
from rl_div.learner.single import Learner
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama

AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
WEIGHT_PARAMS = {  # parameters under which each token weight re-weights a few of these tokens
    "none": [], "steer": [],
    "clip_cov": ["algo.token_weight_params={fraction: 0.2, cov_low: -100.0, cov_high: 100.0}"],
    "kl_cov": ["algo.token_weight_params={fraction: 0.2}"],
    "high_entropy_mask": ["algo.token_weight_params={top_fraction: 0.2}"],
    "entropy_advantage": [],
}


def test_every_registered_token_weight_is_covered() -> None:
    assert set(TOKEN_WEIGHTS.names()) <= set(WEIGHT_PARAMS), set(TOKEN_WEIGHTS.names()) - set(WEIGHT_PARAMS)


def test_pack_rows_first_fit_decreasing_by_hand() -> None:
    # decreasing: row 0 (5) -> bin A; row 3 (4) -> bin B; row 1 (3) fits B (room 3); row 4 (2) fits A (room 2)
    assert pack_rows([5, 3, 0, 4, 2], 7) == [[0, 4], [1, 3]]
    assert pack_rows([9, 2], 5) == [[0], [1]]  # a row over the budget gets a bin of its own
    assert pack_rows([0, 0], 4) == []


def test_packed_layout_by_hand() -> None:
    attention = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 1, 1]])
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    layout = packed_layout(attention, positions, 4)  # rows of 3, 2, 2 tokens: [0] alone, [1, 2] together
    assert layout.shape == (2, 4)
    assert layout.source.tolist() == [1, 2, 3, 5, 6, 13, 14]
    assert layout.slot.tolist() == [0, 1, 2, 4, 5, 6, 7]
    assert layout.positions.tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert packed_layout(attention, positions, None).shape == (3, 3)  # the longest row: one row a sequence
    assert packed_layout(attention, positions, 0).shape == (1, 7)  # every token in one sequence


def tiny_qwen2(vocab: int, attention: str) -> torch.nn.Module:
    """A small Qwen2 (grouped-query attention: 4 query heads share 2 key/value heads) in float32."""
    config = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(4)
    model = Qwen2ForCausalLM(config).float()
    model.set_attn_implementation(attention)
    return model


def forward_and_grads(model: torch.nn.Module, rows: Any, packing: Packing | None, temperature: Any) -> tuple:
    model.zero_grad(set_to_none=True)
    logp, ent, plogp = policy_forward(model, rows, 3, with_prompt=True, temperature=temperature, packing=packing)
    # the real response tokens only: the full-logits fallback leaves values at padding (never read)
    logp, ent = logp * rows.response_mask, ent * rows.response_mask
    (logp.sum() + 0.3 * ent.sum() + 0.1 * plogp.sum()).backward()
    return logp.detach(), ent.detach(), plogp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["llama-sdpa", "llama-eager", "qwen2-sdpa", "full-logits"])
@pytest.mark.parametrize("tokens", [None, 0, 11])
def test_packed_forward_equals_padded(arch: str, tokens: int | None) -> None:
    tok = build_char_tokenizer()
    if arch.startswith("qwen2"):
        model = tiny_qwen2(len(tok), "sdpa")
    else:
        model = make_tiny_llama(tok, seed=1).float()
        model.set_attn_implementation("eager" if arch == "llama-eager" else "sdpa")
        if arch == "full-logits":  # a head split_lm_head will not split: the model's own [B, L, V] logits
            model.config.final_logit_softcapping = 30.0
    rows = short_rows_of_a_wide_batch(len(tok))
    temperature = torch.tensor([1.0, 0.7, 0.7, 1.3], dtype=torch.float64)
    padded = forward_and_grads(model, rows, None, temperature)
    packed = forward_and_grads(model, rows, Packing(tokens), temperature)
    for name, want, got in zip(("logp", "entropy", "prompt_logp"), padded[:3], packed[:3], strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (name, float((got - want).abs().max()))
        assert (got[want == 0] == 0).all()  # zeros where the padded forward has none
    assert padded[3].keys() == packed[3].keys()
    for name, want in padded[3].items():
        assert torch.allclose(packed[3][name], want, atol=1e-5, rtol=1e-5), name
    assert any(float(g.abs().max()) > 1e-3 for g in padded[3].values())


def learner_pair(path: str, out: Path, extra: list[str]) -> dict[bool, Learner]:
    return {packed: Learner(rank_job_config(path, str(out), [*extra, f"train.packing={packed}"]), path)
            for packed in (False, True)}


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("weight", list(WEIGHT_PARAMS))
def test_learner_loss_gradients_and_update_packed_equal_padded(model_path: str, batch: Any, tmp_path: Path,  # noqa: F811
                                                                agg: str, weight: str) -> None:
    """Per micro-batch (3 uneven rows): the loss, its metrics, the token weights and every gradient;
    then one update over the off-policy batch (two optimizer steps): metrics and weights."""
    data = off_policy_batch(batch)
    extra = ["train.micro_batch_size=3", "train.mini_batch_size=8", f"algo.loss_params={{agg: {agg}}}",
             "algo.loss=ppo_clip", f"algo.token_weight={weight}", *WEIGHT_PARAMS[weight]]
    learners = learner_pair(model_path, tmp_path, extra)
    assert learners[True].packing is not None and learners[False].packing is None
    results = {}
    for packed, learner in learners.items():
        out_micro = []
        for micro in data.micro_batches(3):
            learner.optimizer.zero_grad(set_to_none=True)
            out, weights, entropy, _ = learner.micro_loss(micro, 40.0, 12.0)
            out.loss.backward()
            grads = {n: p.grad.clone() for n, p in learner.model.named_parameters()}
            coef = torch.zeros(()) if weights.kl_penalty_coef is None else weights.kl_penalty_coef
            metrics = {k: float(v) for k, v in out.metrics.items()}  # 0-dim tensors until the update reads them
            out_micro.append((float(out.loss.detach()), metrics, weights.weights, entropy.detach(), grads, coef))
        learner.optimizer.zero_grad(set_to_none=True)
        results[packed] = out_micro
    reweighted = 0
    for want, got in zip(results[False], results[True], strict=True):
        assert got[0] == pytest.approx(want[0], rel=1e-5, abs=1e-7)
        assert got[1] == pytest.approx(want[1], rel=1e-5, abs=1e-6)
        assert torch.allclose(got[2], want[2], atol=1e-5) and torch.allclose(got[3], want[3], atol=1e-5)
        assert torch.allclose(got[5], want[5], atol=1e-5)
        reweighted += int(((want[2] != 1) | (want[5] != 0)).sum())
        for name, g in want[4].items():
            assert torch.allclose(got[4][name], g, atol=1e-5, rtol=1e-5), name
    assert weight == "none" or reweighted > 0  # the weight did act on these tokens
    updates = {packed: learner.update(data) for packed, learner in learners.items()}
    assert updates[False]["train/optimizer_steps"] == 2
    assert updates[True] == pytest.approx(updates[False], rel=1e-5, abs=1e-6, nan_ok=True)
    state = learners[True].model.state_dict()
    for name, p in learners[False].model.state_dict().items():
        assert torch.allclose(state[name], p, atol=1e-5, rtol=0), name


def test_pg_loss_and_reference_kl_packed_equal_padded(model_path: str, batch: Any, tmp_path: Path) -> None:  # noqa: F811
    """The plain policy-gradient loss with a KL term to the frozen reference (which runs packed too)."""
    extra = ["train.micro_batch_size=5", "algo.loss=pg", "train.use_ref_model=true",
             "algo.loss_params={kl_coef: 0.5}"]
    learners = learner_pair(model_path, tmp_path, extra)
    data = off_policy_batch(batch)
    stats = {packed: learner.policy_stats(data) for packed, learner in learners.items()}
    for k in ("old_logprobs", "old_entropy", "ref_logprobs"):
        assert torch.allclose(stats[True][k], stats[False][k], atol=1e-5), k
    data.ref_logprobs = stats[False]["ref_logprobs"]
    first = {packed: learner.update(data) for packed, learner in learners.items()}
    assert first[True] == pytest.approx(first[False], rel=1e-5, abs=1e-6, nan_ok=True)
    second = {packed: learner.policy_stats(data)["ref_logprobs"] for packed, learner in learners.items()}
    assert torch.allclose(second[True], second[False], atol=1e-5)


def test_packing_tokens_without_packing_is_refused_at_config_load() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.packing_tokens=64"])
    assert "train.packing_tokens=64 sizes packed sequences: it needs train.packing=true" in str(err.value)
    assert load_config(None, ["train.packing=true", "train.packing_tokens=64"]).train.packing_tokens == 64


def _causal_only(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    """An attention kernel for unpadded batches: causal over the whole sequence, the mask ignored."""
    return sdpa_attention_forward(module, query, key, value, None, **kwargs)


def test_a_model_whose_attention_crosses_packed_rows_is_refused() -> None:
    AttentionInterface.register("causal_only", _causal_only)
    model = tiny_qwen2(40, "causal_only")
    with pytest.raises(ValueError) as err:
        prepare_packing(model, torch.float32, True, None)
    message = str(err.value)
    assert "\n" not in message and message.startswith("train.packing: Qwen2ForCausalLM with attention 'causal_only' "
                                                      "lets packed rows attend to each other")
    model.set_attn_implementation("sdpa")
    assert prepare_packing(model, torch.float32, True, 16) == Packing(16)
    assert prepare_packing(model, torch.float32, False, None) is None
