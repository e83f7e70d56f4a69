"""Cross-rank reductions, and token weights computed over a whole mini-batch (token_weight_scope
"mini"), the same at any world size.

A reducer is the only thing that differs between one process and several ranks: LOCAL is the
identity; GroupReducer all-reduces / all-gathers over torch.distributed. Token weights over a
mini-batch gather every rank's detached log-probs and entropies into the mini-batch's [B, T]
tensors (in mini-batch row order) and then run the registered token-weight function once, on every
rank with the same generator state: the max|Omega| normaliser, Clip-Cov/KL-Cov means,
covariances, top-k and random pick, and the 80/20 threshold are then exactly those of one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rl_div.algos import TOKEN_WEIGHTS
from rl_div.algos.token_weights import TokenWeightInputs, TokenWeightOutput
from rl_div.learner.metric_sums import add_metric
from rl_div.learner.plan import loss_mask

if TYPE_CHECKING:
    from rl_div.data import RolloutBatch
    from rl_div.learner.single import Learner


class LocalReducer:
    """One process: every reduction is the identity."""

    world_size = 1

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[n_r, ...] on each rank -> the list of every rank's tensor, in rank order."""
        return [x]

    def sum_dict(self, d: dict[str, float]) -> dict[str, float]:
        """Per-key sums of every rank's dict (keys missing on a rank count as 0); a ``*_max`` key
        takes the largest value instead."""
        return dict(d)


LOCAL = LocalReducer()


class GroupReducer(LocalReducer):
    """Reductions over the default torch.distributed process group (tensors go through `device`,
    the collective backend's device: CPU for gloo, the rank's GPU for NCCL)."""

    def __init__(self, world_size: int, device: torch.device) -> None:
        self.world_size, self.device = world_size, device

    def max(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        t = x.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.to(x.device)

    def gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        import torch.distributed as dist

        n = torch.tensor([x.shape[0]], device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        rows = max(int(s) for s in sizes)
        padded = torch.zeros((rows, *x.shape[1:]), dtype=x.dtype, device=self.device)
        padded[: x.shape[0]] = x.detach().to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return [p[: int(s)].to(x.device) for p, s in zip(parts, sizes, strict=True)]

    def sum_dict(self, d: dict[str, float]) -> dict[str, float]:
        import torch.distributed as dist

        dicts: list[Any] = [None] * self.world_size
        dist.all_gather_object(dicts, d)
        out: dict[str, float] = {}
        for part in dicts:
            for k, v in part.items():
                add_metric(out, k, v)
        return out


@dataclass
class MiniBatchTokenWeights:
    """Token weights over a mini-batch: weights / kl_penalty_coef [B, T] in mini-batch row order."""

    out: TokenWeightOutput

    @property
    def metrics(self) -> dict[str, float]:
        return self.out.metrics

    def at(self, positions: list[int]) -> TokenWeightOutput:
        """The rows at these mini-batch positions."""
        idx = torch.as_tensor(positions, dtype=torch.long)
        coef = self.out.kl_penalty_coef
        return TokenWeightOutput(self.out.weights[idx], None if coef is None else coef[idx], {})


def mini_batch_token_weights(learner: Learner, mini: RolloutBatch, micro_positions: list[list[list[int]]],
                             rank: int, reducer: LocalReducer) -> MiniBatchTokenWeights:
    """Token weights over the whole mini-batch.

    Args:
        learner: runs the no-grad forwards (learner.policy_forward) and owns the generator.
        mini: the global mini-batch (every rank holds it).
        micro_positions: [rank][k] -> mini-batch row positions of that rank's k-th micro-batch
            (an empty list is a padding micro-batch: a forward on row 0 whose result is dropped, so
            every rank runs as many forwards as the others).
        rank, reducer: this rank and its reducer.
    Returns:
        MiniBatchTokenWeights over the mini-batch's [B, T].
    """
    logps, entropies = [], []
    with torch.no_grad():
        for positions in micro_positions[rank]:
            logp, entropy, _ = learner.policy_forward(mini.select(positions or [0]))
            if positions:
                logps.append(logp.float().cpu())
                entropies.append(entropy.float().cpu())
    width = mini.response_ids.shape[1]
    own_logp = torch.cat(logps) if logps else torch.zeros(0, width)
    own_entropy = torch.cat(entropies) if entropies else torch.zeros(0, width)
    logp_all = torch.zeros(mini.size, width)
    entropy_all = torch.zeros(mini.size, width)
    for r, (lp, ent) in enumerate(zip(reducer.gather(own_logp), reducer.gather(own_entropy), strict=True)):
        idx = torch.as_tensor([p for m in micro_positions[r] for p in m], dtype=torch.long)
        logp_all[idx], entropy_all[idx] = lp, ent
    assert mini.advantages is not None and mini.old_logprobs is not None
    mask = loss_mask(mini, learner.cfg).float()
    algo = learner.cfg.algo
    out = TOKEN_WEIGHTS[algo.token_weight](
        TokenWeightInputs(advantages=mini.advantages.reshape(mini.size, -1).float().expand_as(logp_all),
                          logprobs=logp_all, old_logprobs=mini.old_logprobs.float(), mask=mask,
                          old_entropy=None if mini.old_entropy is None else mini.old_entropy.float(),
                          entropy=entropy_all, generator=learner.generator),
        **algo.token_weight_params)
    return MiniBatchTokenWeights(out)
