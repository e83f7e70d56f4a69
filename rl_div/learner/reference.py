"""The frozen reference policy of the KL term, sharded forward-only across the learner ranks.

One learner keeps a float32 deepcopy of the starting policy (Learner.reference_model). With
train.strategy=fsdp2 a deepcopy would put the whole model on every rank again, so rank 0 loads
the starting weights from the model path (the same weights the policy started from, float32 as
the policy) into every rank's shards, and FSDP2 shards them on the same mesh: forward-only
(no gradients, eval mode, parameters freed again after every forward). Its root's forward is
policy_forward (the chunked LM head), as for the policy (rl_div.learner.sharding.PolicyModule).

Like the single learner's, the reference is never checkpointed: a resumed run loads it again from
the model path, i.e. it stays the model the run started from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from rl_div.learner.packing import prepare_packing
from rl_div.learner.shard_load import load_into_shards, meta_policy
from rl_div.learner.sharding import PolicyModule, shard_policy
from rl_div.models.loading import DTYPES

if TYPE_CHECKING:
    from rl_div.config import Config


def sharded_reference(cfg: Config, model_path: str, mesh: Any, device: torch.device, rank: int,
                      options: dict[str, Any] | None = None) -> PolicyModule:
    """The starting policy at model_path, fully_shard'ed on `mesh` (with fully_shard's `options`: the
    policy's mixed precision) for forward passes only, loaded once by rank 0 into every rank's shards
    (rl_div.learner.shard_load).

    Every rank must call the returned module's forward equally often (it all-gathers each unit's
    parameters), which the learner's policy_stats does: padding micro-batches run it too.
    """
    model, _ = meta_policy(model_path, cfg.model.trust_remote_code)
    model.eval().requires_grad_(False)
    packing = prepare_packing(model, DTYPES[cfg.model.dtype], cfg.train.packing, cfg.train.packing_tokens)
    root = PolicyModule(model, cfg.train.logit_chunk_rows, packing).eval()
    # Free the gathered parameters after each forward, the root's too (no backward re-uses them).
    shard_policy(root, model, mesh, reshard_after_forward=True, **(options or {}))
    load_into_shards(model, model_path, rank, device, cfg.model.trust_remote_code)
    return root
