"""A checkpoint folder someone else wrote cannot run code on --resume (issue 29 item 1).

torch's DCP reader unpickles dcp/.metadata and reads non-tensor values with
torch.load(weights_only=False). Each crafted file below carries a payload that creates a marker file
when unpickled; resuming must refuse the file and the marker must never appear, for
train.strategy 'single' (Learner.load -> load_dcp) and 'fsdp2' (ShardedLearner.load, in a spawned
process joining a one-rank gloo group). The checkpoint is real: a learner's model and AdamW state
after one step, written by torch.distributed.checkpoint under the keys the FSDP2 learner uses.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import socket
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dist_jobs
import pytest
import torch
from helpers import rank_job_config

from rl_div.learner.single import Learner
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy


class _RunsCodeOnLoad:
    """Unpickling this calls open(path, "w"): a stand-in for any code a foreign pickle could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    tokenizer = build_char_tokenizer("0123456789 ")
    model = make_tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    return str(save_policy(model, tokenizer, tmp_path_factory.mktemp("m") / "base"))


def stepped_learner(model_path: str, out: Path) -> Learner:
    learner = Learner(rank_job_config(model_path, str(out), []), model_path)
    for p in learner.model.parameters():
        p.grad = torch.ones_like(p)
    learner.optimizer.step()
    learner.scheduler.step()
    learner.version = 1
    return learner


def write_dcp_checkpoint(learner: Learner, ckpt: Path, lr_value: object = None) -> Path:
    """learner.save's files plus dcp/ (model + optimizer, as ShardedLearner.save writes them);
    lr_value replaces the first param group's lr (a non-tensor value DCP stores pickled)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    learner.save(str(ckpt))
    model_sd, optim_sd = get_state_dict(learner.model, learner.optimizer)
    if lr_value is not None:
        optim_sd["param_groups"][0]["lr"] = lr_value
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(ckpt / "dcp"))
    return ckpt


def crafted_metadata(ckpt: Path, marker: Path) -> None:
    (ckpt / "dcp" / ".metadata").write_bytes(pickle.dumps(_RunsCodeOnLoad(marker)))


def test_a_real_dcp_checkpoint_still_loads(model_path: str, tmp_path: Path) -> None:
    learner = stepped_learner(model_path, tmp_path)
    ckpt = write_dcp_checkpoint(learner, tmp_path / "ckpt")
    other = Learner(rank_job_config(model_path, str(tmp_path), []), model_path)
    other.load(str(ckpt))
    assert other.version == 1
    for name, p in learner.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[name], p), name
    moments = [s["exp_avg"] for s in other.optimizer.state.values()]
    assert moments and all(torch.allclose(m, torch.full_like(m, 0.1)) for m in moments)  # (1 - beta1) * grad 1
    assert other.optimizer.param_groups[0]["lr"] == learner.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("payload", ["metadata", "param_group_value"])
def test_single_resume_from_a_crafted_dcp_folder_runs_no_code(model_path: str, tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "code_ran"
    learner = stepped_learner(model_path, tmp_path)
    if payload == "metadata":
        ckpt = write_dcp_checkpoint(learner, tmp_path / "ckpt")
        crafted_metadata(ckpt, marker)
    else:
        ckpt = write_dcp_checkpoint(learner, tmp_path / "ckpt", lr_value=_RunsCodeOnLoad(marker))
    other = Learner(rank_job_config(model_path, str(tmp_path), []), model_path)
    with pytest.raises(pickle.UnpicklingError):
        other.load(str(ckpt))
    assert not marker.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_resume_from_a_crafted_dcp_folder_runs_no_code(model_path: str, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    ckpt = write_dcp_checkpoint(stepped_learner(model_path, tmp_path), tmp_path / "ckpt")
    crafted_metadata(ckpt, marker)
    extra = ["train.strategy=fsdp2", "train.num_learners=1"]
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        future = pool.submit(dist_jobs.train_job, 0, 1, free_port(), model_path, str(tmp_path), extra, None, 0,
                             load=str(ckpt))
        with pytest.raises(pickle.UnpicklingError):
            future.result(timeout=300)
    assert not marker.exists()
