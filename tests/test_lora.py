"""train.lora (PEFT) on the single learner, in one process: trainable fraction, the free reference,
adapter / merged weight sync, checkpoints, and the one-line refusals before any work.

Expected values are counted independently: LoRA parameters from the architecture's shapes
(r * (in + out) per adapted Linear), reference log-probs from a freshly loaded base model's own
full logits, sync bytes from the tensors' shapes.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import ray
import torch
from helpers import lora_params_by_shapes, run_config, tiny_prime_gap_llama

from rl_div.config import ConfigError, load_config
from rl_div.config.checks import check_inputs
from rl_div.data import RolloutBatch
from rl_div.experiments.evaluate import resolve_target
from rl_div.learner.single import Learner
from rl_div.models.loading import build_char_tokenizer, count_parameters, load_policy, make_tiny_llama
from rl_div.models.lora import check_lora_model
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.tasks import TASKS
from rl_div.train.loop import Trainer

LORA = ["train.lora.enabled=true", "train.lora.rank=4", "train.lora.alpha=8"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_prime_gap_llama(tmp_path_factory.mktemp("m"), seed=5)


def rollouts(model_dir: str, seed: int = 0) -> RolloutBatch:
    worker = HFRolloutWorker(model_dir, dtype="float32", device="cpu")
    return worker.generate(TASKS["prime_gap"].make_prompts("train", 3, seed=seed),
                           SamplingSpec(n=2, max_new_tokens=6, seed=seed))


def perturb_adapters(learner: Learner, seed: int = 0) -> None:
    """Non-zero lora_B (PEFT starts it at 0), so the policy differs from its base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("which", ["llama", "qwen"])
