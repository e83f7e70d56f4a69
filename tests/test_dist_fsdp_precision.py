"""FSDP2 over 2 gloo ranks: the model is loaded once (meta-device build, rank 0's load broadcast into
the shards, rl_div.learner.shard_load) and model.dtype bfloat16 runs under FSDP2's MixedPrecisionPolicy
(bf16 parameters in forward/backward, float32 gradient reduction and master weights,
rl_div.learner.sharding.mixed_precision) instead of autocast.

Tolerances of the bf16 test. The reference is the same sharded learner in ONE process (world 1, same
policy). With one row per micro-batch every row's forward and backward has the same shapes in both
worlds, so the same bf16 arithmetic; each row's bf16 gradient is then summed in float32 by both
(reduce_dtype), in another order: log-probs agree to 1e-5 and parameters after 2 AdamW steps to 1e-6
(measured 7e-9). (With several rows per micro-batch, the rows a micro-batch holds differ between the
worlds, so do its padded shapes and with them the bf16 roundings; on this random tiny model the bf16
gradient noise then flips the sign of AdamW's first steps (+-lr) on most weights: measured 60%.)
Against the plain learner under bf16 autocast (a different bf16 scheme: autocast keeps norms and
embeddings in float32) the log-probs agree to 1e-2 (measured 1.8e-3, as far as either is from float32:
1.9e-3, the log-probs of this near-uniform model being small).
"""

from __future__ import annotations

import multiprocessing as mp
import socket
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import dist_precision_jobs as jobs
import pytest
import torch
from helpers import rank_job_config, tiny_prime_gap_llama

from rl_div.learner.single import Learner
from rl_div.models.loading import load_policy
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.tasks import TASKS

COMMON = ["train.micro_batch_size=3", "train.mini_batch_size=8", "train.strategy=fsdp2", "train.num_learners=2"]
BF16 = ["model.dtype=bfloat16"]
ONE_ROW = [*COMMON, "train.micro_batch_size=1"]  # every row its own micro-batch: the same shapes in any world


@pytest.fixture(scope="module")
def pools() -> Iterator[list[ProcessPoolExecutor]]:
    processes = [ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) for _ in range(2)]
    yield processes
    for p in processes:
        p.shutdown()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_prime_gap_llama(tmp_path_factory.mktemp("m"), seed=4)


@pytest.fixture(scope="module")
def batch(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """8 real rollouts scored by the float32 policy, signed advantages."""
    worker = HFRolloutWorker(model_path, dtype="float32", device="cpu")
    b = worker.generate(TASKS["prime_gap"].make_prompts("train", 2, seed=1), SamplingSpec(n=4, max_new_tokens=8))
    stats = Learner(rank_job_config(model_path, str(tmp_path_factory.mktemp("o")), []), model_path).policy_stats(b)
    b.old_logprobs, b.old_entropy = stats["old_logprobs"], stats["old_entropy"]
    b.advantages = torch.linspace(-1.0, 1.0, b.size)
    return b


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ranks(pools: list[ProcessPoolExecutor], world: int, job: Any, *args: Any) -> list[Any]:
    port = free_port()
    futures = [pools[r].submit(job, r, world, port, *args) for r in range(world)]
    return [f.result(timeout=600) for f in futures]


def test_ranks_build_on_meta_and_receive_rank0s_weights(pools: list[ProcessPoolExecutor], model_path: str,
                                                        tmp_path: Path) -> None:
    got = ranks(pools, 2, jobs.load_job, model_path, str(tmp_path), COMMON)
    loaded, _ = load_policy(model_path, dtype="float32")
    want = loaded.state_dict()
    for rank in got:
        assert rank["devices_before"] == {"meta"}  # nothing allocated, nothing read before setup
        assert rank["tied"]
    params = got[0]["params"]
    assert set(params) == set(want)
    for name, value in want.items():
        assert torch.equal(params[name], value), name
    for name, value in loaded.named_buffers():  # rotary inv_freq: in no state dict, broadcast from rank 0
        for rank in got:
            assert torch.equal(rank["buffers"][name], value), name


def test_bf16_mixed_precision_on_two_ranks_matches_one_process(pools: list[ProcessPoolExecutor], model_path: str,
                                                               batch: Any, tmp_path: Path) -> None:
    two = ranks(pools, 2, jobs.stats_and_train_job, model_path, str(tmp_path), [*ONE_ROW, *BF16], batch, 2)
    one = ranks(pools, 1, jobs.stats_and_train_job, model_path, str(tmp_path), [*ONE_ROW, *BF16], batch, 2)[0]
    fp32 = ranks(pools, 1, jobs.stats_and_train_job, model_path, str(tmp_path), ONE_ROW, batch, 0)[0]
    plain = pools[0].submit(jobs.plain_stats, model_path, str(tmp_path), BF16, batch).result(timeout=600)
    mask = batch.response_mask.bool()
    assert two[0]["dtypes"] == one["dtypes"] == {"torch.float32"}  # master weights stay float32
    assert two[0]["compute_dtypes"] == one["compute_dtypes"] == {"torch.bfloat16"}  # gathered, computed in bf16
    assert fp32["compute_dtypes"] == {"torch.float32"}
    for k in ("old_logprobs", "old_entropy"):
        torch.testing.assert_close(two[0]["stats"][k], one["stats"][k], rtol=0, atol=1e-5)
        bf16_gap = float((one["stats"][k] - fp32["stats"][k])[mask].abs().max())
        assert bf16_gap > 1e-5  # bf16's rounding shows (float32 noise here is ~1e-7)
        assert float((one["stats"][k] - plain[k])[mask].abs().max()) < 1e-2
    for name, value in one["params"].items():
        torch.testing.assert_close(two[0]["params"][name], value, rtol=0, atol=1e-6, msg=name)
    moved = max(float((one["params"][n] - fp32["params"][n]).abs().max()) for n in fp32["params"])
    assert moved > 1e-4  # the updates moved the weights
    for got, want in zip(two[0]["metrics"], one["metrics"], strict=True):
        assert got["train/optimizer_steps"] == want["train/optimizer_steps"] > 0
        for k in ("loss/total", "policy/entropy_train", "train/grad_norm"):
            assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
