"""End-to-end: real Ray actors, the tiny bootstrapped model, a few steps of every method.

Each test builds a real Trainer (rollout, reward and learner actors) on one local Ray instance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from rl_div.config import Config, load_config
from rl_div.models import load_policy
from rl_div.tracking import read_metrics
from rl_div.trainer import Trainer, train

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rl_div.tasks.bootstrap import bootstrap_base_model

    cache = tmp_path_factory.mktemp("bootstrap")
    path = bootstrap_base_model("prime_gap", cache, steps=40, seed=0, log=None)
    yield str(path)
    if ray.is_initialized():
        ray.shutdown()


def make_cfg(tmp_path: Path, base_model: str, *overrides: str, config: str | None = None) -> Config:
    return load_config(config, [
        f"model.path={base_model}", f"run.output_dir={tmp_path / 'run'}", "run.plugins=[plugins.my_algos]",
        "train.steps=2", "rollout.prompts_per_step=4", "rollout.group_size=4", "eval.n=4",
        "eval.every=0", "eval.at_start=false", "eval.embedding_metrics=false", "data.num_eval_prompts=4",
        "tracking.progress=false", "tracking.tensorboard=false", "cluster.num_cpus=2", *overrides,
    ])


def train_rows(out: Path) -> list[dict]:
    return read_metrics(out / "metrics.jsonl", kind="train")


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = sorted((out / "checkpoints").glob("step_*"))[-1]
    return load_file(str(ckpt / "policy" / "model.safetensors"))


def weights_of(path: str) -> dict[str, torch.Tensor]:
    model, _ = load_policy(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


METHODS = ["configs/demo_grpo.yaml", "configs/demo_arm.yaml", "configs/demo_steer.yaml",
           "configs/demo_novelty.yaml"]
PRESETS = ["dr_grpo", "passk", "unlikeliness", "clip_cov", "kl_cov", "high_entropy"]


@pytest.mark.parametrize("config", METHODS)
def test_demo_method_configs_train_and_sync(tmp_path: Path, base_model: str, config: str) -> None:
    cfg = make_cfg(tmp_path, base_model, config=str(REPO / config))
    out = train(cfg)
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["faults/reward_errors"] == 0 and r["faults/nonfinite_loss"] == 0
        # after every sync the learner's log-probs of the sampled tokens match the sampler's
        assert r["sync/logprob_gap_max"] < 1e-3
        assert 0 < r["policy/entropy"] < math.log(200)
    assert (out / "config.yaml").exists() and (out / "eval" / "step_000002.json").exists()
    evaluation = json.loads((out / "eval" / "step_000002.json").read_text())
    assert evaluation["metrics"]["n"] == 4 and len(evaluation["problems"]) == 4
    # 8 groups of 4 on a base model with pass@1 ~ 0.25: some group has mixed rewards, so the
    # policy must have moved (checked on the saved weights, not on the run's own counters)
    before = weights_of(base_model)
    assert any(not torch.equal(v, before[k]) for k, v in final_weights(out).items())


@pytest.mark.parametrize("preset", PRESETS)
def test_algo_presets_run(tmp_path: Path, base_model: str, preset: str) -> None:
    out = train(make_cfg(tmp_path, base_model, f"algo={preset}", "train.steps=1"))
    row = train_rows(out)[-1]
    assert row["faults/nonfinite_loss"] == 0 and row["sync/logprob_gap_max"] < 1e-3


def test_plugin_advantage_runs_in_ray_workers(tmp_path: Path, base_model: str) -> None:
    out = train(make_cfg(tmp_path, base_model, "algo.advantage=test_raw_reward", "train.steps=1"))
    assert train_rows(out)[-1]["test/raw_reward_calls"] == 1.0


def test_resume_2_plus_2_equals_4(tmp_path: Path, base_model: str) -> None:
    common = ("checkpoint.every=2", "rollout.prompts_per_step=8", "rollout.group_size=8", "train.lr=0.01")
    full = train(make_cfg(tmp_path / "a", base_model, "train.steps=4", *common))
    train(make_cfg(tmp_path / "b", base_model, "train.steps=2", *common))
    resumed = train(make_cfg(tmp_path / "b", base_model, "train.steps=4", *common), resume=True)
    a, b = final_weights(full), final_weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)

    def comparable(rows: list[dict]) -> dict[int, dict]:
        return {r["step"]: {k: v for k, v in r.items() if not k.startswith("time") and k != "kind"} for r in rows}

    ra, rb = comparable(train_rows(full)), comparable(train_rows(resumed))
    assert rb.keys() == {1, 2, 3, 4}
    assert ra[4]["policy/version"] > 0, "the run must actually have updated the policy"
    for step in (3, 4):
        assert ra[step] == pytest.approx(rb[step], rel=1e-6, abs=1e-7, nan_ok=True)


def test_reward_errors_and_hangs_are_counted_and_the_run_goes_on(tmp_path: Path, base_model: str) -> None:
    out = train(make_cfg(
        tmp_path, base_model, "run.plugins=[plugins.my_algos, plugins.my_rewards]", "reward.timeout_s=1.0",
        "reward.rewards=[{name: task_verifier}, {name: test_sleep, weight: 0.0, params: {seconds: 5}}]",
        "train.steps=1", "rollout.prompts_per_step=1", "rollout.group_size=2", "eval.at_end=false"))
    row = train_rows(out)[-1]
    assert row["faults/reward_timeouts"] == 2 and row["reward/nan_frac"] == 1.0
    assert row["train/skipped_zero_signal"] == 1  # no scored response: nothing to learn from

    out = train(make_cfg(
        tmp_path / "raise", base_model, "run.plugins=[plugins.my_algos, plugins.my_rewards]",
        "reward.rewards=[{name: task_verifier}, {name: test_exit, weight: 0.0}]", "train.steps=1",
        "rollout.prompts_per_step=1", "rollout.group_size=2", "eval.at_end=false"))
    row = train_rows(out)[-1]
    assert row["faults/reward_errors"] == 2 and row["reward/nan_frac"] == 1.0


def test_malformed_dataset_rows_are_skipped_and_counted(tmp_path: Path, base_model: str) -> None:
    data = tmp_path / "prompts.jsonl"
    good = [{"question": f"N={n}", "answer": "2"} for n in range(10, 18)]
    data.write_text("\n".join(json.dumps(r) for r in good) + '\n{"question": "x"}\nnot json\n')
    out = train(make_cfg(tmp_path, base_model, "data.source=jsonl", f"data.path={data}",
                         "reward.rewards=[{name: math_verify}]", "train.steps=1"))
    assert train_rows(out)[-1]["data/skipped_rows"] == 2


def test_nan_loss_is_skipped_and_weights_stay(tmp_path: Path, base_model: str) -> None:
    out = train(make_cfg(tmp_path, base_model, "algo.loss=test_nan_loss", "algo.advantage=test_raw_reward",
                         "algo.advantage_params={offset: 0.5}"))
    rows = train_rows(out)
    assert rows[-1]["faults/nonfinite_loss"] == 2 and rows[-1]["policy/version"] == 0
    before = weights_of(base_model)
    for k, v in final_weights(out).items():
        assert torch.equal(v, before[k])


def test_killed_rollout_actor_is_restarted_with_current_weights(tmp_path: Path, base_model: str) -> None:
    cfg = make_cfg(tmp_path, base_model, "train.steps=3", "train.lr=0.01", "rollout.group_size=8",
                   "algo.advantage=test_raw_reward", "algo.advantage_params={offset: 0.5}")
    trainer = Trainer(cfg)
    try:
        trainer.train_step()
        old_pid = ray.get(trainer.rollout_workers[0].pid.remote())
        ray.kill(trainer.rollout_workers[0], no_restart=True)
        metrics = trainer.train_step()
        assert metrics["faults/rollout_restarts"] == 1
        assert ray.get(trainer.rollout_workers[0].pid.remote()) != old_pid
        assert metrics["policy/version"] >= 1
        # the new actor sampled with the learner's current (updated) weights, not the base model's
        assert metrics["sync/logprob_gap_max"] < 1e-3
    finally:
        trainer.close()
