"""How the learner combines a metric over micro-batches, optimizer steps and ranks: one rule for the
single learner and the FSDP2 ranks (rl_div.learner.update_loop applies it).

The rule, "weight by what the metric averages over": a micro-batch's metric is a mean over some
units of that micro-batch, its valid tokens or its responses (rows with a valid token), and enters
the mini-batch's metric weighted by the micro-batch's share of the mini-batch's units (over every
rank). The weighted sum is then the mean over the whole mini-batch, whatever the micro-batching
and the number of ranks (a mean of micro-batch means weighted by rows, or by tokens for a per-response
mean, is not). Which unit a metric averages over:

- ``loss/total`` is already divided by the mini-batch's counts: micro-batch values add up (SUMMED);
- a ``*_max`` metric keeps the largest value (MAXIMUM);
- ``loss/pg``, ``loss/kl``, ``loss/entropy`` are aggregates in the loss's ``agg`` mode: over
  RESPONSES for the seq-mean modes, over TOKENS for ``token-mean``;
- ``offpolicy/*`` (truncated importance weights) are over RESPONSES with ``tis: sequence``;
- every other metric (ratios, clip fractions, entropies, token-weight statistics) is over TOKENS.

Over an update's optimizer steps a metric is the mean of its steps' values (maxima stay).

Host reads. A metric may arrive as a 0-dim tensor (on the learner's device): it is then summed on the
device in float64 (the same float64 arithmetic as Python floats, so the values are those of reading
it at once), and :func:`resolve` reads every such sum in one transfer at the end of the update (one
host sync for the metrics instead of one per metric per micro-batch; rl_div.learner.update_loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Metric = float | torch.Tensor  # a Python number, or a 0-dim tensor read once by resolve()

TOKENS, RESPONSES, SUMMED, MAXIMUM = "tokens", "responses", "summed", "maximum"
AGG_METRICS = ("loss/pg", "loss/kl", "loss/entropy")  # the loss's own aggregate (its `agg` mode)
TOKEN_AGG = "token-mean"


@dataclass(frozen=True)
class Units:
    """How many of each unit a micro-batch (or a mini-batch) holds: valid tokens, responses."""

    tokens: float
    responses: float

    def of(self, unit: str) -> float:
        return self.tokens if unit == TOKENS else self.responses


def metric_unit(key: str, agg: str = TOKEN_AGG, tis: str = "token") -> str:
    """What the metric `key` averages over (TOKENS or RESPONSES), or how it combines otherwise
    (SUMMED, MAXIMUM); agg / tis: the loss's aggregation mode and importance-weight level."""
    if key.endswith("_max"):
        return MAXIMUM
    if key == "loss/total":
        return SUMMED
    if key in AGG_METRICS:
        return TOKENS if agg == TOKEN_AGG else RESPONSES
    if key.startswith("offpolicy/"):
        return RESPONSES if tis == "sequence" else TOKENS
    return TOKENS


def micro_weight(unit: str, micro: Units, mini: Units) -> float:
    """A micro-batch metric's weight in its mini-batch's metric: 1 for SUMMED and MAXIMUM (ignored
    there), else the micro-batch's share of the mini-batch's units (0 when the mini-batch has none)."""
    if unit in (SUMMED, MAXIMUM):
        return 1.0
    whole = mini.of(unit)
    return micro.of(unit) / whole if whole > 0 else 0.0


def add_metric(sums: dict[str, Metric], key: str, value: Metric, weight: float = 1.0) -> None:
    """sums[key] += weight * value, or the max of the two for a ``*_max`` key (weight ignored; the
    earlier value is kept unless the new one is larger, as Python's max). A zero weight adds 0, not
    value * 0: a mean over no units is NaN, and its share is nothing. A tensor value stays on its
    device, in float64 (read by resolve)."""
    value = value.detach().double() if isinstance(value, torch.Tensor) else float(value)
    if key.endswith("_max"):
        prev = sums.get(key, value)
        if isinstance(prev, torch.Tensor) or isinstance(value, torch.Tensor):
            sums[key] = torch.where(torch.as_tensor(value) > prev, value, prev)
        else:
            sums[key] = max(prev, value)
    else:
        sums[key] = sums.get(key, 0.0) + (value * weight if weight else 0.0)


def resolve(sums: dict[str, Metric]) -> dict[str, float]:
    """The sums as Python floats: every tensor sum read in one host transfer (per device)."""
    keys = [k for k, v in sums.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in sums.items() if not isinstance(v, torch.Tensor)}
    if keys:
        values = torch.stack([torch.as_tensor(sums[k]).reshape(()) for k in keys]).tolist()
        out.update(zip(keys, values, strict=True))
    return {k: out[k] for k in sums}


def add_micro_metrics(sums: dict[str, Metric], metrics: dict[str, Metric], micro: Units, mini: Units,
                      agg: str = TOKEN_AGG, tis: str = "token") -> None:
    """Add one micro-batch's metrics into the mini-batch's sums, each weighted by the rule above."""
    for key, value in metrics.items():
        add_metric(sums, key, value, micro_weight(metric_unit(key, agg, tis), micro, mini))


def mean_over_steps(sums: dict[str, float], steps: int) -> dict[str, float]:
    """Per-step means of summed metrics over ``steps`` optimizer steps (at least 1); maxima stay."""
    return {k: v if k.endswith("_max") else v / max(steps, 1) for k, v in sums.items()}
