"""vLLM sleep level 2 (GPU-only) against a stand-in that honours vLLM's sleep contract (fake_vllm):
an engine whose weights were discarded refuses to sample until a sync, and the trainer's evaluation
path syncs again so that the training rollout after it has weights."""

from __future__ import annotations

import sys
from pathlib import Path

import fake_vllm
import pytest
import torch
from helpers import run_config

from rl_div.data import PromptRecord
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy
from rl_div.rollout.base import SamplingSpec
from rl_div.sync.buckets import WeightSyncError
from rl_div.sync.payloads import CudaIpcPayload
from rl_div.tasks import TASKS

PROMPTS = [PromptRecord(prompt="1 2", answer="3")]
SPEC = SamplingSpec(n=2, max_new_tokens=2)


@pytest.fixture()
def model_path(tmp_path: Path) -> str:
    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    return str(save_policy(make_tiny_llama(tok, seed=0), tok, tmp_path / "tiny"))


def colocated_worker(model_path: str, sleep_level: int, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """A VLLMRolloutWorker on fake_vllm as on a GPU with cuda_ipc (sleep mode on)."""
    import rl_div.rollout.vllm as backend

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", fake_vllm.inputs)
    monkeypatch.setattr(backend, "check_vllm", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fake_vllm.LLM.samples = []
    return backend.VLLMRolloutWorker(model_path, weight_sync="cuda_ipc", sleep_level=sleep_level)


def payload() -> CudaIpcPayload:
    return CudaIpcPayload({"gpu-0": [(f"w{i}", torch.full((2,), float(i + 1))) for i in range(3)]})


def test_level_2_sleep_refuses_to_sample_until_a_sync(model_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = colocated_worker(model_path, 2, monkeypatch)
    worker.set_weights(payload(), 1)
    worker.generate(PROMPTS, SPEC)  # an evaluation: the engine sleeps at level 2 afterwards
    with pytest.raises(WeightSyncError, match="sleep_level 2 discarded its weights"):
        worker.generate(PROMPTS, SPEC)  # the training rollout with no sync in between
    assert fake_vllm.LLM.samples == [True]  # never sampled from discarded weights
    worker.set_weights(payload(), 1)
    worker.generate(PROMPTS, SPEC)
    assert fake_vllm.LLM.samples == [True, True]


def test_level_1_sleep_keeps_sampling_without_a_sync(model_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = colocated_worker(model_path, 1, monkeypatch)
    for _ in range(3):
        worker.generate(PROMPTS, SPEC)
    assert fake_vllm.LLM.samples == [True, True, True]


COLOCATED = ["rollout.backend=vllm", "train.num_gpus=1", "rollout.num_gpus_per_worker=1"]


@pytest.mark.parametrize(("overrides", "syncs"), [
    (["rollout.weight_sync=cuda_ipc", "rollout.sleep_level=2"], True),
    (["rollout.weight_sync=cuda_ipc", "rollout.sleep_level=1"], False),
    (["rollout.weight_sync=nccl", "rollout.sleep_level=2"], False),
])
def test_evaluation_rollout_is_followed_by_a_sync_where_sleep_discards_weights(
        tmp_path: Path, model_path: str, overrides: list[str], syncs: bool) -> None:
    """RolloutPipeline.generate (Trainer.evaluate's rollout) pushes the weights again after collecting
    where, and only where, the engines discard their weights on sleep (the training rollout that
    follows an evaluation has no sync of its own before it)."""
    from rl_div.train.rollout_pipeline import RolloutPipeline

    calls: list[str] = []
    pipeline = RolloutPipeline.__new__(RolloutPipeline)  # no actors: launch/collect/sync are recorded
    pipeline.cfg = run_config(model_path, tmp_path, *COLOCATED, *overrides)
    pipeline.launch = lambda prompts, spec, salt: calls.append("launch") or "flight"
    pipeline.collect = lambda flight: calls.append("collect") or "batch"
    pipeline.sync_weights = lambda: calls.append("sync")
    assert pipeline.generate(PROMPTS, SPEC, salt=0) == "batch"
    assert calls == ["launch", "collect", *(["sync"] if syncs else [])]
    from rl_div.train.rollout_pipeline import discards_weights_on_sleep

    assert discards_weights_on_sleep(pipeline.cfg) == syncs
