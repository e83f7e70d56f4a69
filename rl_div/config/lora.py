"""train.lora: low-rank adapters (PEFT) on a frozen base model, and the rules that decide, before any
work, whether a config's LoRA can run (rl_div.config.checks calls :func:`check_lora`).

The section is plain data; the learner builds PEFT's own ``LoraConfig`` from it
(rl_div.models.lora). Nothing here imports PEFT or transformers at module import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rl_div.config.rollout_backends import ROLLOUT_BACKENDS, lora_sync_mode

__all__ = ["LoraConfig", "check_lora", "lora_problems", "lora_sync_mode"]

if TYPE_CHECKING:
    from rl_div.config.schema import Config


class LoraConfig(BaseModel):
    # as rl_div.config.sections.Section (which imports this module: no import back)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(False, description="Train LoRA adapters on a frozen base model instead of every weight.")
    rank: int = Field(8, ge=1, description="LoRA rank r of every adapter (must be >= 1).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; adapters are scaled by alpha / rank.")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the adapters' input; 0 keeps the update's forward exactly "
        "pi_old (the fused on-policy path, rl_div.learner.onpolicy).",
    )
    target_modules: list[str] | None = Field(
        None, description="Module names (last name component, PEFT's matching) that get adapters; None = the "
        "attention and MLP projections of the model's architecture (llama, mistral, qwen2, qwen3).",
    )
    sync: Literal["auto", "adapter", "merged"] = Field(
        "auto", description="What weight sync ships: 'adapter' = the adapter tensors only (hf workers run the "
        "same PEFT model; vLLM workers serve them with vLLM's LoRA support, enable_lora + LoRARequest), "
        "'merged' = base + adapter merged into the base model's tensors (any backend, as full fine-tuning); "
        "'auto' = the backend's default: adapter for hf, merged for vllm.",
    )
    save: Literal["adapter", "merged", "both"] = Field(
        "both", description="What a checkpoint exports: the adapter in PEFT's format (adapter/), the merged "
        "model (policy/, plain from_pretrained), or both. --resume works with any of them.",
    )

    @field_validator("target_modules")
    @classmethod
    def check_targets(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any(not name.strip() for name in value)):
            raise ValueError("train.lora.target_modules: give module names (e.g. [q_proj, v_proj]) or leave it unset")
        return value

    def spec_fields(self) -> dict[str, Any]:
        """What PEFT builds the adapters from: rl_div.models.lora.LoraSpec(**these), in the learner and
        in the rollout workers that run adapters."""
        return self.model_dump(include={"rank", "alpha", "dropout", "target_modules"})


def lora_problems(cfg: Config) -> list[str]:
    """Rules of train.lora across sections that need neither the registries nor the model (empty: fine);
    rl_div.config.schema checks them when the config loads."""
    out: list[str] = []
    if not cfg.train.lora.enabled:
        return out
    if cfg.rollout.weight_sync != "object_store":
        out.append(f"train.lora ships adapters or merged weights through rollout.weight_sync='object_store' only, "
                   f"got {cfg.rollout.weight_sync!r}")
    return out


def check_lora(cfg: Config) -> None:
    """After the plugins import (rl_div.config.checks.check_inputs): the rollout backend takes the sync
    asked for. Whether PEFT can wrap the model is checked next, by the Trainer before its output folder
    or Ray (rl_div.models.lora.check_lora_model: it builds the architecture). Raises ValueError."""
    lora, backend = cfg.train.lora, ROLLOUT_BACKENDS[cfg.rollout.backend]
    if not lora.enabled or lora_sync_mode(cfg) != "adapter":
        return
    if not backend.lora_adapters:
        raise ValueError(f"train.lora.sync='adapter': rollout backend {cfg.rollout.backend!r} cannot run adapters; "
                         "use train.lora.sync='merged' (or 'auto')")
    if backend.lora_max_rank is not None and lora.rank > backend.lora_max_rank:
        raise ValueError(f"train.lora.rank={lora.rank}: rollout backend {cfg.rollout.backend!r} serves adapters up to "
                         f"rank {backend.lora_max_rank}; use train.lora.sync='merged' or a smaller rank")
