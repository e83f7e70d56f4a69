"""The learner group through Ray end to end: train.strategy=fsdp2 with 2 learner actors against
one single learner, and resumes across world sizes and strategies: 2+2 == 4 steps with two
learners, 2 -> 1 -> 2 learners, single -> fsdp2 and fsdp2 -> single (real Trainer, rollout, reward
and learner actors, the tiny bootstrapped model, gloo between the learner ranks)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import ray
import torch
from helpers import FSDP2, group_run_config
from safetensors.torch import load_file

from rl_div.train.loop import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_model(bootstrapped_prime_gap: Path) -> str:
    if ray.is_initialized():  # an earlier module's Ray (2 CPUs) cannot hold two learners and a rollout actor
        ray.shutdown()
    yield str(bootstrapped_prime_gap)
    if ray.is_initialized():
        ray.shutdown()


def run(out: Path, base_model: str, *overrides: str, resume: bool = False) -> Path:
    train(group_run_config(out, base_model, *overrides), resume=resume)
    return out


def policy(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / f"step_{step:06d}" / "policy" / "model.safetensors"))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), (name, float((a[name] - b[name]).abs().max()))


def copy_run(src: Path, dst: Path, at_step: int) -> Path:
    """A copy of a run whose latest checkpoint is step at_step (later ones removed): --resume
    continues from there."""
    shutil.copytree(src, dst)
    root = dst / "checkpoints"
    for ckpt in root.glob("step_*"):
        if int(ckpt.name.split("_")[1]) > at_step:
            shutil.rmtree(ckpt)
    (root / "latest").write_text(f"step_{at_step:06d}")
    return dst


@pytest.fixture(scope="module")
def single(base_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("single"), base_model, "train.steps=4")


@pytest.fixture(scope="module")
def sharded(base_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("fsdp2"), base_model, "train.steps=4", *FSDP2)


def test_two_fsdp2_learners_match_one_learner(base_model: str, single: Path, sharded: Path) -> None:
    # the same rollouts (seeded sampling of the same weights), the same update: the same policy
    for step in (3, 4):
        assert_close(policy(sharded, step), policy(single, step), atol=1e-4)
    assert any(not torch.equal(policy(single, 3)[k], v) for k, v in load_file(
        str(next(Path(base_model).glob("*.safetensors")))).items() if k in policy(single, 3))


def test_resume_across_world_sizes(base_model: str, sharded: Path, tmp_path: Path) -> None:
    """2 learners for 2 steps, then 2 more with 2 learners: exactly the 4-step run. From the same
    2-step checkpoint: 1 learner for step 3 (DCP reshards), 2 again for step 4: the same policy."""
    two = copy_run(sharded, tmp_path / "two", at_step=2)
    run(two, base_model, "train.steps=4", *FSDP2, resume=True)
    for step in (3, 4):
        assert_close(policy(two, step), policy(sharded, step), atol=0.0)
    varied = copy_run(sharded, tmp_path / "varied", at_step=2)
    run(varied, base_model, "train.steps=3", "train.strategy=fsdp2", "train.num_learners=1", resume=True)
    run(varied, base_model, "train.steps=4", *FSDP2, resume=True)
    for step in (3, 4):
        assert_close(policy(varied, step), policy(sharded, step), atol=1e-4)


def test_resume_across_strategies(base_model: str, single: Path, sharded: Path, tmp_path: Path) -> None:
    """A single learner's checkpoint resumed by 2 fsdp2 learners, and an fsdp2 checkpoint by a
    single learner: each continues as the run it came from."""
    to_fsdp2 = copy_run(single, tmp_path / "to_fsdp2", at_step=2)
    run(to_fsdp2, base_model, "train.steps=4", *FSDP2, resume=True)
    assert_close(policy(to_fsdp2, 4), policy(single, 4), atol=1e-4)
    to_single = copy_run(sharded, tmp_path / "to_single", at_step=3)
    run(to_single, base_model, "train.steps=4", resume=True)
    assert_close(policy(to_single, 4), policy(sharded, 4), atol=1e-4)
