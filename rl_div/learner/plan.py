"""The update planner: a pure function from a batch's shape (lengths, advantages) to what every
learner rank does in one update. The driver plans; the ranks only execute, so nothing about the
update depends on a rank's own RNG, row count or token count.

A plan fixes, per PPO epoch and mini-batch: the seeded permutation, whether the mini-batch is
skipped (decided on the global mini-batch), the global token and sequence denominators every
loss aggregation divides by, the rows each rank holds (balanced by token count), and each rank's
micro-batches (cut by a token budget and a row cap), padded with empty micro-batches so that
every rank runs the same number of forward/backward passes (FSDP2's collectives need that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rl_div.algos import TOKEN_WEIGHTS
from rl_div.algos.overlong import loss_token_mask

if TYPE_CHECKING:
    from rl_div.config import Config
    from rl_div.data import RolloutBatch


@dataclass(frozen=True)
class MiniBatchPlan:
    """One optimizer step (or a skipped one) of an update.

    rows: global row ids of the mini-batch in permutation order; skip: no step (no signal);
    token_total / seq_total: valid response tokens / sequences with one or more of them, over the
    whole mini-batch; micro: micro[rank][k] = global row ids of rank's k-th micro-batch (an empty
    list is a padding micro-batch: the rank runs a pass with no tokens). len(micro[r]) is the same
    for every rank.
    """

    rows: list[int]
    skip: bool
    token_total: float
    seq_total: float
    micro: list[list[list[int]]]


def permutation(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) (the same on every machine for the same seed)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def plan_seed(run_seed: int, version: int) -> int:
    """The permutation seed of the update that starts at policy `version` (resumes reproduce it)."""
    return run_seed * 1_000_003 + version


def balance_rows(rows: list[int], cost: list[int], world_size: int) -> list[list[int]]:
    """Split rows across ranks so their token costs are close (longest row first onto the rank with
    the fewest tokens so far; ties to the lower rank). Each rank keeps its rows in the given order.

    Args:
        rows: global row ids; cost: cost[row] = tokens of that row (indexed by global row id).
    Returns:
        world_size lists of row ids (some may be empty when there are fewer rows than ranks).
    """
    order = sorted(range(len(rows)), key=lambda i: (-cost[rows[i]], i))
    load = [0] * world_size
    owner: dict[int, int] = {}
    for i in order:
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += cost[rows[i]]
    return [[rows[i] for i in range(len(rows)) if owner[i] == r] for r in range(world_size)]


def cut_micro_batches(rows: list[int], cost: list[int], max_rows: int, max_tokens: int | None) -> list[list[int]]:
    """Consecutive micro-batches of at most max_rows rows and at most max_tokens tokens (a single
    row over the budget is a micro-batch of its own). No rows -> no micro-batches."""
    micros: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for row in rows:
        over = max_tokens is not None and current and tokens + cost[row] > max_tokens
        if current and (len(current) >= max_rows or over):
            micros.append(current)
            current, tokens = [], 0
        current.append(row)
        tokens += cost[row]
    if current:
        micros.append(current)
    return micros


def pad_micro_counts(per_rank: list[list[list[int]]]) -> list[list[list[int]]]:
    """Append empty micro-batches so every rank has as many as the busiest one (at least one)."""
    depth = max(1, *(len(m) for m in per_rank))
    return [m + [[] for _ in range(depth - len(m))] for m in per_rank]


def plan_update(cost: list[int], response_tokens: list[int], has_signal: list[bool], *, world_size: int,
                epochs: int, mini_batch_size: int | None, micro_batch_size: int,
                max_tokens_per_micro_batch: int | None, seed: int, skip_zero_signal: bool,
                other_terms: bool) -> list[MiniBatchPlan]:
    """Plan one update over a batch of len(cost) rows.

    Args:
        cost: per row, the tokens a forward pass reads (prompt + response), for balancing and budgets.
        response_tokens: per row, its valid response tokens (the loss denominators count these).
        has_signal: per row, whether its advantage is non-zero anywhere.
        world_size: learner ranks; epochs: PPO epochs; mini_batch_size: rows per optimizer step
        (None = the whole batch, in batch order); micro_batch_size: row cap per micro-batch;
        max_tokens_per_micro_batch: token budget per micro-batch (None = rows only);
        seed: permutation seed (see plan_seed); skip_zero_signal: skip a mini-batch without signal
        unless other_terms (a KL / entropy / KL-Cov term that acts without advantage).
    Returns:
        the mini-batch plans, epoch after epoch.
    """
    n = len(cost)
    mini = mini_batch_size or n
    plans: list[MiniBatchPlan] = []
    for epoch in range(epochs if n else 0):
        order = permutation(n, seed + epoch) if mini < n else list(range(n))
        for start in range(0, n, mini):
            rows = order[start : start + mini]
            skip = skip_zero_signal and not other_terms and not any(has_signal[r] for r in rows)
            per_rank = [cut_micro_batches(r, cost, micro_batch_size, max_tokens_per_micro_batch)
                        for r in balance_rows(rows, cost, world_size)]
            plans.append(mini_batch_plan(rows, skip, response_tokens, per_rank))
    return plans


def other_loss_terms(loss_params: dict[str, Any], token_weight: str) -> bool:
    """Whether a loss term acts without an advantage, so a zero-advantage mini-batch still has a
    gradient: a KL or entropy coefficient in loss_params, or a token weight that declares a KL term
    (``TokenWeightNeeds.kl_term``: KL-Cov)."""
    return bool(loss_params.get("kl_coef", 0.0) or loss_params.get("entropy_coef", 0.0)
                or TOKEN_WEIGHTS.needs(token_weight).kl_term)


def loss_mask(batch: RolloutBatch, cfg: Config) -> torch.Tensor:
    """[B, T] the response tokens the loss reads: response_mask, without truncated rows under
    rollout.overlong = "mask" (rl_div.algos.overlong). The forward still runs on every real token."""
    return loss_token_mask(batch.response_mask, batch.truncated, cfg.rollout.overlong == "mask")


def token_weights_over_mini_batch(cfg: Config) -> bool:
    """Whether the update computes token weights once over each mini-batch (train.token_weight_scope
    = "mini") rather than per micro-batch: only for a token weight that reweights at all and is not
    token-local (a token-local weight is the same over any set of tokens)."""
    needs = TOKEN_WEIGHTS.needs(cfg.algo.token_weight)
    return cfg.train.token_weight_scope == "mini" and needs.reweights and not needs.token_local


def mini_batch_plan(rows: list[int], skip: bool, response_tokens: list[int | float],
                    per_rank: list[list[list[int]]]) -> MiniBatchPlan:
    """The plan of mini-batch `rows` split into per_rank[rank][k] micro-batches (padded to equal
    counts), with the mini-batch's valid-token and sequence counts from response_tokens[row]. A
    mini-batch without a token for the loss (every row masked by rollout.overlong) is skipped too."""
    token_total = float(sum(response_tokens[r] for r in rows))
    return MiniBatchPlan(rows=rows, skip=skip or token_total == 0, token_total=token_total,
                         seq_total=float(sum(response_tokens[r] > 0 for r in rows)), micro=pad_micro_counts(per_rank))


def row_chunk_plan(rows: list[int], skip: bool, response_tokens: list[int | float],
                   micro_batch_size: int) -> MiniBatchPlan:
    """One process's plan of mini-batch `rows` in consecutive micro-batches of micro_batch_size rows
    (no token budget): the single learner's split (Learner.mini_batch_plans)."""
    chunks = [rows[start : start + micro_batch_size] for start in range(0, len(rows), micro_batch_size)]
    return mini_batch_plan(rows, skip, response_tokens, [chunks])


def plan_batch(batch: RolloutBatch, cfg: Config, world_size: int, version: int,
               loss_overrides: dict[str, Any] | None = None) -> list[MiniBatchPlan]:
    """plan_update for a scored RolloutBatch under cfg.train / cfg.algo (loss_params with the update's
    loss_overrides merged over them, as the learner uses them), at policy `version`."""
    t, params = cfg.train, {**cfg.algo.loss_params, **(loss_overrides or {})}
    other_terms = other_loss_terms(params, cfg.algo.token_weight)
    response, trained = batch.response_mask.sum(dim=1), loss_mask(batch, cfg).sum(dim=1)
    assert batch.advantages is not None
    adv = batch.advantages.reshape(batch.size, -1)
    return plan_update((batch.prompt_mask.sum(dim=1) + response).tolist(), trained.tolist(),
                       (adv != 0).any(dim=1).tolist(), world_size=world_size, epochs=t.ppo_epochs,
                       mini_batch_size=t.mini_batch_size, micro_batch_size=t.micro_batch_size,
                       max_tokens_per_micro_batch=t.max_tokens_per_micro_batch,
                       seed=plan_seed(cfg.run.seed, version), skip_zero_signal=t.skip_zero_signal_steps,
                       other_terms=other_terms)
