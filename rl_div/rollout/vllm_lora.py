"""vLLM's own LoRA serving for train.lora.sync='adapter': the engine keeps the base weights and
samples through an adapter it loads from a PEFT-format folder (``LoRARequest``).

vLLM takes adapters from folders only (``LoRARequest(name, int_id, path)``; its worker reads
``adapter_config.json`` and ``adapter_model.safetensors`` there, vllm/lora/worker_manager.py). So
every weight sync writes the learner's adapter tensors, as PEFT's ``save_pretrained`` would, into a
new folder under a private root, registers it under a new int id (``LLMEngine.add_lora``: a load
failure surfaces in the sync, not in the next rollout), then removes the previous adapter from the
engine and its folder from disk. A new id per version also keeps vLLM's prefix cache honest (cached
blocks are keyed by the adapter), and the prefix cache is reset besides, as after a merged sync.

The engine is built with ``enable_lora=True``, ``max_lora_rank`` the smallest rank vLLM accepts
that is >= train.lora.rank, and ``max_loras=1``. Before the first sync no adapter is attached: a
fresh adapter's lora_B is 0, so the base model is the policy.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rl_div.models.lora import (
    ADAPTER_NAME,
    LoraSpec,
    adapter_tensors,
    injected_model,
    meta_model,
    peft_config,
    wrap_lora,
)
from rl_div.sync.buckets import BucketPayload, WeightSyncError, fetch_bucket, load_buckets

# vllm/config/lora.py MaxLoRARanks (vLLM 0.32): the ranks an engine can be built for
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
PEFT_PREFIX = "base_model.model."  # PEFT's saved names: the injected model's, under its wrapper


def engine_lora_args(spec: LoraSpec) -> dict[str, Any]:
    """vllm.LLM's LoRA arguments for adapters of spec's rank (ValueError past vLLM's largest)."""
    fits = [r for r in VLLM_LORA_RANKS if r >= spec.rank]
    if not fits:
        raise ValueError(f"train.lora.rank={spec.rank}: vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}")
    return {"enable_lora": True, "max_lora_rank": fits[0], "max_loras": 1}


def peft_file_name(name: str) -> str:
    """The learner's adapter tensor name as PEFT saves it (get_peft_model_state_dict):
    ``model.layers.0.self_attn.q_proj.lora_A.default.weight`` ->
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``."""
    return PEFT_PREFIX + name.replace(f".{ADAPTER_NAME}.", ".")


def expected_adapter_names(model_path: str, spec: LoraSpec, trust_remote_code: bool = False) -> set[str]:
    """Names of the adapter tensors the learner ships for spec on model_path's architecture (built
    on the meta device: no weights read)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    model = injected_model(wrap_lora(meta_model(config, trust_remote_code), spec, torch.float32))
    return {name for name, _ in adapter_tensors(model)}


def write_adapter_dir(tensors: Mapping[str, torch.Tensor], spec: LoraSpec, model_type: str, out: Path) -> int:
    """Write tensors (the learner's adapter names) as a PEFT adapter folder at out (created; the
    parent must exist): adapter_config.json + adapter_model.safetensors, loadable by PEFT's
    ``PeftModel.from_pretrained`` and by vLLM. Returns the bytes of tensor data written."""
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        peft_config(spec, model_type).save_pretrained(str(tmp))
        save_file({peft_file_name(k): t.detach().to("cpu").contiguous() for k, t in tensors.items()},
                  str(tmp / "adapter_model.safetensors"))
        tmp.rename(out)  # the folder appears whole or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sum(t.numel() * t.element_size() for t in tensors.values())


class VllmAdapterSync:
    """Rollout side of adapter sync for a ``vllm.LLM`` built with engine_lora_args: apply() turns a
    payload of adapter tensors into the engine's current LoRARequest (``request``, None before the
    first sync)."""

    def __init__(self, llm: Any, model_path: str, spec: LoraSpec, model_type: str,
                 trust_remote_code: bool = False) -> None:
        self.llm = llm
        self.spec = spec
        self.model_type = model_type
        self.expected = expected_adapter_names(model_path, spec, trust_remote_code)
        self.root = Path(tempfile.mkdtemp(prefix="rl_div_vllm_lora_"))
        self.request: Any = None  # vllm.lora.request.LoRARequest of the adapter now served
        self.next_id = 1  # LoRARequest ids start at 1
        self.bytes_received = 0  # adapter bytes of the last sync

    def collect(self, payload: Mapping[str, torch.Tensor] | BucketPayload) -> dict[str, torch.Tensor]:
        """Every adapter tensor of the payload, checked to be exactly the adapters this engine serves."""
        if isinstance(payload, BucketPayload):
            tensors: dict[str, torch.Tensor] = {}
            load_buckets(payload, tensors.update, expected=self.expected,
                         fetch=lambda ref: fetch_bucket(ref, copy=True))
            return tensors
        if not isinstance(payload, Mapping):
            raise WeightSyncError(f"adapter weight sync got a {type(payload).__name__} payload (object_store only)")
        if payload.keys() != self.expected:
            raise WeightSyncError(f"adapter weights do not match this engine's adapters: "
                                  f"{sorted(payload.keys() ^ self.expected)[:3]}")
        return dict(payload)

    def apply(self, payload: Mapping[str, torch.Tensor] | BucketPayload, version: int) -> Any:
        """Write the payload's adapter as a new folder, load it into the engine under a new id, drop
        the previous one; returns the new LoRARequest. On failure the previous adapter stays served."""
        from vllm.lora.request import LoRARequest

        tensors = self.collect(payload)
        lora_id = self.next_id
        self.next_id += 1
        folder = self.root / f"v{version}_id{lora_id}"
        self.bytes_received = write_adapter_dir(tensors, self.spec, self.model_type, folder)
        request = LoRARequest(f"rl_div_policy_{lora_id}", lora_id, str(folder))
        try:
            if not self.llm.llm_engine.add_lora(request):
                raise WeightSyncError(f"vLLM did not load the adapter of weights version {version}")
        except WeightSyncError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        except Exception as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise WeightSyncError(f"vLLM failed to load the adapter of weights version {version}: {err}") from err
        old, self.request = self.request, request
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        return request

    def close(self) -> None:
        """Remove every adapter folder written."""
        shutil.rmtree(self.root, ignore_errors=True)
