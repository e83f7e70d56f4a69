"""The ``dra`` group reward (DRA-GRPO, Chen et al. 2025, "DRA-GRPO: Exploring Diversity-Aware Reward
Adjustment for R1-Zero-Like Training of Large Language Models"): each response's reward divided by its
redundancy in the group, a submodular-mutual-information (graph-cut) score over sentence embeddings.

With e_i the L2-normalised embedding of response i and S = E E^T (self-similarity included):

    w_i = 1 / (sum_j S_ij + 1e-6),        reward_i = quality_i * w_i,

as the authors' code computes it (xiwenc1/DRA-GRPO, src/open_r1/trl/trainer/grpo_trainer.py,
``SMI_reweighting``; tests/test_dra.py transcribes it). quality is the verifier's verdict (1/0; NaN when
it failed, which gives NaN); list the verifier with weight 0 before this reward, and use advantage scale
"group" as the authors do (GRPO's std then undoes the overall scale of w).

rl_div's choices where its setting differs from the authors' (docs/algorithms.md section 6):
* the sum runs over the response's own group (the paper's definition); the authors' code sums over the
  responses a process holds, which is one group when the per-device batch is one group;
* the weight multiplies the verifier's verdict, not the sum of every reward: a group reward sees the
  verdicts, not the other rewards (the authors scale the total of accuracy and format rewards);
* the embedder is the novelty reward's (``model``: the packaged all-MiniLM-L6-v2 by default, where the
  authors use nomic-embed-text-v1.5 or jina, which need a download); ``text``: "completion" (default, as
  the authors) or "answer". The batch hook embeds every distinct text of the batch in one call.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from rewards.embedding import embed
from rewards.registry import register_reward

if TYPE_CHECKING:
    from rl_div.data import PromptRecord

SMI_EPS = 1e-6  # the authors' constant


def redundancy_weights(embeddings: np.ndarray) -> np.ndarray:
    """w_i = 1 / (sum_j cos(e_i, e_j) + 1e-6), self included, in float64.

    Args:
        embeddings: [G, D] (normalised here; a zero vector stays zero).
    Returns:
        [G] weights.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.maximum(norms, 1e-12)  # torch.nn.functional.normalize's eps
    return 1.0 / ((e @ e.T).sum(axis=1) + SMI_EPS)


def _texts(completions: list[str], answers: list[str | None], text: str) -> list[str]:
    if text not in ("completion", "answer"):
        raise ValueError(f"dra: text must be 'completion' or 'answer', got {text!r}")
    return list(completions) if text == "completion" else [a or "" for a in answers]


@register_reward("dra", scope="group")
def dra_reward(completions: list[str], answers: list[str | None], correct: list[float], records: list[PromptRecord],
               *, text: str = "completion", model: str | None = None) -> list[float]:
    """DRA-GRPO over one group: quality_i / (sum_j S_ij + 1e-6) (see the module docstring). [G] -> [G]."""
    w = redundancy_weights(embed(_texts(completions, answers, text), model=model))
    return [math.nan if math.isnan(q) else q * float(wi) for q, wi in zip(correct, w, strict=True)]


def prepare_dra_batch(completions: list[str], answers: list[str | None], correct: list[float],
                      records: list[PromptRecord], group_index: list[int], *, text: str = "completion",
                      model: str | None = None) -> None:
    """Embed every distinct text of the batch in one call; the group calls then read the cache. [B]."""
    embed(_texts(completions, answers, text), model=model)


dra_reward.prepare_batch = prepare_dra_batch  # type: ignore[attr-defined]
dra_reward.uses_embedder = lambda params: True  # type: ignore[attr-defined]
