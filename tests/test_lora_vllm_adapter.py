"""train.lora.sync='adapter' for vLLM workers, the parts that run without vLLM: the PEFT-format
adapter folder each sync writes (rl_div.rollout.vllm_lora), the engine's LoRA arguments, and the
setting (auto = merged for vLLM, adapter on request, refused one line before work where it cannot
serve). The engine itself is in the vLLM lane (tests/vllm_lane/test_lora_adapter_sync.py).

Expected values come from PEFT itself: its own save_pretrained of the learner's adapters, and its
own PeftModel.from_pretrained of the folder against the learner's forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_config, tiny_prime_gap_llama
from safetensors.torch import load_file

from rl_div.config import ConfigError, load_config
from rl_div.config.checks import check_inputs
from rl_div.config.lora import lora_sync_mode
from rl_div.config.rollout_backends import hf_worker_args, vllm_worker_args
from rl_div.learner.single import Learner
from rl_div.models.loading import load_policy
from rl_div.models.lora import LoraSpec
from rl_div.rollout.vllm_lora import VllmAdapterSync, engine_lora_args, expected_adapter_names, write_adapter_dir
from rl_div.sync.buckets import WeightSyncError

LORA = ["train.lora.enabled=true", "train.lora.rank=4", "train.lora.alpha=8"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_prime_gap_llama(tmp_path_factory.mktemp("m"), seed=5)


@pytest.fixture()
def trained(llama_dir: str, tmp_path: Path) -> Learner:
    """A LoRA learner whose adapters are non-zero (PEFT starts lora_B at 0: the policy would be the base)."""
    learner = Learner(run_config(llama_dir, tmp_path / "run", *LORA, "train.lora.sync=adapter"), llama_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return learner


def test_adapter_folder_is_what_peft_saves_and_loads(trained: Learner, llama_dir: str, tmp_path: Path) -> None:
    from peft import PeftModel

    shipped = trained.get_weights()  # what adapter sync carries: the adapter tensors alone
    spec = LoraSpec(**trained.cfg.train.lora.spec_fields())
    ours = tmp_path / "ours"
    written = write_adapter_dir(shipped, spec, "llama", ours)
    assert written == sum(t.numel() * 4 for t in shipped.values())
    trained.lora.wrapped.save_pretrained(str(tmp_path / "peft"), safe_serialization=True)  # PEFT's own export
    want = load_file(str(tmp_path / "peft/adapter_model.safetensors"))
    got = load_file(str(ours / "adapter_model.safetensors"))
    assert got.keys() == want.keys() and len(got) == len(shipped)
    assert all(torch.equal(got[k], want[k]) for k in want)
    cfg_want, cfg_got = (json.loads((d / "adapter_config.json").read_text()) for d in (tmp_path / "peft", ours))
    for key in ("r", "lora_alpha", "lora_dropout", "bias", "peft_type", "task_type"):
        assert cfg_got[key] == cfg_want[key], key
    assert sorted(cfg_got["target_modules"]) == sorted(cfg_want["target_modules"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-written folder left
    # PEFT loads the folder onto a fresh base and computes the learner's policy
    served = PeftModel.from_pretrained(load_policy(llama_dir)[0], str(ours)).eval()
    ids = torch.tensor([[1, 5, 9, 12, 7, 3, 2]])
    with torch.no_grad():
        assert torch.allclose(served(ids).logits, trained.model(ids).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(load_policy(llama_dir)[0](ids).logits, trained.model(ids).logits, atol=1e-2)


def test_engine_expects_exactly_the_learners_adapter_names(trained: Learner, llama_dir: str) -> None:
    spec = LoraSpec(**trained.cfg.train.lora.spec_fields())
    shipped = trained.get_weights()
    assert expected_adapter_names(llama_dir, spec) == set(shipped)
    adapters = VllmAdapterSync(None, llama_dir, spec, "llama")  # collect() never touches the engine
    try:
        assert adapters.collect(shipped).keys() == shipped.keys()
        with pytest.raises(WeightSyncError, match="do not match"):
            adapters.collect({k: v for k, v in shipped.items() if "down_proj" not in k})
        with pytest.raises(WeightSyncError, match="payload"):
            adapters.collect([("x", torch.zeros(1))])
    finally:
        adapters.close()
    assert not adapters.root.exists()


@pytest.mark.parametrize(("rank", "engine_rank"), [(1, 1), (4, 8), (8, 8), (9, 16), (64, 64), (300, 320), (512, 512)])
def test_engine_is_built_for_the_smallest_vllm_rank_that_fits(rank: int, engine_rank: int) -> None:
    # vLLM 0.32's MaxLoRARanks: 1, 8, 16, 32, 64, 128, 256, 320, 512
    assert engine_lora_args(LoraSpec(rank=rank, alpha=1.0)) == {"enable_lora": True, "max_lora_rank": engine_rank,
                                                                "max_loras": 1}


def test_vllm_adapter_sync_is_a_setting_with_merged_the_default(llama_dir: str, tmp_path: Path) -> None:
    base = [f"model.path={llama_dir}", f"run.output_dir={tmp_path}", *LORA]
    auto = load_config(None, [*base, "rollout.backend=vllm"])
    assert lora_sync_mode(auto) == "merged" and vllm_worker_args(auto, 0.0)["lora"] is None
    adapter = load_config(None, [*base, "rollout.backend=vllm", "train.lora.sync=adapter"])
    check_inputs(adapter)
    assert lora_sync_mode(adapter) == "adapter"
    assert vllm_worker_args(adapter, 0.0)["lora"] == {"rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": None}
    hf = load_config(None, base)
    assert lora_sync_mode(hf) == "adapter" and hf_worker_args(hf, 0.0)["lora"] is not None
    assert vllm_worker_args(load_config(None, [f"model.path={llama_dir}", "rollout.backend=vllm"]), 0.0)["lora"] is None
    with pytest.raises(ConfigError, match="up to rank 512") as err:
        check_inputs(load_config(None, [*base, "rollout.backend=vllm", "train.lora.sync=adapter",
                                        "train.lora.rank=513"]))
    assert "\n" not in str(err.value)
    check_inputs(load_config(None, [*base, "rollout.backend=vllm", "train.lora.rank=513"]))  # merged: any rank
    with pytest.raises(ConfigError, match="cannot run adapters"):
        check_inputs(load_config(None, [*base, "run.plugins=[plugins.my_backend]", "rollout.backend=test_echo",
                                        "train.lora.sync=adapter"]))
