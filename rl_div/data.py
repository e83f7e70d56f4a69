"""The one batch type passed between stages, and prompt records.

A :class:`RolloutBatch` holds B = num_prompts * G responses, grouped contiguously: rows
``g*G .. g*G+G-1`` answer prompt ``g`` and share ``group_index == g``. Stages fill optional fields
in order: rollout (ids, texts, behaviour log-probs and version) -> rewards (rewards, correct) -> learner
(old log-probs, entropies, advantages). Tensors are on CPU between stages.

One name per log-prob: ``behavior_logprobs`` are always the sampler's (pi_behavior, the rollout
engine holding weights of version ``behavior_version``); ``old_logprobs`` are always the learner's
recomputed pi_old at update time. They differ by numerics when on-policy and by the policy lag when
rollouts run ahead (rollout.max_off_policy_steps).

Shapes:
    prompt_ids, prompt_mask          [B, P]  left-padded prompt tokens (mask 1 = real token)
    response_ids, response_mask      [B, T]  right-padded sampled tokens (mask 1 = real token)
    behavior_logprobs                [B, T]  log p of each sampled token under the sampler
    behavior_version                 [B]     long, policy version (learner optimizer steps) the sampler held
    sampling_temperature             [B]     float, the temperature the row was sampled at (None = rollout.temperature)
    old_logprobs, old_entropy        [B, T]  log p / entropy under the learner's pi_old
    group_index                      [B]     long, which prompt group a row belongs to
    rewards, correct                 [B]     float; correct is 1.0/0.0, NaN = unscored (error)
    reward_components[name]          [B]     each configured reward before weighting (NaN = error)
    truncated                        [B]     bool, response hit max_new_tokens without stop
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


def group_rows(group_index: Sequence[int] | torch.Tensor) -> list[list[int]]:
    """Row indices of each group, groups in order of their id. group_index: [B] ints."""
    ids = group_index.tolist() if isinstance(group_index, torch.Tensor) else group_index
    rows: dict[int, list[int]] = {}
    for i, g in enumerate(ids):
        rows.setdefault(int(g), []).append(i)
    return [rows[g] for g in sorted(rows)]


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of a dataset: the text shown to the model and what the verifier needs.

    A chat-format prompt (a list of ``{role, content}`` messages: TRL's conversational format, verl's
    preprocessed data) keeps its turns in ``messages`` and is rendered with the tokenizer's chat template;
    ``prompt`` is then the turns as readable text ('role: content' lines), used for logs and the
    train/eval overlap check.
    """

    prompt: str
    answer: str
    uid: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    messages: tuple[dict[str, str], ...] | None = None


@dataclass
class RolloutBatch:
    """B responses (G per prompt, contiguous) and everything computed about them."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    behavior_logprobs: torch.Tensor
    group_index: torch.Tensor
    truncated: torch.Tensor
    prompts: list[PromptRecord]  # one per row (repeated G times)
    response_texts: list[str]
    behavior_version: torch.Tensor | None = None  # [B] long; None reads as version 0 for every row
    sampling_temperature: torch.Tensor | None = None  # [B] float; None = rollout.temperature for every row
    rewards: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    answers: list[str | None] | None = None  # extracted answer text per row, None = unparseable
    reward_components: dict[str, torch.Tensor] = field(default_factory=dict)
    old_logprobs: torch.Tensor | None = None
    old_entropy: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    prompt_logprobs: torch.Tensor | None = None  # [B, P] log p of prompt tokens (position 0 is 0)
    advantages: torch.Tensor | None = None  # [B]

    def __post_init__(self) -> None:
        b = self.response_ids.shape[0]
        if self.behavior_version is None:
            self.behavior_version = torch.zeros(b, dtype=torch.long)
        checks = {
            "prompt_ids": self.prompt_ids.shape[0],
            "prompt_mask": self.prompt_mask.shape[0],
            "response_mask": self.response_mask.shape[0],
            "behavior_logprobs": self.behavior_logprobs.shape[0],
            "behavior_version": self.behavior_version.shape[0],
            "group_index": self.group_index.shape[0],
            "truncated": self.truncated.shape[0],
            "prompts": len(self.prompts),
            "response_texts": len(self.response_texts),
        }
        if self.sampling_temperature is not None:
            checks["sampling_temperature"] = self.sampling_temperature.shape[0]
        bad = {k: v for k, v in checks.items() if v != b}
        if bad:
            raise ValueError(f"RolloutBatch rows disagree with response_ids ({b}): {bad}")
        if self.response_mask.shape != self.response_ids.shape:
            raise ValueError("response_mask must have the shape of response_ids")
        if self.behavior_logprobs.shape != self.response_ids.shape:
            raise ValueError("behavior_logprobs must have the shape of response_ids")

    @property
    def size(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.group_index.max().item()) + 1 if self.size else 0

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)

    def select(self, rows: torch.Tensor | list[int]) -> RolloutBatch:
        """A new batch holding the given rows (tensors indexed, lists picked, dicts recursed)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        picked = idx.tolist()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                values[f.name] = v[idx]
            elif isinstance(v, list):
                values[f.name] = [v[i] for i in picked]
            elif isinstance(v, dict):
                values[f.name] = {k: t[idx] for k, t in v.items()}
            else:
                values[f.name] = v
        return RolloutBatch(**values)

    def micro_batches(self, size: int) -> list[RolloutBatch]:
        """Consecutive slices of at most ``size`` rows (the last may be shorter)."""
        if size <= 0:
            raise ValueError("micro-batch size must be positive")
        return [self.select(list(range(s, min(s + size, self.size)))) for s in range(0, self.size, size)]

    @staticmethod
    def concat(batches: list[RolloutBatch]) -> RolloutBatch:
        """Stack batches row-wise (e.g. shards from several rollout workers), re-padding tensors
        and renumbering group indices so groups stay distinct."""
        if not batches:
            raise ValueError("nothing to concatenate")
        values: dict[str, Any] = {}
        offsets, total = [], 0
        for b in batches:
            offsets.append(total)
            total += b.num_groups
        for f in dataclasses.fields(RolloutBatch):
            parts = [getattr(b, f.name) for b in batches]
            first = parts[0]
            if f.name == "group_index":
                values[f.name] = torch.cat([p + o for p, o in zip(parts, offsets, strict=True)])
            elif f.name == "prompt_ids" or f.name == "prompt_mask" or f.name == "prompt_logprobs":
                values[f.name] = None if first is None else _cat_padded(parts, left=True)
            elif isinstance(first, torch.Tensor):
                values[f.name] = _cat_padded(parts, left=False) if first.dim() == 2 else torch.cat(parts)
            elif first is None:
                values[f.name] = None
            elif isinstance(first, list):
                values[f.name] = [x for p in parts for x in p]
            elif isinstance(first, dict):
                values[f.name] = {k: torch.cat([p[k] for p in parts]) for k in first}
            else:
                values[f.name] = first
        return RolloutBatch(**values)


def _cat_padded(parts: list[torch.Tensor], *, left: bool) -> torch.Tensor:
    """Concatenate [b_i, L_i] tensors along rows, zero-padding to the longest L (left or right)."""
    width = max(p.shape[1] for p in parts)
    padded = []
    for p in parts:
        pad = width - p.shape[1]
        padded.append(torch.nn.functional.pad(p, (pad, 0) if left else (0, pad)))
    return torch.cat(padded)
