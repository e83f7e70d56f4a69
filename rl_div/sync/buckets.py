"""Weight sync through the Ray object store in size-capped buckets (rollout.weight_sync='object_store').

The learner streams its tensors, one at a time, into buckets of at most rollout.weight_sync_chunk_mb
(a tensor larger than the cap is a bucket of its own) and puts each bucket into the object store as
soon as it is full; what it sends is a :class:`BucketPayload`, the ordered refs and the names each
bucket holds. A sharded (FSDP2) learner gathers one tensor at a time on every rank, in the same
order, and only rank 0 fills buckets. The sender's process then holds about one bucket plus one
tensor beyond the model, never a full state dict (the object store holds the model once, as it did
with a state dict). A tensor tied to another (lm_head and the embeddings) travels once, under its
first name; the payload lists the alias, which a vLLM engine loads again under its own name. A
rollout worker checks the names against its own model before it touches a weight, then fetches
and loads one bucket at a time.

Wire format: a bucket is put as flat uint8 numpy views of its tensors (dtype and shape beside
them), so Ray copies the bytes straight into shared memory (pickle-5 out-of-band buffers) and a
worker on the same node reads them in place. A torch tensor pickled by itself would go through
``torch.save`` into an in-memory file first: two more copies of every tensor in the sender's heap.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

NamedTensors = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
Bucket = dict[str, torch.Tensor]
Packed = dict[str, tuple[str, tuple[int, ...], np.ndarray]]


class WeightSyncError(RuntimeError):
    """A weight sync failed or ran out of time; the engine's weights are not to be trusted."""


