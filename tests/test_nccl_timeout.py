"""An NCCL weight sync whose peers never join ends within its timeout on both ends (learner and
engine), aborting the communicator, instead of hanging the actor (fake_nccl: CPU stand-ins for the
CUDA stream/event and vLLM's PyNcclCommunicator that honour their contracts)."""

from __future__ import annotations

import threading
import time
from typing import Any

import fake_nccl
import pytest
import torch

from rl_div.rollout.vllm_extension import WeightSyncExtension
from rl_div.sync.buckets import WeightSyncError
from rl_div.sync.payloads import NcclGroup, nccl_broadcast, nccl_metas

TIMEOUT_S = 1.0


@pytest.fixture(autouse=True)
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nccl.STREAM.work.clear()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: fake_nccl.STREAM)
    monkeypatch.setattr(torch.cuda, "Event", fake_nccl.Event)


def run_bounded(fn: Any, limit_s: float) -> tuple[bool, BaseException | None, float]:
    """fn() in a daemon thread: (finished within limit_s, its exception, seconds)."""
    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 (reported to the test)
            box["err"] = err

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    return not thread.is_alive(), box.get("err"), time.monotonic() - started


def tiny_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def test_learner_broadcast_to_absent_engines_fails_within_its_timeout() -> None:
    model, comm = tiny_model(), fake_nccl.Blocked()
    group = NcclGroup("127.0.0.1", 1, world_size=2, timeout_s=TIMEOUT_S)
    holder = type("Learner", (), {})()
    holder._rl_div_nccl, holder._rl_div_nccl_group = comm, group  # joined earlier
    finished, err, seconds = run_bounded(lambda: nccl_broadcast(model, group, holder), TIMEOUT_S + 10)
    assert finished, "the learner's broadcast hung past its timeout"
    assert isinstance(err, WeightSyncError) and "learner (NCCL broadcast" in str(err), err
    assert "\n" not in str(err)
    assert comm.aborted.is_set() and comm.broadcasts == 4
    assert holder._rl_div_nccl is None  # the next sync joins a fresh group
    assert TIMEOUT_S <= seconds < TIMEOUT_S + 5


def test_engine_receive_without_the_learner_fails_within_its_timeout() -> None:
    comm = fake_nccl.Blocked()
    worker = WeightSyncExtension()
    worker.device = torch.device("cpu")
    worker._rl_div_nccl = comm
    worker._rl_div_loaded = 0
    metas = nccl_metas(tiny_model())
    finished, err, _ = run_bounded(lambda: worker.rl_div_receive_nccl(metas, TIMEOUT_S), TIMEOUT_S + 10)
    assert finished, "the engine's receive hung past its timeout"
    assert isinstance(err, WeightSyncError) and "NCCL receive" in str(err), err
    assert comm.aborted.is_set() and worker._rl_div_nccl is None
