"""End-to-end: real Ray actors, the tiny bootstrapped model, a few steps of every method.

Each test builds a real Trainer (rollout, reward and learner actors) on one local Ray instance.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from rl_div.config import Config, ConfigError, load_config
from rl_div.models.loading import load_policy
from rl_div.run.checkpoint import latest_checkpoint, write_text_atomic
from rl_div.run.tracking import read_metrics
from rl_div.train.loop import Trainer, train

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def base_model(bootstrapped_prime_gap: Path) -> str:
    yield str(bootstrapped_prime_gap)
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
           "configs/demo_novelty.yaml", "configs/demo_dra.yaml"]
PRESETS = ["dr_grpo", "passk", "unlikeliness", "clip_cov", "kl_cov", "high_entropy", "entropy_advantage", "repo",
           "w_reinforce", "pkpo"]
# KL-Cov's |log ratio| term needs a second optimizer step to act (config load refuses one step per batch)
PRESET_OVERRIDES = {"kl_cov": ["train.mini_batch_size=8"]}


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
        # The update's forward is pi_old, so the separate forward (timed as learner_forward) never runs
        # in a training step (rl_div.learner.onpolicy); ARM's shaping is finished from it
        # (rl_div.learner.fused_advantage).
        assert "time/learner_forward" not in r, r.keys()
        assert ("arm/answer_conf_mean" in r) == config.endswith("arm.yaml"), r.keys()
    assert (out / "config.yaml").exists() and (out / "eval" / "step_000002.json").exists()
    evaluation = json.loads((out / "eval" / "step_000002.json").read_text())
    assert evaluation["metrics"]["n"] == 4 and len(evaluation["problems"]) == 4
    # 8 groups of 4 on a base model with pass@1 ~ 0.25: some group has mixed rewards, so the
    # policy must have moved (checked on the saved weights, not on the run's own counters)
    before = weights_of(base_model)
    assert any(not torch.equal(v, before[k]) for k, v in final_weights(out).items())


@pytest.mark.parametrize("preset", PRESETS)
def test_algo_presets_run(tmp_path: Path, base_model: str, preset: str) -> None:
    out = train(make_cfg(tmp_path, base_model, f"algo={preset}", "train.steps=1", *PRESET_OVERRIDES.get(preset, [])))
    row = train_rows(out)[-1]
    assert row["faults/nonfinite_loss"] == 0 and row["sync/logprob_gap_max"] < 1e-3


def test_plugin_advantage_runs_in_ray_workers(tmp_path: Path, base_model: str) -> None:
    out = train(make_cfg(tmp_path, base_model, "algo.advantage=test_raw_reward", "train.steps=1"))
    assert train_rows(out)[-1]["test/raw_reward_calls"] == 1.0


@pytest.mark.parametrize("lag", [0, 1])
def test_resume_2_plus_2_equals_4(tmp_path: Path, base_model: str, lag: int) -> None:
    """With lag 1 the checkpoint holds the batch already generated (with version-1 weights) for step 3."""
    common = ("checkpoint.every=2", "rollout.prompts_per_step=8", "rollout.group_size=8", "train.lr=0.01",
              f"rollout.max_off_policy_steps={lag}")
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
    # the batch of step s was sampled by the version after step s - 1 - lag: lag 1 lags by step s - 1's update
    versions = [0, 0] + [ra[step]["policy/version"] for step in (1, 2, 3, 4)]
    assert [ra[s]["offpolicy/policy_lag"] for s in (1, 2, 3, 4)] == [
        versions[s] - versions[s - lag] for s in (1, 2, 3, 4)]
    assert (sorted((resumed / "checkpoints").glob("step_*"))[-1] / "in_flight.pt").exists() == bool(lag)


def test_one_step_off_policy_lags_exactly_one_and_is_corrected(tmp_path: Path, base_model: str) -> None:
    out = train(make_cfg(tmp_path, base_model, "train.steps=3", "train.lr=0.01", "rollout.group_size=8",
                         "rollout.max_off_policy_steps=1", "algo.advantage=test_raw_reward",
                         "algo.advantage_params={offset: 0.5}", "eval.at_end=true"))
    rows = train_rows(out)
    # step 1 trains on a batch sampled by version 0 with the learner at 0; then always one behind
    assert [r["offpolicy/policy_lag"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["offpolicy/policy_lag_mean"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["policy/version"] for r in rows] == [1.0, 2.0, 3.0]
    # staleness: the sampler's log-probs differ from pi_old once the policy moved (lr 0.01), not before
    assert rows[0]["sync/logprob_gap_max"] < 1e-3 < rows[1]["sync/logprob_gap_max"]
    for r in rows:
        assert r["offpolicy/is_weight_max"] >= r["offpolicy/is_weight_mean"] > 0
        assert 0 <= r["offpolicy/is_capped_frac"] <= 1
    assert rows[1]["offpolicy/is_weight_max"] > 1.0 + 1e-3  # lagging tokens get weights != 1
    [evaluation] = read_metrics(out / "metrics.jsonl", kind="eval")
    assert evaluation["eval/policy_version"] == 3.0  # evaluated on the learner's last version


def test_rollout_actor_killed_with_its_batch_in_flight_and_a_failing_sync(tmp_path: Path, base_model: str) -> None:
    """A shard whose actor died in flight is regenerated on a restarted actor (counted); a sync that
    fails while batches are in flight and every actor is alive raises, naming them."""
    from rl_div.sync.buckets import WeightSyncError

    cfg = make_cfg(tmp_path, base_model, "train.steps=3", "train.lr=0.01", "rollout.group_size=8",
                   "rollout.max_off_policy_steps=1", "algo.advantage=test_raw_reward",
                   "algo.advantage_params={offset: 0.5}")
    trainer = Trainer(cfg)
    try:
        trainer.train_step()
        pipeline = trainer.pipeline
        old_pid = ray.get(pipeline.workers[0].pid.remote())
        flight = pipeline.launch(trainer.prompts.next_batch(2), trainer.train_sampling(), salt=99)
        ray.kill(pipeline.workers[0], no_restart=True)
        batch = pipeline.collect(flight)
        assert trainer.counters["faults/rollout_restarts"] == 1
        assert ray.get(pipeline.workers[0].pid.remote()) != old_pid
        assert batch.size == 2 * 8 and batch.behavior_version.tolist() == [1] * 16  # the current weights
        pipeline.queue.append(pipeline.launch(trainer.prompts.next_batch(2), trainer.train_sampling(), salt=100))
        trainer.cfg.rollout.weight_sync_timeout_s = 1e-6
        with pytest.raises(WeightSyncError, match="in flight"):
            pipeline.sync_weights()
    finally:
        trainer.close()


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


@contextmanager
def rollout_actor_killed_after_one_step(tmp_path: Path, base_model: str) -> Iterator[tuple[Trainer, int]]:
    """A trainer that took one step (weights moved), whose rollout actor 0 was then killed; yields
    (trainer, the dead actor's pid)."""
    cfg = make_cfg(tmp_path, base_model, "train.steps=3", "train.lr=0.01", "rollout.group_size=8",
                   "algo.advantage=test_raw_reward", "algo.advantage_params={offset: 0.5}")
    trainer = Trainer(cfg)
    try:
        trainer.train_step()
        old_pid = ray.get(trainer.pipeline.workers[0].pid.remote())
        ray.kill(trainer.pipeline.workers[0], no_restart=True)
        yield trainer, old_pid
    finally:
        trainer.close()


def test_killed_rollout_actor_is_restarted_with_current_weights(tmp_path: Path, base_model: str) -> None:
    with rollout_actor_killed_after_one_step(tmp_path, base_model) as (trainer, old_pid):
        metrics = trainer.train_step()
        assert metrics["faults/rollout_restarts"] == 1
        assert ray.get(trainer.pipeline.workers[0].pid.remote()) != old_pid
        assert metrics["policy/version"] >= 1
        # the new actor sampled with the learner's current (updated) weights, not the base model's
        assert metrics["sync/logprob_gap_max"] < 1e-3


def test_rollout_actor_killed_before_the_weight_sync_is_restarted_and_synced(tmp_path: Path, base_model: str) -> None:
    """Issue 8 item 10: a rollout actor killed while the learner updates made the sync raise ActorDiedError."""
    # the actor dies after its rollout, before the sync
    with rollout_actor_killed_after_one_step(tmp_path, base_model) as (trainer, old_pid):
        trainer.pipeline.sync_weights()
        assert trainer.counters["faults/rollout_restarts"] == 1
        assert ray.get(trainer.pipeline.workers[0].pid.remote()) != old_pid
        version = ray.get(trainer.learner.get_version())
        assert version >= 1 and ray.get(trainer.pipeline.workers[0].policy_version.remote()) == version
        metrics = trainer.train_step()
        assert metrics["faults/rollout_restarts"] == 1 and metrics["sync/logprob_gap_max"] < 1e-3


def test_a_hung_reward_call_times_out_and_is_counted(tmp_path: Path, base_model: str) -> None:
    """Issue 8 item 11: in-process rewards (reward.isolated=false) have no per-item timeout, and the
    reward actor call had none: a 60 s reward held the step for 2 x 60 s."""
    out = train(make_cfg(
        tmp_path, base_model, "run.plugins=[plugins.my_algos, plugins.my_rewards]", "reward.isolated=false",
        "reward.call_timeout_s=3", "reward.rewards=[{name: task_verifier}, {name: test_sleep, params: {seconds: 60}}]",
        "train.steps=1", "rollout.prompts_per_step=1", "rollout.group_size=2", "eval.at_end=false"))
    row = train_rows(out)[-1]
    assert row["faults/reward_timeouts"] == 2 and row["faults/reward_worker_restarts"] == 1
    assert row["reward/nan_frac"] == 1.0 and row["train/skipped_zero_signal"] == 1


def test_a_hung_embedding_call_at_evaluation_times_out_and_is_counted(tmp_path: Path, base_model: str) -> None:
    """The evaluation's embedding call had no timeout: a stuck embedding model held the run forever."""
    out = train(make_cfg(tmp_path, base_model, "run.plugins=[plugins.my_algos, plugins.hung_embedding]",
                         "reward.call_timeout_s=5", "eval.embedding_metrics=true", "train.steps=1"))
    evaluation = read_metrics(out / "metrics.jsonl", kind="eval")[-1]
    assert evaluation["eval/embed_timeouts"] == 1 and "pass@4" in evaluation
    assert not any("vendi" in k or "embedding" in k for k in evaluation)  # left out, not made up
    assert "embed() took longer than reward.call_timeout_s=5 s" in (out / "train.log").read_text()


def test_rerun_refused_and_resume_after_a_torn_line_reads_as_one_run(tmp_path: Path, base_model: str) -> None:
    """Issue 13 item 3 and issue 8 item 12: a second run appended a second steps 1..N; a resume after a
    crash kept the rows past the checkpoint (steps logged twice) and the torn last line."""
    cfg = make_cfg(tmp_path, base_model, "train.steps=3", "checkpoint.every=2")
    out = train(cfg)
    # a crash after step 3 was logged, before its checkpoint, in the middle of writing a line
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "step_000003"
    shutil.rmtree(ckpt)
    write_text_atomic(out / "checkpoints" / "latest", "step_000002")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "kind": "tra')
    train(cfg, resume=True)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line parses
    assert [(r["kind"], r["step"]) for r in rows] == [("train", 1), ("train", 2), ("train", 3), ("eval", 3)]
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)
    train(make_cfg(tmp_path, base_model, "train.steps=1"), overwrite=True)
    assert [(r["kind"], r["step"]) for r in read_metrics(out / "metrics.jsonl")] == [("train", 1), ("eval", 1)]
    assert latest_checkpoint(out) == out / "checkpoints" / "step_000001"


