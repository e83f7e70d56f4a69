"""Diversity of one group of G responses to the same prompt, and its average over groups.

Lexical: distinct-n and expectation-adjusted distinct (EAD). Semantic, on sentence embeddings
computed elsewhere (rewards/embedding.py): 1 - mean pairwise cosine and the Vendi score. Answer
level: distinct (correct) answers and the number of semantic equivalence classes.

Conventions: a metric whose input was not given is left out of the result dict (e.g. no embeddings
-> no "vendi" key); a metric that is undefined for the group (no n-grams, fewer than two samples)
is NaN, and :func:`average_group_metrics` skips NaNs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from rl_div.metrics.equivalence import equivalence_classes

Tokenizer = Callable[[str], Sequence[Hashable]]


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
    """All contiguous n-grams of one token sequence: len(tokens) - n + 1 of them (none if shorter)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _group_ngrams(texts: Sequence[str], n: int, tokenize: Tokenizer) -> list[tuple[Hashable, ...]]:
    """n-grams of every text, concatenated; n-grams never span two texts."""
    return [g for text in texts for g in ngrams(tokenize(text), n)]


def distinct_n(texts: Sequence[str], n: int, tokenize: Tokenizer = str.split) -> float:
    """Distinct-n (Li et al. 2016) of a group: unique n-grams / total n-grams, pooled over the texts.

    tokenize: str -> tokens (default whitespace split; a tokenizer's ``encode`` works too).
    Returns NaN when the group has no n-gram at all (no texts, or all shorter than n tokens).
    """
    grams = _group_ngrams(texts, n, tokenize)
    return len(set(grams)) / len(grams) if grams else math.nan


def expected_distinct(vocab_size: float, total: int) -> float:
    """Expected number of distinct types among ``total`` uniform draws from ``vocab_size`` types:
    V * (1 - ((V-1)/V)**C), written with log1p/expm1 so V = 1e20 keeps its precision."""
    if vocab_size == 1:
        return 1.0 if total > 0 else 0.0
    return vocab_size * -math.expm1(total * math.log1p(-1.0 / vocab_size))


