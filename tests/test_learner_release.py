"""What the learner keeps between updates: no gradients, and (optionally) its optimizer state off
the accelerator. Real Learner, real tiny model, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl_div.config import ConfigError, load_config
from rl_div.learner.single import Learner
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.tasks import TASKS


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    return str(save_policy(make_tiny_llama(tok, seed=4), tok, tmp_path_factory.mktemp("m") / "tiny"))


def learner_for(model_path: str, tmp_path: Path, *extra: str) -> Learner:
    cfg = load_config(None, [f"model.path={model_path}", f"run.output_dir={tmp_path}", "train.lr=1e-2",
                             "train.micro_batch_size=8", "train.mini_batch_size=8", *extra])
    return Learner(cfg, model_path)


def batch_for(learner: Learner, model_path: str, seed: int):  # -> RolloutBatch
    worker = HFRolloutWorker(model_path, device="cpu")
    batch = worker.generate(TASKS["prime_gap"].make_prompts("train", 4, seed=seed),
                            SamplingSpec(n=4, max_new_tokens=8, seed=seed))
    stats = learner.policy_stats(batch)
    batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
    batch.advantages = torch.tensor([1.0, -1.0] * (batch.size // 2))
    return batch


def test_no_gradients_are_kept_after_an_update(model_path: str, tmp_path: Path) -> None:
    learner = learner_for(model_path, tmp_path)
    metrics = learner.update(batch_for(learner, model_path, 0))
    assert metrics["train/optimizer_steps"] == 2  # two mini-batches of 8
    assert all(p.grad is None for p in learner.model.parameters())


def test_offloaded_optimizer_state_trains_identically(model_path: str, tmp_path: Path) -> None:
    plain = learner_for(model_path, tmp_path / "a")
    offload = learner_for(model_path, tmp_path / "b", "train.offload_optimizer=true")
    for seed in (0, 1):  # the second update runs on state brought back from the offload
        batch = batch_for(plain, model_path, seed)
        plain.update(batch)
        offload.update(batch)
        for state in offload.optimizer.state.values():
            assert all(v.device.type == "cpu" for v in state.values() if torch.is_tensor(v))
    for (name, a), (_, b) in zip(plain.model.named_parameters(), offload.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_sleep_level_is_a_validated_field() -> None:
    assert load_config(None, ["rollout.sleep_level=2"]).rollout.sleep_level == 2
    with pytest.raises(ConfigError, match="sleep_level"):
        load_config(None, ["rollout.sleep_level=3"])
