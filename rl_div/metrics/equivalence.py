"""Equivalence classes by union-find over a pairwise "equivalent" test.

Used by the partition reward (DARLING) and by the "number of semantic classes" diversity metric,
so both see the same clustering.
"""

from __future__ import annotations

from collections.abc import Callable


def equivalence_classes(m: int, equivalent: Callable[[int, int], bool]) -> list[int]:
    """Cluster items 0..m-1, merging i and j whenever ``equivalent(i, j)`` (transitive closure).

    Returns class ids [m], numbered 0, 1, ... in order of each class's first member.
    Calls ``equivalent`` once per unordered pair (m(m-1)/2 calls).
    """
    parent = list(range(m))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in range(m):
        for j in range(i + 1, m):
            ri, rj = find(i), find(j)
            if ri != rj and equivalent(i, j):
                parent[max(ri, rj)] = min(ri, rj)
    ids: dict[int, int] = {}
    return [ids.setdefault(find(i), len(ids)) for i in range(m)]
