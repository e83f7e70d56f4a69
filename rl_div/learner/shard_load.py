"""Load a policy once and shard it: the FSDP2 ranks build the model on the meta device (no memory),
shard it, and receive their shards from rank 0, the only rank that reads the checkpoint.

Before, every rank loaded the full float32 model on the host and then sharded it: world_size full
copies of a 7B model (28 GB each) on one node. Here (torch's documented FSDP2 meta-device recipe):

1. every rank: ``from_config`` under ``torch.device("meta")`` (shapes only), then ``fully_shard``;
2. every rank: ``to_empty(device=...)`` allocates its own shards, uninitialised;
3. rank 0 loads the checkpoint (float32, on the host) and ``set_model_state_dict(...,
   full_state_dict=True, broadcast_from_rank0=True)`` broadcasts each tensor, every rank keeping its
   shard; the other ranks pass an empty state dict;
4. non-persistent buffers (rotary ``inv_freq``: not in any state dict) go from rank 0 by broadcast.

The result is the model every rank would have loaded itself, bit for bit (tests/test_dist_shard_load.py).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def meta_policy(model_path: str, trust_remote_code: bool = False) -> tuple[torch.nn.Module, Any]:
    """(the causal LM of model_path with every parameter and buffer on the meta device, in float32;
    its tokenizer). The generation config is the folder's (as from_pretrained reads it), when it has one."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from rl_div.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    with contextlib.suppress(OSError):  # no generation_config.json: from_config's default stays
        model.generation_config = GenerationConfig.from_pretrained(model_path)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def is_meta(model: torch.nn.Module) -> bool:
    """Whether the model's parameters are still on the meta device (not loaded yet)."""
    return any(p.is_meta for p in model.parameters())


def load_into_shards(model: torch.nn.Module, model_path: str, rank: int, device: torch.device,
                     trust_remote_code: bool = False) -> None:
    """Steps 2-4 of the module docstring, on every rank of the current process group, after
    fully_shard: allocate the shards on `device`, fill them from rank 0's load of model_path."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from rl_div.models.loading import load_policy

    model.to_empty(device=device)
    full: dict[str, torch.Tensor] = {}
    loaded = None
    if rank == 0:
        with torch.random.fork_rng(devices=[]):  # loading must not move the RNG the learner's state carries
            loaded, _ = load_policy(model_path, dtype="float32", trust_remote_code=trust_remote_code, device="cpu")
        full = loaded.state_dict()
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    persistent = set(model.state_dict())
    source = dict(loaded.named_buffers()) if loaded is not None else {}
    for name, buffer in model.named_buffers():  # in the same order on every rank
        if name in persistent:
            continue
        if rank == 0:
            buffer.copy_(source[name])
        dist.broadcast(buffer, src=0)
    del full, loaded
