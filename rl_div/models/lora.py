"""LoRA through PEFT: wrap a causal LM, list its adapter and merged tensors, check a wrap before work.

Shared by the learner (trains the adapters; its KL reference is the same module with the adapters
disabled) and the hf rollout worker (runs the same PEFT model and takes adapter tensors only), so
both sides name tensors alike: the injected base model's own parameter names, e.g.
``model.layers.0.self_attn.q_proj.lora_A.default.weight``. Nothing here reads rl_div's config: a
:class:`LoraSpec` is plain data that travels to the rollout actors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel

    from rl_div.config import Config

ADAPTER_NAME = "default"  # PEFT's name of the one adapter
# Attention and MLP projections, per model_type (config.json's). Llama, Mistral and the Qwen2/Qwen3
# families name them alike; a model type not listed needs train.lora.target_modules.
ATTENTION_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ATTENTION_MLP, "mistral": ATTENTION_MLP, "qwen2": ATTENTION_MLP, "qwen3": ATTENTION_MLP,
}


@dataclass(frozen=True)
class LoraSpec:
    """What PEFT needs to build the adapters (train.lora's fields; target_modules None = the
    architecture's defaults)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.target_modules is not None:  # a list from YAML / a Ray message: hashable and fixed
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_modules(spec: LoraSpec, model_type: str) -> list[str]:
    """spec's target module names, or the attention + MLP projections of model_type."""
    if spec.target_modules is not None:
        return list(spec.target_modules)
    if model_type not in DEFAULT_TARGETS:
        raise ValueError(f"train.lora.target_modules: no default for model type {model_type!r} (known: "
                         f"{', '.join(sorted(DEFAULT_TARGETS))}); list the modules to adapt")
    return list(DEFAULT_TARGETS[model_type])


def peft_config(spec: LoraSpec, model_type: str) -> Any:
    """PEFT's LoraConfig for a causal LM."""
    from peft import LoraConfig

    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, bias="none",
                      target_modules=target_modules(spec, model_type), task_type="CAUSAL_LM")


def wrap_lora(model: PreTrainedModel, spec: LoraSpec, base_dtype: torch.dtype) -> PeftModel:
    """The model as a PeftModel: base weights frozen in base_dtype, adapters trainable in float32
    (the masters AdamW updates). lora_B starts at 0, so the wrapped model computes what the base
    does until the first update. Draws lora_A's initial values from the global torch RNG."""
    from peft import get_peft_model

    model.requires_grad_(False)
    model.to(base_dtype)
    wrapped = get_peft_model(model, peft_config(spec, model.config.model_type), adapter_name=ADAPTER_NAME)
    for param in wrapped.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return wrapped


def injected_model(wrapped: PeftModel) -> PreTrainedModel:
    """The transformers model inside a PeftModel, its target modules replaced by LoRA layers (the
    module the forward passes, state dicts and tensor names use)."""
    return wrapped.get_base_model()


def adapter_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, detached tensor) of every adapter weight of an injected model (lora_A, lora_B)."""
    for name, param in model.named_parameters():
        if ".lora_" in name:
            yield name, param.detach()


def lora_scalings(model: torch.nn.Module) -> dict[str, float]:
    """Module path -> alpha / r of every LoRA layer of an injected model."""
    from peft.tuners.lora import LoraLayer

    return {path: float(m.scaling[ADAPTER_NAME]) for path, m in model.named_modules() if isinstance(m, LoraLayer)}


def merged_tensors(named: Iterable[tuple[str, torch.Tensor]], scalings: dict[str, float],
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """(plain model name, tensor) with every adapter merged in: W + (B @ A) * alpha / r (float32)
    under the name the plain model has (``q_proj.weight``, not ``q_proj.base_layer.weight``); the
    rest as is. named: full tensors of an injected model in any order (a single learner's state, or
    the gathered shards of an FSDP2 one); a layer's merged weight comes once its W, A and B all came.
    W [out, in], A [r, in], B [out, r]: PEFT's nn.Linear layout (fan_in_fan_out off).
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in named:
        if ".base_layer." in name:
            path, _, leaf = name.rpartition(".base_layer.")
            if leaf != "weight":  # a bias: unchanged by LoRA
                yield f"{path}.{leaf}", tensor
                continue
            key = "W"
        elif ".lora_A." in name or ".lora_B." in name:
            path, key = name.split(".lora_")[0], "A" if ".lora_A." in name else "B"
        else:
            yield name, tensor
            continue
        layer = parts.setdefault(path, {})
        layer[key] = tensor
        if len(layer) == 3:
            del parts[path]
            delta = (layer["B"].float() @ layer["A"].float()) * scalings[path]
            yield f"{path}.weight", layer["W"].float() + delta
    if parts:
        raise ValueError(f"LoRA layers without all of base weight, lora_A and lora_B: {sorted(parts)[:3]}")


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's full state dict (tied names too) with the adapters merged, float32 on CPU."""
    plain = merged_tensors(model.state_dict().items(), lora_scalings(model))
    return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype) for k, v in plain}


