"""The interface every built-in synthetic task implements.

A task generates prompts (train and eval splits that never share a prompt), parses an answer out
of a completion, verifies it exactly, and samples noisy demonstrations used to pretrain a tiny base
model (:mod:`rl_div.models.bootstrap`). The demonstrations come from a prompt-independent "habit"
prior that mixes right and wrong answers: the base model then answers diversely, and RL can only
raise pass@1 by sharpening onto habitual answers, which is what makes diversity collapse visible.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Literal

from rl_div.data import PromptRecord

Split = Literal["train", "eval"]


class Task(ABC):
    """A synthetic task with many valid answers per prompt and an exact verifier.

    Attributes every task defines:
        name:            registry name; also written into each record's ``meta["task"]``.
        version:         bump it when prompts, prior or verifier change (invalidates bootstraps).
        alphabet:        every character a prompt or demonstration can contain.
        max_new_tokens:  a generation budget long enough for any well-formed answer plus eos.
    """

    name: str
    version: str
    alphabet: str
    max_new_tokens: int

    @abstractmethod
    def make_prompts(self, split: Split, n: int, seed: int) -> list[PromptRecord]:
        """``n`` prompt records of ``split``; deterministic given ``seed``; splits are disjoint."""

    @abstractmethod
    def extract(self, completion: str) -> str | None:
        """The canonical answer text in ``completion``, or None when it is not well-formed."""

    @abstractmethod
    def verify(self, completion: str, record: PromptRecord) -> float:
        """1.0 when ``completion`` holds a correct answer to ``record``, else 0.0."""

    @abstractmethod
    def sample_demonstration(self, record: PromptRecord, rng: random.Random) -> str:
        """A completion (without eos) for bootstrap pretraining: drawn from the habit prior,
        so it is often wrong and sometimes malformed."""

    def valid_answers(self, record: PromptRecord) -> list[str]:
        """Every correct answer (canonical text) to ``record``, when the task can enumerate them.

        Used for coverage metrics; tasks with unbounded answer sets return an empty list.
        """
        return [str(a) for a in record.meta.get("valid_answers", [])]

    def record_meta(self) -> dict[str, str]:
        """The meta keys through which the rewards package finds this task's extractor/verifier."""
        return {"task": self.name, "extractor": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, version={self.version!r})"