def test_trainable_fraction_is_the_adapters_alone(which: str, llama_dir: str, tiny_qwen_dir: Path,
                                                  tmp_path: Path) -> None:
    import json

    path = llama_dir if which == "llama" else str(tiny_qwen_dir)
    model_cfg = json.loads((Path(path) / "config.json").read_text())
    base_count = count_parameters(load_policy(path)[0])
    learner = Learner(run_config(path, tmp_path, *LORA, "model.dtype=bfloat16"), path)
    want = lora_params_by_shapes(model_cfg, 4, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"))
    trainable = {id(p): p for p in learner.model.parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == want
    assert count_parameters(learner.model) == base_count + want  # nothing else added, nothing lost
    # AdamW holds exactly the adapters; they are float32 masters, the frozen base bf16
    in_optimizer = {id(p) for g in learner.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == set(trainable)
    for name, p in learner.model.named_parameters():
        assert p.dtype == (torch.float32 if ".lora_" in name else torch.bfloat16), name
        assert p.requires_grad == (".lora_" in name), name


@pytest.mark.parametrize("extra", [[], ["model.dtype=bfloat16", "train.activation_checkpointing=true"]])
def test_only_adapters_move_in_an_update(extra: list[str], llama_dir: str, tmp_path: Path) -> None:
    learner = Learner(run_config(llama_dir, tmp_path, *LORA, "train.lr=0.05", *extra), llama_dir)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    batch = rollouts(llama_dir)
    stats = learner.policy_stats(batch)
    batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
    batch.advantages = torch.linspace(-1, 1, batch.size)
    assert learner.update(batch)["train/optimizer_steps"] == 1
    after = learner.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".lora_" in k for k in moved), moved
    assert any("lora_B" in k for k in moved)


def full_logits_logprobs(model: torch.nn.Module, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    """[B, T] log-probs of the response tokens from the model's own full logits (float32, no chunking)."""
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    attention = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits.float()
    p = batch.prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, p - 1 : -1] / temperature, dim=-1)
    out = logp.gather(-1, batch.response_ids[..., None]).squeeze(-1)
    return out * batch.response_mask


@pytest.mark.parametrize("which", ["llama", "qwen"])
def test_reference_is_the_base_model_with_adapters_disabled(which: str, llama_dir: str, tiny_qwen_dir: Path,
                                                            tmp_path: Path) -> None:
    path = llama_dir if which == "llama" else str(tiny_qwen_dir)
    learner = Learner(run_config(path, tmp_path, *LORA, "train.use_ref_model=true"), path)
    perturb_adapters(learner)
    batch = rollouts(llama_dir) if which == "llama" else HFRolloutWorker(path, device="cpu").generate(
        TASKS["prime_gap"].make_prompts("train", 2, seed=0), SamplingSpec(n=2, max_new_tokens=5, seed=0))
    stats = learner.policy_stats(batch)
    base = load_policy(path)[0].eval()
    temperature = learner.cfg.rollout.temperature
    mask = batch.response_mask.bool()
    want = full_logits_logprobs(base, batch, temperature)
    torch.testing.assert_close(stats["ref_logprobs"][mask], want[mask], rtol=0, atol=2e-5)
    # the policy itself is not the base (else this test could not fail), and the adapters are back on
    assert (stats["old_logprobs"][mask] - want[mask]).abs().max() > 1e-2
    assert learner.ref_model is None


def storages_shaped(shape: torch.Size) -> int:
    """Distinct storages of every live tensor of this shape in the process (parameters included)."""
    ptrs = set()
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not obj.is_meta and obj.shape == shape:
            ptrs.add(obj.untyped_storage().data_ptr())
    return len(ptrs)


@pytest.mark.parametrize("lora", [True, False])
def test_no_second_copy_of_the_base_weights(lora: bool, llama_dir: str, tmp_path: Path) -> None:
    """The one down_proj shape [hidden, intermediate] (no other weight has it): with LoRA and the KL
    reference the learner adds one storage per layer to the process; a reference copy (full fine-tuning)
    adds two. Counted as the increase over what the process held before, so tensors of that shape left
    alive by other test modules in the same process do not count."""
    config = json.loads((Path(llama_dir) / "config.json").read_text())
    shape = torch.Size([config["hidden_size"], config["intermediate_size"]])
    gc.collect()
    before = storages_shaped(shape)
    learner = Learner(run_config(llama_dir, tmp_path, *(LORA if lora else []), "train.use_ref_model=true"),
                      llama_dir)
    gc.collect()
    layers = learner.model.config.num_hidden_layers
    assert learner.model.get_submodule("model.layers.0.mlp.down_proj").weight.shape == shape
    assert storages_shaped(shape) - before == layers * (1 if lora else 2)
    assert learner.has_reference


def test_bad_lora_input_is_one_line_before_any_work(llama_dir: str, tmp_path: Path) -> None:
    base = [f"model.path={llama_dir}", f"run.output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="rank"):
        load_config(None, [*base, *LORA, "train.lora.rank=0"])
    cases = {"train.lora.target_modules=[no_such_proj]": "no_such_proj",
             "train.lora.target_modules=[norm]": "not supported",
             "train.lora.target_modules=[]": "target_modules",
             }
    for override, words in cases.items():
        with pytest.raises(ConfigError, match=words) as err:
            Trainer(load_config(None, [*base, *LORA, override]))  # refused before its output folder or Ray
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="up to rank 512"):
        check_inputs(load_config(None, [*base, *LORA, "rollout.backend=vllm", "train.lora.sync=adapter",
                                        "train.lora.rank=600"]))
    with pytest.raises(ConfigError, match="object_store"):
        load_config(None, [*base, *LORA, "rollout.backend=vllm", "rollout.weight_sync=nccl", "train.num_gpus=1",
                           "rollout.num_gpus_per_worker=1"])
    for path in (llama_dir, "bootstrap", "tiny_qwen"):  # the defaults pass, for every architecture
        check_lora_model(load_config(None, [f"model.path={path}", f"run.output_dir={tmp_path}", *LORA]))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    assert not ray.is_initialized()


def payload_bytes(weights: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in weights.values())


@pytest.mark.parametrize("mode", ["adapter", "merged"])
def test_sync_gap_stays_float32_small_after_every_sync(mode: str, llama_dir: str, tmp_path: Path) -> None:
    """Three rounds of sample -> score -> update -> sync: the sampler's log-probs equal the learner's
    (pi_old) to float32 rounding each time; adapter sync ships r * (in + out) per layer and no more."""
    cfg = run_config(llama_dir, tmp_path, *LORA, f"train.lora.sync={mode}", "train.lr=0.05",
                     "train.use_ref_model=true", "algo.loss_params={kl_coef: 0.05}")
    learner = Learner(cfg, llama_dir)
    worker = HFRolloutWorker(llama_dir, dtype="float32", device="cpu",
                             lora=cfg.train.lora.spec_fields() if mode == "adapter" else None)
    gaps, moved = [], []
    for step in range(3):
        batch = worker.generate(TASKS["prime_gap"].make_prompts("train", 3, seed=step),
                                SamplingSpec(n=2, max_new_tokens=6, seed=step))
        stats = learner.policy_stats(batch)
        mask = batch.response_mask.bool()
        gaps.append(float((stats["old_logprobs"] - batch.behavior_logprobs)[mask].abs().max()))
        batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
        batch.ref_logprobs = stats["ref_logprobs"]
        batch.advantages = torch.linspace(-1, 1, batch.size)
        learner.update(batch)
        weights = learner.get_weights()
        worker.set_weights(weights, learner.version)
        after = learner.policy_stats(batch)["old_logprobs"]
        moved.append(float((after - stats["old_logprobs"])[mask].abs().max()))
    assert max(gaps) < 1e-5, gaps  # float32 rounding of two forward implementations (~1e-7)
    assert min(moved) > 1e-3, moved  # every update changed the policy, so every sync mattered
    model_cfg = learner.model.config.to_dict()
    full = count_parameters(load_policy(llama_dir)[0]) * 4
    weights = dict(learner.sync_tensors())  # what the object-store buckets carry
    if mode == "adapter":
        assert all(".lora_" in k for k in weights)
        want = 4 * lora_params_by_shapes(model_cfg, 4, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"))
        assert payload_bytes(weights) == want < full / 5
    else:
        assert payload_bytes(weights) == full  # the plain model's tensors, tied weights once
        assert not any(".lora_" in k or ".base_layer" in k for k in weights)


@pytest.mark.parametrize("save", ["both", "adapter", "merged"])
def test_checkpoint_exports_load_with_peft_and_from_pretrained(save: str, llama_dir: str, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = run_config(llama_dir, tmp_path / "run", *LORA, f"train.lora.save={save}")
    learner = Learner(cfg, llama_dir)
    perturb_adapters(learner, seed=1)
    batch = rollouts(llama_dir)
    want = learner.policy_stats(batch)["old_logprobs"]
    mask = batch.response_mask.bool()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    learner.save(str(ckpt))
    temperature = cfg.rollout.temperature
    assert (ckpt / "policy").is_dir() == (save != "adapter")
    assert (ckpt / "adapter").is_dir() == (save != "merged")
    if save != "adapter":  # plain from_pretrained, no PEFT
        merged = AutoModelForCausalLM.from_pretrained(ckpt / "policy").eval()
        got = full_logits_logprobs(merged, batch, temperature)
        torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=2e-5)
    if save != "merged":  # PEFT's own loader on the base model
        peft_model = PeftModel.from_pretrained(load_policy(llama_dir)[0], ckpt / "adapter").eval()
        got = full_logits_logprobs(peft_model, batch, temperature)
        torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=2e-5)
    # rl-div eval's target: the merged policy/, or the adapter merged once into a plain folder beside it
    target = resolve_target(ckpt).model_dir
    assert target == ckpt / ("policy" if save != "adapter" else "adapter_merged")
    got = full_logits_logprobs(AutoModelForCausalLM.from_pretrained(target).eval(), batch, temperature)
    torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=2e-5)
    # resume: a fresh learner (other adapters' initial values) loads the very same policy and optimizer
    torch.manual_seed(123)
    resumed = Learner(cfg, llama_dir)
    resumed.load(str(ckpt))
    for (name, a), (_, b) in zip(learner.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_bench_lora_sync_bytes_drop_by_the_adapter_fraction() -> None:
    """rl-div bench --sections lora on the demo-sized Llama (one round): adapter sync carries exactly
    the trainable fraction of full fine-tuning's bytes (both float32 here), counted from the shapes."""
    from rl_div.bench.lora import bench_lora

    r = bench_lora("demo", repeats=1)
    model_cfg = make_tiny_llama(build_char_tokenizer(TASKS["prime_gap"].alphabet)).config.to_dict()
    for name, rank in (("lora_r8", 8), ("lora_r64", 64)):
        case = r["cases"][name]
        want = lora_params_by_shapes(model_cfg, rank, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"))
        assert case["trainable"] == want
        assert case["sync_bytes_vs_full"] == pytest.approx(want / r["parameters"], rel=1e-12)
    assert r["cases"]["full"]["trainable"] == r["parameters"]