def chunk_named_tensors(weights: NamedTensors, max_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Consecutive chunks of (name, tensor) holding at most max_bytes each (a larger tensor is a
    chunk of its own), so one RPC never carries more than about max_bytes. Lazy: it reads one
    tensor past a full chunk before yielding it."""
    items = weights.items() if isinstance(weights, Mapping) else weights
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in items:
        nbytes = tensor.numel() * tensor.element_size()
        if chunk and size + nbytes > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, tensor))
        size += nbytes
    if chunk:
        yield chunk


def stream_buckets(named_tensors: NamedTensors, cap_bytes: int, put: Callable[[Bucket], Any]) -> Iterator[Any]:
    """put(bucket) for each bucket of consecutive tensors, in order, each bucket (name -> tensor) at
    most cap_bytes unless it is one larger tensor. A bucket is put as soon as the next tensor does
    not fit, so the caller never holds more than one bucket and one tensor."""
    for chunk in chunk_named_tensors(named_tensors, cap_bytes):
        ref = put(dict(chunk))
        del chunk  # else the loop variable keeps this bucket alive while the next one fills
        yield ref


@dataclass(frozen=True)
class BucketPayload:
    """What the learner sends: refs[i] (an ObjectRef, or the bucket itself in tests) holds the
    tensors names[i], in that order; aliases: (name, sent name) of tensors tied to a sent one
    (tied embeddings: sent once, under their first name)."""

    refs: tuple[Any, ...]
    names: tuple[tuple[str, ...], ...]
    aliases: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        """Tensors carried (what each engine rank should report loaded)."""
        return sum(len(n) for n in self.names)


def bucket_payload(named_tensors: NamedTensors, cap_bytes: int, put: Callable[[Bucket], Any],
                   aliases: Mapping[str, str] | None = None) -> BucketPayload:
    """Stream named_tensors into buckets (see stream_buckets); the refs and each bucket's names."""
    names: list[tuple[str, ...]] = []

    def put_named(bucket: Bucket) -> Any:
        names.append(tuple(bucket))
        return put(bucket)

    refs = tuple(stream_buckets(named_tensors, cap_bytes, put_named))
    return BucketPayload(refs, tuple(names), tuple((aliases or {}).items()))


def pack_bucket(bucket: Bucket) -> Packed:
    """name -> (dtype name, shape, flat uint8 view): numpy has no bfloat16, bytes carry any dtype.
    A view where the tensor is CPU and contiguous (no copy: put() copies it into the object store)."""
    packed: Packed = {}
    for name, t in bucket.items():
        flat = t.detach().cpu().contiguous().reshape(-1)
        packed[name] = (str(t.dtype).removeprefix("torch."), tuple(t.shape), flat.view(torch.uint8).numpy())
    return packed


def unpack_bucket(packed: Packed, copy: bool = False) -> Bucket:
    """Inverse of pack_bucket. Without copy the tensors share the arrays' memory: read-only
    shared memory when the arrays came from the object store, so only read them."""
    out: Bucket = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": read-only views, only read
        for name, (dtype, shape, data) in packed.items():
            if data.size == 0:  # an empty array's stride is 0, which view(dtype) refuses
                out[name] = torch.empty(shape, dtype=getattr(torch, dtype))
                continue
            t = torch.from_numpy(data).view(getattr(torch, dtype)).reshape(shape)
            out[name] = t.clone() if copy else t
    return out


def put_bucket(bucket: Bucket) -> Any:
    """The learner's put: the packed bucket into the Ray object store."""
    import ray

    return ray.put(pack_bucket(bucket))


def fetch_bucket(ref: Any, copy: bool = False) -> Bucket:
    """The worker's fetch: one bucket from the object store (see unpack_bucket for copy)."""
    import ray

    return unpack_bucket(ray.get(ref), copy)


def check_names(names: Iterable[Iterable[str]], expected: Collection[str]) -> None:
    """Raise (before any weight is loaded) unless every expected name comes exactly once."""
    counts = Counter(n for bucket in names for n in bucket)
    problems = []
    for label, found in (("missing", [n for n in expected if n not in counts]),
                         ("not in this model", [n for n in counts if n not in expected]),
                         ("sent more than once", [n for n, c in counts.items() if c > 1])):
        if found:
            problems.append(f"{label}: {sorted(found)[:5]}{' ...' if len(found) > 5 else ''} ({len(found)})")
    if problems:
        raise WeightSyncError("weight buckets do not match the rollout model: " + "; ".join(problems))


def load_buckets(payload: BucketPayload, load: Callable[[Bucket], Any], expected: Collection[str] | None = None,
                 fetch: Callable[[Any], Bucket] = fetch_bucket) -> int:
    """Fetch each bucket in order and load(bucket) it, one bucket held at a time; returns tensors
    loaded. expected: the receiving model's names, checked before anything is loaded."""
    if expected is not None:
        check_names(payload.names, expected)
    for ref, names in zip(payload.refs, payload.names, strict=True):
        bucket = fetch(ref)
        if tuple(bucket) != names:
            raise WeightSyncError(f"a weight bucket holds {list(bucket)[:5]}..., its payload listed "
                                  f"{list(names)[:5]}...")
        load(bucket)
        del bucket
    return len(payload)


def tied_names(model: torch.nn.Module) -> dict[str, str]:
    """name -> the first name of the same tensor, for every state-dict entry that repeats one
    (tied embeddings: lm_head.weight -> model.embed_tokens.weight); FSDP2 keeps the tie."""
    first: dict[int, str] = {}
    tied = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            tied[name] = first[id(t)]
        else:
            first[id(t)] = name
    return tied


def distinct_state(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, detached tensor) of the state dict, a tensor shared by several names once, under
    its first name (see tied_names): the same names on the learner's model (plain or FSDP2) and on
    a rollout worker's copy, so both sides list them alike."""
    tied = tied_names(model)
    for name, t in model.state_dict(keep_vars=True).items():
        if name not in tied:
            yield name, t.detach()


def with_aliases(bucket: Bucket, aliases: Iterable[tuple[str, str]]) -> list[tuple[str, torch.Tensor]]:
    """The bucket's (name, tensor) pairs, each followed by (alias, same tensor) for the names tied
    to it: vLLM keeps a tied lm_head as a parameter of its own (its CPU backend, at least) and
    expects it by name."""
    tied: dict[str, list[str]] = {}
    for alias, name in aliases:
        tied.setdefault(name, []).append(alias)
    return [pair for name, t in bucket.items() for pair in [(name, t), *((a, t) for a in tied.get(name, []))]]


def copy_into(targets: Mapping[str, torch.Tensor], bucket: Bucket) -> None:
    """Copy each tensor of bucket into targets[name] (same shape; cast to the target's dtype)."""
    for name, t in bucket.items():
        target = targets[name]
        if target.shape != t.shape:
            raise WeightSyncError(f"weight {name}: got shape {list(t.shape)}, the model has {list(target.shape)}")
        target.copy_(t)
