"""Metrics logged every step and at every evaluation: pass@k, entropy, diversity, collapse."""

from rl_div.metrics.collapse import (
    collapse_decomposition,
    collapse_report,
    default_diversity,
    diversity_all_correct,
)
from rl_div.metrics.diversity import (
    as_flags,
    average_group_metrics,
    cosine_kernel,
    distinct_answers,
    distinct_n,
    ead,
    embedding_diversity,
    group_diversity,
    semantic_classes,
    vendi_score,
)
from rl_div.metrics.entropy import entropy_from_logits, logprobs_and_entropy, masked_mean
from rl_div.metrics.equivalence import equivalence_classes
from rl_div.metrics.passk import default_ks, maj_at_n, mean_at_n, pass_at_k, pass_at_k_curve

__all__ = [
    "as_flags",
    "average_group_metrics",
    "collapse_decomposition",
    "collapse_report",
    "cosine_kernel",
    "default_diversity",
    "default_ks",
    "distinct_answers",
    "distinct_n",
    "diversity_all_correct",
    "ead",
    "embedding_diversity",
    "entropy_from_logits",
    "equivalence_classes",
    "group_diversity",
    "logprobs_and_entropy",
    "maj_at_n",
    "masked_mean",
    "mean_at_n",
    "pass_at_k",
    "pass_at_k_curve",
    "semantic_classes",
    "vendi_score",
]
