"""The ``novelty`` group reward (EVOL-RL): reward correct and incorrect answers for being unlike
the rest of their group, without ever letting novelty lift an incorrect answer over a correct one.

Spec (docs/algorithms.md section 2), with S_ij = clip(cos(e_i, e_j), 0, 1):

    u_i = 1 - (w * mean_{j in g(i), j != i} S_ij + (1 - w) * max_{j != i} S_ij),   w = 0.5

then u is min-max normalised within each correctness class g (correct / incorrect), and
reward = 0.5 + 0.5 u (correct), -1 + 0.5 u (incorrect), -1 (unparseable: answer None).

Reading of the spec, made explicit:
* the mean runs over the response's own correctness class, the max over *all* other scored
  responses of the group, whatever their class (a correct answer that copies an incorrect one is
  not novel);
* "scored" responses are those with an answer (not None) and a known verdict (correct not NaN):
  unparseable responses have no answer text to embed, and a response whose verifier failed has
  no class; those are left out of every mean and max. Unparseable ones get -1, verifier failures NaN;
* an empty mean (a class of one) counts as 0 and an empty max (a group of one) as 0; both only
  matter before normalisation, where a lone class member gets 0.5 anyway;
* a class whose u are all equal (within 1e-12) normalises to 0.5 for every member.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from rewards.embedding import cosine_matrix, embed
from rewards.registry import register_reward

if TYPE_CHECKING:
    from rl_div.data import PromptRecord

_FLAT = 1e-12


def raw_novelty(sim: np.ndarray, classes: Sequence[Hashable | None], mean_weight: float = 0.5) -> np.ndarray:
    """u_i before normalisation [G] (NaN where classes[i] is None). sim: [G, G] cosines."""
    s = np.clip(np.asarray(sim, dtype=np.float64), 0.0, 1.0)
    g = len(classes)
    if s.shape != (g, g):
        raise ValueError(f"similarity matrix is {s.shape}, expected ({g}, {g})")
    pool = [i for i in range(g) if classes[i] is not None]
    u = np.full(g, np.nan)
    for i in pool:
        others = [j for j in pool if j != i]
        same = [j for j in others if classes[j] == classes[i]]
        mean_same = float(s[i, same].mean()) if same else 0.0
        max_all = float(s[i, others].max()) if others else 0.0
        u[i] = 1.0 - (mean_weight * mean_same + (1.0 - mean_weight) * max_all)
    return u


def normalise_within_classes(u: np.ndarray, classes: Sequence[Hashable | None]) -> np.ndarray:
    """Min-max normalise u within each class; a lone member or a flat class gets 0.5."""
    out = np.full(len(classes), np.nan)
    for label in {c for c in classes if c is not None}:
        members = [i for i, c in enumerate(classes) if c == label]
        lo, hi = float(np.min(u[members])), float(np.max(u[members]))
        for i in members:
            out[i] = 0.5 if hi - lo <= _FLAT else (u[i] - lo) / (hi - lo)
    return out


def novelty_scores(sim: np.ndarray, classes: Sequence[Hashable | None], mean_weight: float = 0.5) -> np.ndarray:
    """Normalised novelty u [G] in [0, 1] (NaN where classes[i] is None).

    sim: [G, G] cosine similarities (clipped to [0, 1] here). classes: [G] a class label per
    response (e.g. 1 correct, 0 incorrect) or None to leave the response out.
    """
    return normalise_within_classes(raw_novelty(sim, classes, mean_weight), classes)


def correctness_classes(answers: Sequence[str | None], correct: Sequence[float]) -> list[int | None]:
    """1 correct, 0 incorrect, None when unverified (correct NaN) or incorrect and unparseable.

    The verifier's verdict decides the class, not the extractor: a response the verifier accepts
    is correct even when the extractor found no answer text (e.g. a bare ``$\\pi$``), so that
    correct always outranks incorrect.
    """
    return [None if math.isnan(c) or (a is None and c <= 0.5) else int(c > 0.5)
            for a, c in zip(answers, correct, strict=True)]


def novelty_rewards(u: Sequence[float], answers: Sequence[str | None], correct: Sequence[float]) -> list[float]:
    """Map normalised novelty to rewards: correct 0.5 + 0.5u, incorrect -1 + 0.5u, incorrect and
    unparseable -1, unverified (correct NaN) NaN."""
    out = []
    for ui, a, c in zip(u, answers, correct, strict=True):
        if math.isnan(c):
            out.append(math.nan)
        elif a is None and c <= 0.5:
            out.append(-1.0)
        else:
            out.append((0.5 if c > 0.5 else -1.0) + 0.5 * float(ui))
    return out


def _embedded_texts(completions: list[str], answers: list[str | None], correct: list[float],
                    text: str) -> tuple[list[int | None], list[str]]:
    """Correctness classes [G] and the texts embedded for the scored rows (class not None), in order.

    A correct response without extracted answer text is embedded by its whole completion.
    """
    if text not in ("answer", "completion"):
        raise ValueError(f"novelty: text must be 'answer' or 'completion', got {text!r}")
    classes = correctness_classes(answers, correct)
    source = [a if text == "answer" and a is not None else c for a, c in zip(answers, completions, strict=True)]
    return classes, [source[i] for i, c in enumerate(classes) if c is not None]


@register_reward("novelty", scope="group")
def novelty_reward(
    completions: list[str],
    answers: list[str | None],
    correct: list[float],
    records: list[PromptRecord],
    *,
    text: str = "answer",
    model: str | None = None,
    mean_weight: float = 0.5,
) -> list[float]:
    """EVOL-RL novelty over one group (see the module docstring).

    ``text``: what is embedded, "answer" (the extracted answer text, the spec's default) or
    "completion" (the whole response). ``model``: embedding model (None = packaged MiniLM).
    """
    classes, texts = _embedded_texts(completions, answers, correct, text)
    pool = [i for i, c in enumerate(classes) if c is not None]
    sim = np.zeros((len(classes), len(classes)))
    if pool:
        sim[np.ix_(pool, pool)] = cosine_matrix(embed(texts, model=model))
    u = novelty_scores(sim, classes, mean_weight)
    return novelty_rewards(u.tolist(), answers, correct)


def prepare_novelty_batch(completions: list[str], answers: list[str | None], correct: list[float],
                          records: list[PromptRecord], group_index: list[int], *, text: str = "answer",
                          model: str | None = None, mean_weight: float = 0.5) -> None:
    """Embed every text the batch's groups will need in one call (each distinct text once); the
    per-group calls then find the vectors in rewards.embedding's cache. Rows are [B]."""
    embed(_embedded_texts(completions, answers, correct, text)[1], model=model)


novelty_reward.prepare_batch = prepare_novelty_batch  # type: ignore[attr-defined]
novelty_reward.uses_embedder = lambda params: True  # type: ignore[attr-defined]