def ead(
    texts: Sequence[str],
    n: int,
    vocab_size: int,
    tokenize: Tokenizer = str.split,
    ngram_space: Literal["vocab", "power"] = "vocab",
) -> float:
    """Expectation-adjusted distinct-n (Liu et al. 2022, "Rethinking and Refining the Distinct Metric").

    EAD = unique n-grams / (V * (1 - ((V-1)/V)**C)), C = total n-grams in the group. The paper
    derives the denominator for tokens drawn uniformly from a vocabulary of V types. Choice for
    n > 1 (``ngram_space``): "vocab" (default) uses the token vocabulary size V for every n, as the
    authors' example implementation does, so values are comparable with published EAD-n; "power"
    uses V**n, the size of the n-gram space under the same uniform model (then EAD-n ~ distinct-n
    whenever C << V**n). V must be the vocabulary of ``tokenize`` (word types for str.split, the
    tokenizer's vocab size for token ids). NaN when there are no n-grams.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if ngram_space not in ("vocab", "power"):
        raise ValueError(f"ngram_space must be 'vocab' or 'power', got {ngram_space!r}")
    grams = _group_ngrams(texts, n, tokenize)
    if not grams:
        return math.nan
    space = float(vocab_size) if ngram_space == "vocab" else float(vocab_size) ** n
    return len(set(grams)) / expected_distinct(space, len(grams))


def _as_matrix(emb: Any) -> np.ndarray:
    """[m, d] embeddings (numpy, list, or torch tensor on any device/dtype) -> float64 numpy."""
    if hasattr(emb, "detach"):  # torch tensor: bf16 and CUDA tensors cannot go to numpy directly
        emb = emb.detach().float().cpu().numpy()
    a = np.asarray(emb, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"embeddings must be [m, d], got shape {a.shape}")
    return a


def cosine_kernel(emb: Any) -> np.ndarray:
    """[m, d] embeddings -> [m, m] cosine similarities, clipped to [-1, 1], diagonal exactly 1.

    Raises ValueError on a zero-norm row (its cosine is undefined).
    """
    a = _as_matrix(emb)
    norms = np.linalg.norm(a, axis=1)
    if np.any(norms == 0):
        raise ValueError("cosine_kernel: zero embedding vector (cosine undefined)")
    u = a / norms[:, None]
    k = np.clip(u @ u.T, -1.0, 1.0)
    np.fill_diagonal(k, 1.0)
    return k


def embedding_diversity(emb: Any) -> float:
    """1 - mean pairwise cosine over the m(m-1) off-diagonal pairs of [m, d] embeddings.

    0 for identical directions, 1 for mutually orthogonal ones. NaN when m < 2.
    """
    k = cosine_kernel(emb)
    m = k.shape[0]
    if m < 2:
        return math.nan
    off_diag_sum = k.sum() - np.trace(k)
    return float(1.0 - off_diag_sum / (m * (m - 1)))


def vendi_score(emb: Any) -> float:
    """Vendi score (Friedman & Dieng 2023, order 1) of [m, d] embeddings with the cosine kernel.

    exp(-sum_i l_i log l_i) over the eigenvalues l_i of K/m (they sum to 1 because diag K = 1):
    the effective number of distinct samples, 1 (all identical) .. m (mutually orthogonal).
    Tiny negative eigenvalues from round-off are clipped to 0. NaN when m = 0.
    """
    k = cosine_kernel(emb)
    m = k.shape[0]
    if m == 0:
        return math.nan
    lam = np.clip(np.linalg.eigvalsh(k / m), 0.0, None)
    lam = lam[lam > 0]
    return float(np.exp(-np.sum(lam * np.log(lam))))


def as_flags(correct: Any) -> np.ndarray:
    """Verifier verdicts (bools, 0/1 floats, a tensor) -> [G] bool. NaN (unscored, see
    RolloutBatch.correct) counts as not correct: bool(nan) is True, so it must not go through bool()."""
    if hasattr(correct, "detach"):
        correct = correct.detach().float().cpu().numpy()
    return np.asarray(correct, dtype=np.float64).reshape(-1) > 0.5


def distinct_answers(answers: Sequence[str | None], correct: Sequence[bool] | None = None) -> int:
    """Number of distinct extracted answers, None (unparseable) excluded.

    With ``correct`` (aligned flags, see :func:`as_flags`), count only answers of correct samples.
    """
    if correct is None:
        return len({a for a in answers if a is not None})
    flags = as_flags(correct)
    if len(flags) != len(answers):
        raise ValueError(f"distinct_answers: {len(answers)} answers but {len(flags)} flags")
    return len({a for a, ok in zip(answers, flags, strict=True) if a is not None and ok})


def semantic_classes(answers: Sequence[str | None], embeddings: Any = None, threshold: float = 0.9) -> list[int]:
    """Semantic equivalence classes of a group: class ids [m], numbered in order of first member.

    i ~ j when their extracted answers are equal (both not None) or, if embeddings [m, d] are given,
    cos(e_i, e_j) > threshold; classes are the transitive closure (union-find). This is the same
    clustering the partition reward uses, so the metric and the reward agree. A None answer joins a
    class only through its embedding, so without embeddings each unparseable response is alone.
    """
    m = len(answers)
    k = None
    if embeddings is not None:
        k = cosine_kernel(embeddings)
        if k.shape[0] != m:
            raise ValueError(f"semantic_classes: {m} answers but {k.shape[0]} embeddings")

    def equivalent(i: int, j: int) -> bool:
        same = answers[i] is not None and answers[i] == answers[j]
        return same or (k is not None and bool(k[i, j] > threshold))

    return equivalence_classes(m, equivalent)


def group_diversity(
    texts: Sequence[str],
    answers: Sequence[str | None],
    correct: Sequence[bool],
    embeddings: Any = None,
    vocab_size: int | None = None,
    tokenize: Tokenizer = str.split,
    max_n: int = 4,
    threshold: float = 0.9,
) -> dict[str, float]:
    """Every per-group diversity metric of G responses to one prompt.

    texts, answers, correct: [G] response texts, extracted answers (None = unparseable), verdicts.
    embeddings: optional [G, d] response embeddings. vocab_size: optional, enables ead_n.
    Keys: distinct_1..max_n, ead_1..max_n (if vocab_size), emb_diversity and vendi (if embeddings),
    distinct_answers, distinct_correct_answers, num_classes. Values are floats (NaN = undefined).
    """
    g = len(texts)
    flags = as_flags(correct)
    if len(answers) != g or len(flags) != g:
        raise ValueError(f"group_diversity: {g} texts, {len(answers)} answers, {len(flags)} flags")
    out: dict[str, float] = {}
    for n in range(1, max_n + 1):
        out[f"distinct_{n}"] = distinct_n(texts, n, tokenize)
    if vocab_size is not None:
        for n in range(1, max_n + 1):
            out[f"ead_{n}"] = ead(texts, n, vocab_size, tokenize)
    if embeddings is not None:
        out["emb_diversity"] = embedding_diversity(embeddings)
        out["vendi"] = vendi_score(embeddings)
    out["distinct_answers"] = float(distinct_answers(answers))
    out["distinct_correct_answers"] = float(distinct_answers(answers, flags))
    classes = semantic_classes(answers, embeddings, threshold)
    out["num_classes"] = float(max(classes) + 1 if classes else 0)
    return out


def average_group_metrics(groups: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over groups, skipping NaN (and groups lacking the key).

    A metric that is NaN in every group stays NaN. Keys appear in first-seen order.
    """
    values: dict[str, list[float]] = {}
    for metrics in groups:
        for key, v in metrics.items():
            values.setdefault(key, [])
            if not math.isnan(v):
                values[key].append(float(v))
    return {key: (float(np.mean(v)) if v else math.nan) for key, v in values.items()}
