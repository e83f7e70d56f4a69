"""Checkpoints across strategies: a model + optimizer written by one learner layout, read by another.

train.strategy 'fsdp2' writes model and optimizer with torch.distributed.checkpoint (dcp/, resharded
on load to any number of ranks); 'single' writes policy/ (HF safetensors) and the optimizer's own
state dict in learner_state.pt. Both write policy/ with the full weights and the scheduler,
generator, RNG state and version in learner_state.pt, so only model + optimizer need translating:
- load_dcp: a dcp/ folder into one process's plain model and optimizer (fsdp2 -> single);
- load_single_into_sharded: policy/ + learner_state.pt's optimizer into sharded model and
  optimizer (single -> fsdp2; every rank reads the files and keeps its own shards).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_dcp(model: torch.nn.Module, optimizer: torch.optim.Optimizer, dcp_dir: Path) -> None:
    """Model and optimizer state from a DCP checkpoint saved with any number of ranks, into an
    unsharded model and its optimizer in this process (no process group needed)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from rl_div.learner.safe_dcp import safe_dcp_load

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    safe_dcp_load(state, dcp_dir)  # a folder from elsewhere cannot run code on load
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def named_optimizer_state(optimizer_state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A torch optimizer state dict keyed by parameter index -> keyed by parameter name (the form
    torch.distributed.checkpoint.state_dict reads). names[i] is the name of the optimizer's i-th
    parameter, counted over its param groups in order."""
    state = {names[i]: v for i, v in optimizer_state["state"].items()}
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in optimizer_state["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_single_into_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt_dir: Path,
                             lora: bool = False) -> None:
    """A checkpoint of train.strategy 'single' (policy/ + learner_state.pt) into an FSDP2-sharded
    model and its optimizer: every rank loads the full tensors and keeps its shards. lora: the model
    has train.lora's adapters; they come from learner_state.pt (policy/ is merged), the frozen base
    stays the one loaded from the model path."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    saved = torch.load(ckpt_dir / "learner_state.pt", weights_only=True)
    full: dict[str, torch.Tensor] = {}
    if lora:
        from rl_div.learner.lora import LEARNER_STATE_KEY

        full.update(saved[LEARNER_STATE_KEY])
    else:
        for f in sorted((ckpt_dir / "policy").glob("*.safetensors")):
            full.update(load_file(str(f)))
    from rl_div.sync.buckets import tied_names

    for alias, stored in tied_names(model).items():  # tied weights are saved once, under the first name
        if alias not in full and stored in full:
            full[alias] = full[stored]
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    set_state_dict(model, optimizer, model_state_dict=full,
                   optim_state_dict=named_optimizer_state(saved["optimizer"], names),
                   options=StateDictOptions(full_state_dict=True, strict=not lora))
