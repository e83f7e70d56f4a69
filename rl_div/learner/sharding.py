"""FSDP2 pieces shared by the sharded policy and the sharded reference model: the rendezvous address,
a fresh device mesh per process group, the root module around the chunked head, and fully_shard."""

from __future__ import annotations

import itertools
import socket
from typing import Any

import torch

from rl_div.data import RolloutBatch
from rl_div.learner.packing import Packing


def free_address() -> tuple[str, int]:
    """This node's IP and a free TCP port (rank 0 hosts torch.distributed's rendezvous there)."""
    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1", port


_MESHES = itertools.count()


def new_mesh(device_type: str, world_size: int) -> Any:
    """A 1-D device mesh over the current process group, with a dim name this process never used.

    torch compares and hashes meshes by value (ranks, layout, device, dim names), not by this process's
    rank or process group, and caches DTensor sharding (local shapes and offsets) by that value. A
    process that joins a second group as another rank (a reused pool worker, a restarted actor) would
    otherwise get the first group's offsets back: its shards are then written at the wrong place (a
    DCP checkpoint with rows swapped between ranks). A fresh name makes every group's mesh distinct."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world_size,), mesh_dim_names=(f"learners{next(_MESHES)}",))


class PolicyModule(torch.nn.Module):
    """The FSDP2 root: its forward is policy_forward of the policy, so FSDP2 gathers the root unit's
    parameters (embeddings, final norm, LM head) around the chunked head, which reads the head's
    weight directly rather than calling the head module."""

    def __init__(self, policy: torch.nn.Module, chunk_rows: int, packing: Packing | None = None) -> None:
        super().__init__()
        self.policy, self.chunk_rows, self.packing = policy, chunk_rows, packing

    def forward(self, micro: RolloutBatch, with_prompt: bool, temperature: float | torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        from rl_div.learner.forward import policy_forward

        return policy_forward(self.policy, micro, self.chunk_rows, with_prompt, temperature, self.packing)


def mixed_precision(compute_dtype: torch.dtype) -> dict[str, Any]:
    """fully_shard's options for a compute dtype: none for float32; for bf16 (fp16)
    ``MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=float32)``: parameters all-gathered
    and computed in bf16, gradients reduce-scattered (and accumulated) in float32, the sharded
    parameters and AdamW state float32. Forward inputs are not cast (cast_forward_inputs=False): the
    root's are the batch and the sampling temperatures, which must stay exact; each layer's are
    already in bf16, the dtype of the bf16 embedding's output."""
    if compute_dtype == torch.float32:
        return {}
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return {"mp_policy": MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32,
                                              cast_forward_inputs=False)}


def shard_policy(root: torch.nn.Module, model: torch.nn.Module, mesh: Any, **options: Any) -> None:
    """fully_shard every decoder layer of model, then root (the rest of the model), with fully_shard's
    options. FSDP2 averages gradients over ranks (gloo has no pre-multiplied sum for
    set_gradient_divide_factor(1)), so update_loop.planned_step multiplies each rank's loss by the world size."""
    from torch.distributed.fsdp import fully_shard

    from rl_div.versions import check_torch_fsdp2

    check_torch_fsdp2()  # fully_shard is public from torch 2.6
    layers = getattr(getattr(model, "model", None), "layers", None)
    for layer in layers if layers is not None else []:
        fully_shard(layer, mesh=mesh, **options)
    fully_shard(root, mesh=mesh, **options)
