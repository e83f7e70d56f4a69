"""The GPU example configs carry GPU-sized settings (issue 26 item 12): an engine with a GPU of its own
fills 85-90% of it and samples one batch ahead of the learner; an engine sharing its GPU with the learner
does neither; all use vLLM's batched sampler (rollout.seed_mode per_batch, docs/gpu.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_div.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["gsm8k_qwen.yaml", "gsm8k_qwen_fsdp2.yaml", "qwen7b_lora_vllm.yaml"])
def test_gpu_configs_size_the_engine_by_where_it_runs(name: str) -> None:
    cfg = load_config(str(CONFIGS / name), [])
    r, t = cfg.rollout, cfg.train
    assert r.backend == "vllm" and r.seed_mode == "per_batch"
    dedicated = r.num_gpus_per_worker >= 1 and t.num_gpus >= 1 and r.weight_sync != "cuda_ipc"
    if dedicated:
        assert 0.85 <= r.gpu_memory_utilization <= 0.9 and r.max_off_policy_steps == 1
    else:  # learner and engine take turns with one GPU
        assert r.gpu_memory_utilization < 0.5 and r.max_off_policy_steps == 0
