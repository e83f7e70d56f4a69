"""The hf rollout backend without Ray: batch layout, sampling log-probs and chunked generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl_div.learner import policy_forward, prompt_logprob_mask
from rl_div.models import build_char_tokenizer, make_tiny_llama, save_policy
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
        torch.testing.assert_close(batch.rollout_logprobs[row, :length].double(), expected, atol=1e-4, rtol=0)
    # and the learner's padded, batched forward agrees with the sampler
    with torch.no_grad():
        logp, entropy, prompt_logp = policy_forward(worker.model, batch, chunk_rows=7, with_prompt=True)
    mask = batch.response_mask.bool()
    assert (logp - batch.rollout_logprobs)[mask].abs().max() < 1e-4
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
