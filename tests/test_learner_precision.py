"""Mixed precision in the learner: fp32 master weights and optimizer state, compute in model.dtype,
weights shipped to rollout engines in model.dtype. Real Learner, real tiny model, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl_div.config import load_config
from rl_div.learner.single import Learner
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.tasks import TASKS


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    return str(save_policy(make_tiny_llama(tok, seed=3), tok, tmp_path_factory.mktemp("m") / "tiny"))


def make_learner(model_path: str, tmp_path: Path, dtype: str, lr: float = 1e-6, *extra: str) -> Learner:
    cfg = load_config(None, [f"model.path={model_path}", f"model.dtype={dtype}", f"train.lr={lr}",
                             f"run.output_dir={tmp_path}", "train.micro_batch_size=8", *extra])
    return Learner(cfg, model_path)


def scored_batch(learner: Learner, model_path: str, dtype: str):  # -> RolloutBatch
    """Rollouts from a worker holding the model in `dtype`, scored by the learner, with advantages
    +1/-1 alternating inside each group (every row has a signal)."""
    worker = HFRolloutWorker(model_path, dtype=dtype, device="cpu")
    batch = worker.generate(TASKS["prime_gap"].make_prompts("train", 4, seed=0),
                            SamplingSpec(n=4, max_new_tokens=8, seed=0))
    stats = learner.policy_stats(batch)
    batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
    batch.advantages = torch.tensor([1.0, -1.0] * (batch.size // 2))
    return batch


def changed_fraction(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    changed = total = 0
    for name, p in model.named_parameters():
        changed += int((p.detach() != before[name]).sum())
        total += p.numel()
    return changed / total


def test_one_bf16_update_at_lr_1e6_moves_every_weight(model_path: str, tmp_path: Path) -> None:
    """lr 1e-6 on weights of size ~0.02 is a relative change of 5e-5, far below bf16's resolution
    (2^-8 = 4e-3): bf16 parameters would stay put (2% of them moved); fp32 masters all move."""
    learner = make_learner(model_path, tmp_path, "bfloat16")
    batch = scored_batch(learner, model_path, "bfloat16")
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    metrics = learner.update(batch)
    assert metrics["train/optimizer_steps"] == 1
    assert changed_fraction(before, learner.model) > 0.95
    # AdamW's moments are kept at the masters' precision
    for state in learner.optimizer.state.values():
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32


def test_bf16_compute_and_bf16_payload(model_path: str, tmp_path: Path) -> None:
    """The forward runs in bf16 (log-probs differ from fp32 by bf16 rounding, not float noise), and
    the weights shipped to engines are the masters rounded to bf16."""
    bf16, fp32 = make_learner(model_path, tmp_path, "bfloat16"), make_learner(model_path, tmp_path, "float32")
    batch = scored_batch(fp32, model_path, "float32")
    mask = batch.response_mask.bool()
    gap = (bf16.policy_stats(batch)["old_logprobs"] - batch.old_logprobs)[mask].abs()
    assert 1e-4 < float(gap.mean()) < 0.1
    payload = bf16.get_weights()
    masters = dict(bf16.model.state_dict())
    assert payload.keys() == masters.keys()
    for name, tensor in payload.items():
        assert tensor.dtype == torch.bfloat16 and tensor.device.type == "cpu"
        assert torch.equal(tensor, masters[name].to(torch.bfloat16))
    assert all(t.dtype == torch.float32 for t in fp32.get_weights().values())
