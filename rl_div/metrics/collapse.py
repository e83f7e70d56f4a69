"""Diversity-collapse decomposition (Karouzos et al. 2026; docs/algorithms.md section 5).

RL fine-tuning lowers the diversity of a model's samples for two reasons: it removes wrong answers
(quality control, a loss of diversity that is expected and harmless) and it narrows the set of
*correct* solutions (residual collapse, the part worth fighting). With, per prompt group,

    D_all     = diversity of all samples of the group,
    D_correct = diversity of the correct samples only (groups with >= 2 correct samples),

each averaged over groups, the drop against a reference model splits as

    total           = D_all(ref) - D_all(model)
    residual        = D_correct(ref) - D_correct(model)
    quality_control = total - residual.

The diversity function is pluggable. Default: :func:`embedding_diversity` (1 - mean pairwise cosine)
when a group's samples are an [m, d] embedding array, distinct-n (n = DEFAULT_TEXT_N) when they are
texts. Prefer embeddings (or a pairwise measure): pooled distinct-n falls as the number of texts
grows, and D_correct compares subsets of different sizes between the two models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rl_div.metrics.diversity import as_flags, distinct_n, embedding_diversity

# Long n-grams: correct math solutions share most unigrams, so collapse of reasoning paths shows
# in longer spans.
DEFAULT_TEXT_N = 4

DiversityFn = Callable[[Any], float]
# One prompt group: (samples, correct flags). samples is a list of G texts or a [G, d] array.
Group = tuple[Any, Sequence[bool]]


def default_diversity(samples: Any) -> float:
    """Embedding diversity for an [m, d] array/tensor, distinct-DEFAULT_TEXT_N for a list of texts."""
    if hasattr(samples, "shape"):
        return embedding_diversity(samples)
    return distinct_n(list(samples), DEFAULT_TEXT_N)


def _select(samples: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array/tensor (advanced indexing) or items of a list."""
    if hasattr(samples, "shape"):
        return samples[idx.tolist()]
    return [samples[i] for i in idx]


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def diversity_all_correct(groups: Sequence[Group], diversity_fn: DiversityFn | None = None) -> tuple[float, float]:
    """(D_all, D_correct) of one model's samples.

    groups: per prompt, (samples [G] texts or [G, d] embeddings, correct [G] flags; NaN = not correct).
    diversity_fn: samples -> float (default :func:`default_diversity`); NaN results are skipped.
    D_all averages diversity_fn(all samples) over groups; D_correct averages diversity_fn(correct
    samples) over the groups with at least 2 correct samples. Either is NaN when no group counts.
    """
    fn = default_diversity if diversity_fn is None else diversity_fn
    d_all: list[float] = []
    d_correct: list[float] = []
    for g, (samples, correct) in enumerate(groups):
        flags = as_flags(correct)
        if len(flags) != len(samples):
            sizes = f"{len(samples)} samples, {len(flags)} flags"
            raise ValueError(f"diversity_all_correct: group {g} has {sizes}")
        d_all.append(float(fn(samples)))
        idx = np.flatnonzero(flags)
        if idx.size >= 2:
            d_correct.append(float(fn(_select(samples, idx))))
    return _nanmean(d_all), _nanmean(d_correct)


def collapse_decomposition(
    d_all_model: float, d_correct_model: float, d_all_ref: float, d_correct_ref: float
) -> dict[str, float]:
    """Split the diversity lost against a reference model (positive = model is less diverse).

    Returns {"total": D_all(ref) - D_all(model), "residual": D_correct(ref) - D_correct(model),
    "quality_control": total - residual}.
    """
    total = d_all_ref - d_all_model
    residual = d_correct_ref - d_correct_model
    return {"total": total, "residual": residual, "quality_control": total - residual}


def collapse_report(
    model_groups: Sequence[Group], ref_groups: Sequence[Group], diversity_fn: DiversityFn | None = None
) -> dict[str, float]:
    """D_all/D_correct of both models and the decomposition, in one flat dict for the tracker."""
    d_all_m, d_cor_m = diversity_all_correct(model_groups, diversity_fn)
    d_all_r, d_cor_r = diversity_all_correct(ref_groups, diversity_fn)
    out = {"d_all_model": d_all_m, "d_correct_model": d_cor_m, "d_all_ref": d_all_r, "d_correct_ref": d_cor_r}
    out.update(collapse_decomposition(d_all_m, d_cor_m, d_all_r, d_cor_r))
    return out