def test_ctrl_c_prints_one_line_and_stops_the_run(tmp_path: Path, base_model: str) -> None:
    """Issue 8 item 13: Ctrl-C printed a 30-line KeyboardInterrupt traceback."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rl_div.cli", "train", str(REPO / "configs/demo.yaml"), f"model.path={base_model}",
           f"run.output_dir={out}", "train.steps=200", "checkpoint.every=2", "eval.at_start=false",
           "eval.at_end=false", "eval.every=0", "tracking.progress=false", "tracking.tensorboard=false",
           "cluster.num_cpus=2", "rollout.prompts_per_step=2", "rollout.group_size=2"]
    # its own session: SIGINT goes to the whole process group, as a terminal's Ctrl-C does
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "checkpoints" / "latest").exists() and len(train_rows(out)) >= 3:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    for _ in range(40):  # the run's actors (and its local Ray) are gone with it
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.25)
    else:
        raise AssertionError("processes of the interrupted run are still alive")
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    saved = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())["step"]
    logged = max(r["step"] for r in train_rows(out))
    match = re.fullmatch(r"rl-div: interrupted at step (\d+) \(last checkpoint: step (\d+)\); rerun with --resume "
                         r"to continue from the last checkpoint", last)
    assert match is not None, err
    assert int(match.group(1)) == logged and int(match.group(2)) == saved >= 2
    # the folder now holds a run: a plain rerun is refused before anything starts
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
