"""Chunking of named tensors for object-store weight sync (pure torch: runs in the main suite)."""

from __future__ import annotations

import torch

from rl_div.sync.buckets import chunk_named_tensors
from rl_div.sync.payloads import CudaIpcPayload, NcclGroup, NcclPayload, payload_size


def test_chunks_are_bounded_ordered_and_complete() -> None:
    # 4-byte floats: sizes 40, 40, 400 (larger than the bound), 4, 4 bytes
    tensors = {"a": torch.zeros(10), "b": torch.zeros(2, 5), "big": torch.zeros(100), "c": torch.zeros(1),
               "d": torch.zeros(1)}
    chunks = list(chunk_named_tensors(tensors, max_bytes=64))
    assert [[name for name, _ in chunk] for chunk in chunks] == [["a"], ["b"], ["big"], ["c", "d"]]
    for chunk in chunks:
        size = sum(t.numel() * t.element_size() for _, t in chunk)
        assert size <= 64 or len(chunk) == 1  # only a single oversized tensor may exceed the bound
    assert [t for chunk in chunks for _, t in chunk][2] is tensors["big"]  # no copies


def test_one_chunk_when_everything_fits_and_none_when_empty() -> None:
    pairs = [("x", torch.zeros(3, dtype=torch.float64)), ("y", torch.zeros(3, dtype=torch.int8))]
    assert [[n for n, _ in c] for c in chunk_named_tensors(pairs, max_bytes=27)] == [["x", "y"]]
    assert list(chunk_named_tensors({}, max_bytes=1)) == []


def test_payload_size_counts_tensors_per_engine_rank() -> None:
    assert payload_size({"a": torch.zeros(1), "b": torch.zeros(1)}) == 2
    assert payload_size(CudaIpcPayload({"GPU-1": [("a", None), ("b", None), ("c", None)]})) == 3
    group = NcclGroup("127.0.0.1", 29500, world_size=3)
    assert payload_size(NcclPayload(group, [("a", "float32", [2, 2])])) == 1
