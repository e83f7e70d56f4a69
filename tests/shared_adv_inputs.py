"""Shared random inputs for the advantage estimators checked against their authors' code: groups of uneven
size (as after failed rewards are removed), ties, all-correct and all-wrong groups, binary or continuous."""

from __future__ import annotations

import torch


def random_groups(seed: int, *, binary: bool = True, min_size: int = 2, max_size: int = 9
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards [B] float64, group_index [B] long): 7 groups, one all-correct, one all-wrong, one with
    ties at the top (continuous: two rows share the max), the rest random; sizes in [min_size, max_size]."""
    gen = torch.Generator().manual_seed(seed)
    rewards, index = [], []
    for g in range(7):
        n = int(torch.randint(min_size, max_size + 1, (1,), generator=gen))
        if g == 0:
            r = torch.ones(n)
        elif g == 1:
            r = torch.zeros(n)
        elif binary:
            r = (torch.rand(n, generator=gen) < 0.4).double()
        else:
            r = torch.round(torch.rand(n, generator=gen) * 8) / 8  # coarse grid: ties everywhere
            if g == 2:
                r[:2] = r.max() + 0.5  # two rows tie for the best
        rewards.append(r.double())
        index += [10 * g + 3] * n  # ids need not be 0..G-1
    perm = torch.randperm(sum(len(r) for r in rewards), generator=gen)  # groups interleaved in the batch
    return torch.cat(rewards)[perm], torch.tensor(index)[perm]
