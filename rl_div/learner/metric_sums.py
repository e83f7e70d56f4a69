"""How the learner combines a metric over micro-batches, optimizer steps and ranks: ``*_max``
metrics keep the largest value, every other metric adds up (weighted by its share)."""

from __future__ import annotations


def add_metric(sums: dict[str, float], key: str, value: float, weight: float = 1.0) -> None:
    """sums[key] += weight * value, or the max of the two for a ``*_max`` key (weight ignored)."""
    value = float(value)
    if key.endswith("_max"):
        sums[key] = max(sums.get(key, value), value)
    else:
        sums[key] = sums.get(key, 0.0) + value * weight


def mean_over_steps(sums: dict[str, float], steps: int) -> dict[str, float]:
    """Per-step means of summed metrics over ``steps`` optimizer steps (at least 1); maxima stay."""
    return {k: v if k.endswith("_max") else v / max(steps, 1) for k, v in sums.items()}
