"""The learner group through Ray end to end: train.strategy=fsdp2 with 2 learner actors against
one single learner, and a resume after changing 2 learners to 1 (real Trainer, rollout, reward and
learner actors, the tiny bootstrapped model, gloo between the learner ranks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from rl_div.config import load_config
from rl_div.trainer import train

pytestmark = pytest.mark.slow
FSDP2 = ["train.strategy=fsdp2", "train.num_learners=2"]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rl_div.tasks.bootstrap import bootstrap_base_model

    if ray.is_initialized():  # an earlier module's Ray (2 CPUs) cannot hold two learners and a rollout actor
        ray.shutdown()
    path = bootstrap_base_model("prime_gap", tmp_path_factory.mktemp("bootstrap"), steps=40, seed=0, log=None)
    yield str(path)
    if ray.is_initialized():
        ray.shutdown()


def run(out: Path, base_model: str, *overrides: str, resume: bool = False) -> Path:
    cfg = load_config(None, [
        f"model.path={base_model}", f"run.output_dir={out}", "rollout.prompts_per_step=4", "rollout.group_size=4",
        "eval.every=0", "eval.at_start=false", "eval.at_end=false", "eval.embedding_metrics=false",
        "data.num_eval_prompts=4", "tracking.progress=false", "tracking.tensorboard=false", "cluster.num_cpus=4",
        "checkpoint.every=1", *overrides])
    train(cfg, resume=resume)
    return out


def policy(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / f"step_{step:06d}" / "policy" / "model.safetensors"))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), (name, float((a[name] - b[name]).abs().max()))


def test_two_fsdp2_learners_match_one_learner_and_resume_on_one(base_model: str, tmp_path: Path) -> None:
    single = run(tmp_path / "single", base_model, "train.steps=3")
    sharded = run(tmp_path / "fsdp2", base_model, "train.steps=3", *FSDP2)
    # the same rollouts (seeded sampling of the same weights), the same update: the same policy
    assert_close(policy(sharded, 3), policy(single, 3), atol=1e-4)
    assert any(not torch.equal(policy(single, 3)[k], v) for k, v in load_file(
        str(next(Path(base_model).glob("*.safetensors")))).items() if k in policy(single, 3))
    # 2 learners for 2 steps, then resume with 1 (DCP reshards) for the third: the same policy
    resumed = run(tmp_path / "resumed", base_model, "train.steps=2", *FSDP2)
    run(resumed, base_model, "train.steps=3", "train.strategy=fsdp2", "train.num_learners=1", resume=True)
    assert_close(policy(resumed, 3), policy(sharded, 3), atol=1e-4)
