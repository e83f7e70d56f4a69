"""Summaries of a scored RolloutBatch for the tracker: health and diversity every training step,
pass@k curves and the full diversity set at evaluation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from rl_div.data import RolloutBatch, group_rows
from rl_div.metrics import (
    as_flags,
    average_group_metrics,
    distinct_n,
    group_diversity,
    maj_at_n,
    masked_mean,
    mean_at_n,
    pass_at_k_curve,
)
from rl_div.metrics.diversity import Tokenizer


def _correct_flags(batch: RolloutBatch) -> list[bool]:
    """Verdict per row; unscored (NaN) and a batch without a verifier count as not correct."""
    return as_flags(batch.correct).tolist() if batch.correct is not None else [False] * batch.size


def _scored_flags(batch: RolloutBatch) -> list[bool]:
    """Rows whose verifier gave a verdict (correct is not NaN); all rows when there is no verdict."""
    if batch.correct is None:
        return [True] * batch.size
    return [bool(torch.isfinite(c)) for c in batch.correct]


def rollout_health(batch: RolloutBatch) -> dict[str, float]:
    """Reward, correctness, lengths, truncation, entropy and the trainer/rollout log-prob gap."""
    mask = batch.response_mask
    lengths = batch.response_lengths.float()
    out: dict[str, float] = {
        "rollout/response_len": float(lengths.mean()),
        "rollout/truncation_rate": float(batch.truncated.float().mean()),
    }
    if batch.rewards is not None:
        finite = torch.isfinite(batch.rewards)
        out["reward/mean"] = float(batch.rewards[finite].mean()) if finite.any() else math.nan
        out["reward/std"] = float(batch.rewards[finite].std()) if finite.sum() > 1 else math.nan
        out["reward/nan_frac"] = float((~finite).float().mean())
        for name, values in batch.reward_components.items():
            ok = torch.isfinite(values)
            out[f"reward/{name}"] = float(values[ok].mean()) if ok.any() else math.nan
    if batch.correct is not None:
        scored = torch.isfinite(batch.correct)
        out["train/pass@1"] = float(batch.correct[scored].mean()) if scored.any() else math.nan
    if batch.old_entropy is not None:
        out["policy/entropy"] = float(masked_mean(batch.old_entropy, mask, empty=0.0))
    if batch.old_logprobs is not None:
        gap = (batch.old_logprobs - batch.behavior_logprobs).abs() * mask
        out["sync/logprob_gap_mean"] = float(gap.sum() / mask.sum().clamp(min=1))
        out["sync/logprob_gap_max"] = float(gap.max()) if mask.any() else 0.0
    return out


def step_diversity(batch: RolloutBatch, tokenize: Tokenizer = list) -> dict[str, float]:
    """Cheap per-group diversity every step: distinct answers (all / correct) and distinct-2 over
    ``tokenize`` units (the trainer passes the policy tokenizer; default characters)."""
    flags = _correct_flags(batch)
    answers = batch.answers or [None] * batch.size
    per_group = []
    for rows in group_rows(batch.group_index):
        ans = [answers[i] for i in rows]
        ok = [flags[i] for i in rows]
        per_group.append({
            "div/distinct_answers": float(len({a for a in ans if a is not None})),
            "div/distinct_correct_answers": float(len({a for a, c in zip(ans, ok, strict=True) if c and a})),
            "div/distinct_2": distinct_n([batch.response_texts[i] for i in rows], 2, tokenize=tokenize),
        })
    return average_group_metrics(per_group)


def eval_summary(batch: RolloutBatch, embeddings: np.ndarray | None = None, vocab_size: int | None = None,
                 tokenize: Tokenizer = list) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluation metrics over held-out prompts and a per-problem table (n, c, answers).

    batch: n samples per prompt, scored, with old_entropy from the policy. embeddings: optional
    [B, d] response embeddings. tokenize / vocab_size: the units of distinct-n and EAD (the
    trainer passes the policy tokenizer). Samples whose verifier failed (correct NaN) are left out
    of n and c, so a verifier error never counts as a wrong answer; "eval/unscored" counts them.
    Returns (flat metrics incl. pass@k for k = 1, 2, 4, ..., min n, per-problem rows for export:
    uid, prompt, n, c, answers, correct, responses).
    """
    flags = _correct_flags(batch)
    scored = _scored_flags(batch)
    answers = batch.answers or [None] * batch.size
    groups = [[i for i in r if scored[i]] for r in group_rows(batch.group_index)]
    unscored = batch.size - sum(len(r) for r in groups)
    groups = [r for r in groups if r]
    if not groups:
        return {"eval/unscored": float(unscored)}, []
    n = np.array([len(r) for r in groups])
    c = np.array([sum(flags[i] for i in r) for r in groups])
    metrics: dict[str, Any] = {f"pass@{k}": v for k, v in pass_at_k_curve(n, c).items()}
    metrics["mean@n"] = mean_at_n([[flags[i] for i in r] for r in groups])
    metrics["maj@n"] = maj_at_n([[answers[i] for i in r] for r in groups], [[flags[i] for i in r] for r in groups])
    metrics["n"] = int(n.min())
    metrics["eval/unscored"] = float(unscored)
    # mean@n is the evaluation's pass@1; the training-batch name would only mislead here
    metrics.update({k: v for k, v in rollout_health(batch).items() if k != "train/pass@1"})
    per_group = []
    problems = []
    entropy = row_entropy_sums(batch.old_entropy, batch.response_mask) if batch.old_entropy is not None else None
    for g, rows in enumerate(groups):
        emb = embeddings[rows] if embeddings is not None else None
        per_group.append(group_diversity([batch.response_texts[i] for i in rows], [answers[i] for i in rows],
                                         [flags[i] for i in rows], embeddings=emb, vocab_size=vocab_size,
                                         tokenize=tokenize))
        problem = {"uid": batch.prompts[rows[0]].uid, "prompt": batch.prompts[rows[0]].prompt,
                   "n": int(n[g]), "c": int(c[g]), "answers": [answers[i] for i in rows],
                   "correct": [flags[i] for i in rows], "responses": [batch.response_texts[i] for i in rows],
                   # per-problem diversity (emb_diversity, vendi, ...), so the report can resample problems
                   "diversity": {k: (None if math.isnan(v) else v) for k, v in per_group[-1].items()}}
        if entropy is not None:
            problem.update(problem_entropy(entropy, rows))
        problems.append(problem)
    metrics.update({f"div/{k}": v for k, v in average_group_metrics(per_group).items()})
    return metrics, problems


def row_entropy_sums(entropy: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-row sum of token entropies over the response tokens and the token count.

    entropy, mask: [B, T] -> (sums [B], counts [B]); padding (mask 0) contributes nothing, even NaN.
    """
    m = mask.bool()
    sums = torch.where(m, entropy, torch.zeros_like(entropy)).sum(dim=1)
    return sums.double().numpy(), m.sum(dim=1).double().numpy()


def problem_entropy(row_sums: tuple[np.ndarray, np.ndarray], rows: list[int]) -> dict[str, float | None]:
    """One problem's mean token entropy over its samples' response tokens ("entropy"; None without
    tokens) and its token count ("tokens"), so the token-weighted mean over problems is the logged
    policy/entropy (rl_div.report.summarize.per_problem_values)."""
    sums, counts = row_sums
    tokens = float(counts[rows].sum())
    return {"entropy": float(sums[rows].sum()) / tokens if tokens else None, "tokens": tokens}
