"""Per-group reductions over a flat batch of responses, broadcast back to rows.

Rows carry a ``group_index`` (the prompt they answer). Groups are usually contiguous, but nothing
here relies on it: ids are compacted with :func:`torch.unique`, so any long ids work.
"""

from __future__ import annotations

import math

import torch


def compact_groups(group_index: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids to ``0 .. n_groups-1``.

    Args:
        group_index: [B] long.
    Returns:
        (inverse [B] long, n_groups).
    """
    uniq, inverse = torch.unique(group_index, return_inverse=True)
    return inverse, int(uniq.numel())


def group_sum(values: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sum of ``values`` [B] per compact group -> [n_groups]."""
    out = torch.zeros(n_groups, dtype=values.dtype, device=values.device)
    return out.index_add(0, inverse, values)


def group_mean_std(
    values: torch.Tensor, group_index: torch.Tensor, *, unbiased: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of ``values`` within each group, broadcast back per row.

    OPEN choice (default: population std, i.e. divide by n; docs/algorithms.md section 6). GRPO's
    std(r) does not say which; the population std is the literal spread of the group's rewards and is defined
    for a group of one. ``unbiased=True`` divides by n - 1 like ``torch.std`` (verl, TRL); a group
    of one then gets std 0 instead of NaN. Two passes (mean, then squared deviations) so that a
    group of equal values gets a std of exactly 0.

    Args:
        values: [B] float.
        group_index: [B] long.
    Returns:
        (mean [B], std [B]) in the dtype of ``values``.
    """
    inverse, n = compact_groups(group_index)
    counts = group_sum(torch.ones_like(values), inverse, n)
    mean = group_sum(values, inverse, n) / counts
    dev2 = group_sum((values - mean[inverse]) ** 2, inverse, n)
    denom = (counts - 1).clamp(min=1) if unbiased else counts
    std = torch.sqrt(dev2 / denom)
    return mean[inverse], std[inverse]


def group_all_equal(values: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Whether every value in a row's group is identical (a zero-signal group), per row.

    Args:
        values: [B] float, finite.
        group_index: [B] long.
    Returns:
        [B] bool.
    """
    inverse, n = compact_groups(group_index)
    lo = torch.full((n,), math.inf, dtype=values.dtype, device=values.device)
    hi = torch.full((n,), -math.inf, dtype=values.dtype, device=values.device)
    lo = lo.scatter_reduce(0, inverse, values, reduce="amin")
    hi = hi.scatter_reduce(0, inverse, values, reduce="amax")
    return (lo == hi)[inverse]


def group_any(flags: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Whether any row of each row's group is True. flags [B] bool -> [B] bool."""
    inverse, n = compact_groups(group_index)
    hits = group_sum(flags.to(torch.float64), inverse, n)
    return (hits > 0)[inverse]


def group_all(flags: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Whether all rows of each row's group are True. flags [B] bool -> [B] bool."""
    return ~group_any(~flags, group_index)


def group_sizes(group_index: torch.Tensor) -> torch.Tensor:
    """Number of rows in each row's group. group_index [B] -> [B] long."""
    inverse, n = compact_groups(group_index)
    counts = torch.zeros(n, dtype=torch.long, device=group_index.device)
    counts = counts.index_add(0, inverse, torch.ones_like(inverse))
    return counts[inverse]


def fraction_of_groups(row_flags: torch.Tensor, group_index: torch.Tensor) -> float:
    """Fraction of groups whose (group-constant) flag is True. row_flags [B] bool -> float."""
    inverse, n = compact_groups(group_index)
    if n == 0:
        return 0.0
    per_group = torch.zeros(n, dtype=torch.bool, device=row_flags.device)
    per_group[inverse] = row_flags  # group-constant, so any row of the group may write it
    return float(per_group.double().mean().item())


def rank_within_group(keys: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Rank of each row's key inside its group, 0 = smallest; ties go to the lower row index.

    Two stable sorts (by key, then by group) give rows ordered by (group, key, row index); a row's
    rank is its position minus its group's first position.

    Args:
        keys: [B] float.
        group_index: [B] long.
    Returns:
        [B] long.
    """
    inverse, _ = compact_groups(group_index)
    by_key = torch.sort(keys, stable=True).indices
    by_group = torch.sort(inverse[by_key], stable=True).indices
    order = by_key[by_group]  # row ids in (group, key, index) order
    pos = torch.empty_like(order)
    pos[order] = torch.arange(order.numel(), device=order.device)
    sorted_groups = inverse[order]
    first = torch.zeros_like(sorted_groups)
    is_start = torch.ones_like(sorted_groups, dtype=torch.bool)
    is_start[1:] = sorted_groups[1:] != sorted_groups[:-1]
    first[sorted_groups[is_start]] = torch.nonzero(is_start).flatten()
    return pos - first[inverse]


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first occurrence of each distinct row and, per row, which of them it equals.

    Args:
        rows: [B, K].
    Returns:
        (first [U] long, indices into rows in order of first occurrence; inverse [B] long, so that
        rows[first][inverse] equals rows).
    """
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    n = int(inverse.max().item()) + 1 if inverse.numel() else 0
    position = torch.arange(rows.shape[0], device=rows.device)
    first = torch.full((n,), rows.shape[0], dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, inverse, position, reduce="amin")
    order = first.argsort()  # in order of first occurrence
    return first[order], order.argsort()[inverse]
