"""The hf rollout backend without Ray: batch layout, sampling log-probs and chunked generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl_div.learner.forward import policy_forward, prompt_logprob_mask
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.tasks import TASKS


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> HFRolloutWorker:
    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    path = save_policy(make_tiny_llama(tok, seed=1), tok, tmp_path_factory.mktemp("m") / "tiny")
    return HFRolloutWorker(str(path), device="cpu")


def test_layout_and_logprobs_match_an_independent_forward(worker: HFRolloutWorker) -> None:
    prompts = TASKS["prime_gap"].make_prompts("train", 3, seed=0)
    batch = worker.generate(prompts, SamplingSpec(n=4, max_new_tokens=5, seed=3))
    assert batch.size == 12 and batch.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    eos = worker.tokenizer.eos_token_id
    for row in range(batch.size):
        length = int(batch.response_mask[row].sum())
        ids = batch.response_ids[row, :length].tolist()
        assert eos not in ids[:-1]  # nothing after the first EOS is kept
        assert batch.truncated[row] == (ids[-1] != eos)
        assert batch.response_texts[row] == worker.tokenizer.decode(ids, skip_special_tokens=True)
    # independent reference: one unpadded forward per row, log-softmax in float64
    for row in range(batch.size):
        prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()]
        length = int(batch.response_mask[row].sum())
        response = batch.response_ids[row, :length]
        with torch.no_grad():
            logits = worker.model(input_ids=torch.cat([prompt, response])[None]).logits[0].double()
        expected = torch.log_softmax(logits[len(prompt) - 1 : -1], -1).gather(1, response[:, None]).squeeze(1)
        torch.testing.assert_close(batch.behavior_logprobs[row, :length].double(), expected, atol=1e-4, rtol=0)
    # and the learner's padded, batched forward agrees with the sampler
    with torch.no_grad():
        logp, entropy, prompt_logp = policy_forward(worker.model, batch, chunk_rows=7, with_prompt=True)
    mask = batch.response_mask.bool()
    assert (logp - batch.behavior_logprobs)[mask].abs().max() < 1e-4
    assert prompt_logp is not None and prompt_logp.shape == batch.prompt_ids.shape
    assert bool(((prompt_logp <= 0) | ~prompt_logprob_mask(batch.prompt_mask).bool()).all())


def test_chunked_generation_keeps_groups(worker: HFRolloutWorker) -> None:
    prompts = TASKS["prime_gap"].make_prompts("train", 5, seed=1)
    worker.max_batch_rows = 8  # 2 prompts x 4 samples per generate() call -> 3 calls
    try:
        batch = worker.generate(prompts, SamplingSpec(n=4, max_new_tokens=4, seed=0))
    finally:
        worker.max_batch_rows = 4096
    assert batch.size == 20
    assert batch.group_index.tolist() == [g for g in range(5) for _ in range(4)]
    assert [p.uid for p in batch.prompts[::4]] == [p.uid for p in prompts]


def test_set_weights_is_strict(worker: HFRolloutWorker, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in worker.model.state_dict().items()}
    state.pop(next(iter(state)))
    with pytest.raises(RuntimeError):
        worker.set_weights(state, 1)


@pytest.fixture(scope="module")
def opinionated_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny model whose generation_config asks for a repetition penalty, top-k and top-p, as real
    checkpoints do (Qwen2.5 ships repetition_penalty 1.1, top_k 20, top_p 0.8)."""
    tok = build_char_tokenizer()  # ~100 tokens: more than transformers' own default top_k of 50
    model = make_tiny_llama(tok, seed=2)
    with torch.no_grad():  # sharper next-token distributions, so a penalty shows
        model.lm_head.weight.mul_(8.0)
    model.generation_config.update(repetition_penalty=1.5, top_k=5, top_p=0.8, do_sample=True)
    return str(save_policy(model, tok, tmp_path_factory.mktemp("opinionated") / "policy"))


def test_sampling_uses_the_spec_and_nothing_from_the_checkpoint(opinionated_checkpoint: str) -> None:
    """The empirical distribution of the first sampled token equals softmax(logits / T) from an
    independent forward pass: no repetition penalty, top-k or top-p from generation_config."""
    worker = HFRolloutWorker(opinionated_checkpoint, device="cpu")
    record = TASKS["prime_gap"].make_prompts("train", 1, seed=0)
    n, temperature = 3000, 1.3
    batch = worker.generate(record, SamplingSpec(n=n, temperature=temperature, max_new_tokens=1, seed=0))
    prompt = batch.prompt_ids[0][batch.prompt_mask[0].bool()]
    with torch.no_grad():
        logits = worker.model(input_ids=prompt[None]).logits[0, -1].double()
    expected = torch.softmax(logits / temperature, -1)
    counts = torch.bincount(batch.response_ids[:, 0], minlength=expected.numel()).double()
    total_variation = 0.5 * float((counts / n - expected).abs().sum())
    # sampling noise alone: about 0.5 * sum_v sqrt(2 p_v / (pi n)) < 0.08 for 100 tokens and n = 3000
    assert total_variation < 0.1, f"samples do not follow the model's tempered distribution (TV {total_variation:.3f})"
    assert len(counts.nonzero()) > 5  # more tokens than the checkpoint's top_k=5 would ever allow
    # the log-probs reported with longer samples are the learner's
    long = worker.generate(record, SamplingSpec(n=8, temperature=temperature, max_new_tokens=12, seed=1))
    with torch.no_grad():
        logp, _, _ = policy_forward(worker.model, long, chunk_rows=64, temperature=temperature)
    assert (logp - long.behavior_logprobs)[long.response_mask.bool()].abs().max() < 1e-5
