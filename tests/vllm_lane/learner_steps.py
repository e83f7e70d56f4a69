"""Learner-side helpers shared by the vLLM lane tests (imported by name: this folder is on sys.path)."""

from __future__ import annotations

import torch

from rl_div.data import RolloutBatch
from rl_div.learner.forward import policy_forward


def take_optimizer_step(model: torch.nn.Module, batch: RolloutBatch, lr: float = 1e-2) -> None:
    """One real AdamW step on the batch's mean token log-likelihood (any gradient step would do:
    the tests only need weights that differ from the engine's)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    logp, _, _ = policy_forward(model, batch, chunk_rows=1024)
    mask = batch.response_mask.float()
    (-(logp * mask).sum() / mask.sum()).backward()
    optimizer.step()
    model.eval()
