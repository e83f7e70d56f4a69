"""The learner's LoRA policy (train.lora; the single learner and every FSDP2 rank): the PEFT wrap,
the free reference, what weight sync ships, and the adapter's part of a checkpoint.

- Only the adapters train (AdamW sees only them); the frozen base stays in model.dtype and the
  adapters keep float32 masters (rl_div.models.lora.wrap_lora).
- The KL term's reference is the same module with the adapters disabled (PEFT's disable_adapter):
  the base model's log-probs, with no second copy of the base weights.
- Weight sync ships the adapter tensors alone to workers that run the same PEFT model
  (train.lora.sync 'adapter', the hf backend), or the merged weights under the base model's names
  to any backend ('merged', e.g. vLLM).
- A checkpoint exports the adapter in PEFT's format (adapter/) and/or the merged model (policy/,
  plain from_pretrained), per train.lora.save; learner_state.pt always carries the adapter tensors,
  so --resume is exact whatever is exported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rl_div.models.lora import (
    LoraSpec,
    adapter_tensors,
    injected_model,
    lora_scalings,
    merged_state_dict,
    merged_tensors,
    wrap_lora,
)
from rl_div.sync.buckets import distinct_state, tied_names

if TYPE_CHECKING:  # the learner imports without pydantic (the GPU check's machine has none)
    from rl_div.config import Config

LEARNER_STATE_KEY = "lora_adapter"  # learner_state.pt: {name: float32 tensor} of every adapter weight


class LoraPolicy:
    """A base model with LoRA adapters; ``model`` is the injected transformers model the learner trains."""

    def __init__(self, cfg: Config, base: torch.nn.Module, base_dtype: torch.dtype) -> None:
        self.wrapped = wrap_lora(base, LoraSpec(**cfg.train.lora.spec_fields()), base_dtype)
        self.model = injected_model(self.wrapped)
        self.scalings = lora_scalings(self.model)
        from rl_div.config.lora import lora_sync_mode  # here: rl_div.config needs pydantic

        self.sync_mode = lora_sync_mode(cfg)
        self.save_what = cfg.train.lora.save

    def reference(self) -> contextlib.AbstractContextManager[Any]:
        """Inside it, self.model computes the base model's log-probs (the KL reference)."""
        return self.wrapped.disable_adapter()

    def sync_tensors(self, named: Iterable[tuple[str, torch.Tensor]] | None = None,
                     ) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) weight sync ships: the adapter weights, or every weight with the adapters
        merged under the plain model's names (tied weights once). named: the model's distinct
        tensors, full (default: this process's model; an FSDP2 rank passes its gathered ones)."""
        named = distinct_state(self.model) if named is None else named
        if self.sync_mode == "adapter":
            return ((name, t) for name, t in named if ".lora_" in name)
        return merged_tensors(named, self.scalings)

    def sync_aliases(self) -> dict[str, str]:
        """Tied names of what sync_tensors ships (none for adapters)."""
        if self.sync_mode == "adapter":
            return {}
        return {alias.replace(".base_layer.", "."): name.replace(".base_layer.", ".")
                for alias, name in tied_names(self.model).items()}

    def adapter_state(self, full: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """{name: float32 CPU copy} of every adapter weight (learner_state.pt's part); full: the model's
        full state dict where this process holds shards only (FSDP2's rank 0)."""
        named = adapter_tensors(self.model) if full is None else ((k, v) for k, v in full.items() if ".lora_" in k)
        return {name: t.to("cpu", torch.float32, copy=True) for name, t in named}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy adapter_state's tensors back (every adapter weight, exactly these names)."""
        params = dict(adapter_tensors(self.model))
        if params.keys() != state.keys():
            missing, unexpected = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
            raise RuntimeError(f"checkpoint's LoRA adapters do not match train.lora: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])

    def save(self, ckpt_dir: Path, tokenizer: Any, full: dict[str, torch.Tensor] | None = None) -> None:
        """adapter/ (PEFT's save_pretrained: adapter_config.json + adapter_model.safetensors) and/or
        policy/ (the merged model, float32, with the tokenizer), per train.lora.save. full: the
        model's full state dict where this process holds shards only (FSDP2's rank 0)."""
        if self.save_what in ("adapter", "both"):
            # PEFT names the adapters under its wrapper: base_model.model.<the injected model's name>
            adapters = None if full is None else {
                f"base_model.model.{k}": v for k, v in self.adapter_state(full).items()}
            self.wrapped.save_pretrained(ckpt_dir / "adapter", safe_serialization=True, state_dict=adapters)
            tokenizer.save_pretrained(ckpt_dir / "adapter")
        if self.save_what in ("merged", "both"):
            state = merged_state_dict(self.model) if full is None else {
                k: v.detach().to("cpu", torch.float32) for k, v in merged_tensors(full.items(), self.scalings)}
            # PreTrainedModel.save_pretrained writes the config and the given tensors under their names
            self.wrapped.get_base_model().save_pretrained(ckpt_dir / "policy", state_dict=state,
                                                          safe_serialization=True)
            tokenizer.save_pretrained(ckpt_dir / "policy")