def count_adapter_fraction(model: torch.nn.Module) -> tuple[int, int]:
    """(adapter parameters, all distinct parameters) of an injected model."""
    distinct = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in distinct if p.requires_grad), sum(p.numel() for p in distinct)


def meta_model(config: PretrainedConfig, trust_remote_code: bool = False) -> PreTrainedModel:
    """The architecture of config on the meta device (no memory, no weights read)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def check_wrappable(config: PretrainedConfig, spec: LoraSpec, trust_remote_code: bool = False) -> None:
    """Raise ValueError (one line) when PEFT cannot put spec's adapters on config's architecture:
    target modules that match nothing, a module type LoRA does not support, an unknown model type."""
    names = target_modules(spec, config.model_type)
    try:
        model = meta_model(config, trust_remote_code)
        wrap_lora(model, spec, model.dtype)
    except (ValueError, TypeError, KeyError, NotImplementedError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"train.lora: PEFT cannot put adapters on {names} of this {config.model_type} model: "
                         f"{first}") from None


# The models a run builds itself, by name (rl_div.train.model_path.resolve_model_path): their architecture,
# at a size that only has to carry the module names.
BUILT_MODEL_TYPES = {"bootstrap": "llama", "tiny_qwen": "qwen2"}


def architecture_config(path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The transformers config of a model path (config.json only; for a model the run builds, a small
    one of its architecture)."""
    from transformers import AutoConfig

    if path in BUILT_MODEL_TYPES:
        return AutoConfig.for_model(BUILT_MODEL_TYPES[path], vocab_size=64, hidden_size=16, intermediate_size=32,
                                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)


def check_lora_model(cfg: Config) -> None:
    """Before any work (the Trainer, before its output folder or Ray): PEFT can put train.lora's adapters
    on cfg.model.path's architecture (rl_div.config.ConfigError, one line, otherwise)."""
    from rl_div.config import ConfigError

    if cfg.train.lora.enabled:
        trust = cfg.model.trust_remote_code
        try:
            check_wrappable(architecture_config(cfg.model.path, trust), LoraSpec(**cfg.train.lora.spec_fields()),
                            trust)
        except ValueError as err:
            raise ConfigError(str(err)) from None


MERGED_DIR = "adapter_merged"  # beside a checkpoint's adapter/: the merged model rl-div eval builds from it


def merge_adapter_dir(adapter_dir: Path) -> Path:
    """A PEFT adapter folder (its base model named in adapter_config.json) as a plain model folder
    with the adapters merged, written once beside it (MERGED_DIR) for tools that load plain models."""
    from peft import AutoPeftModelForCausalLM

    from rl_div.models.loading import load_tokenizer, save_policy
    from rl_div.run.checkpoint import build_dir_atomic

    def fill(tmp: Path) -> None:
        merged = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir), dtype=torch.float32).merge_and_unload()
        save_policy(merged, load_tokenizer(adapter_dir), tmp)

    return build_dir_atomic(adapter_dir.parent / MERGED_DIR, fill, marker="config.json")
