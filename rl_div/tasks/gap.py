"""Gap tasks: given N, answer any a in 1..a_max such that N - a has a property.

``prime_gap`` (the demo task): "347-a is prime, a=" -> e.g. "6" (341 = 11*31 is not prime, so 6 is
wrong) or "10" (337 is prime, right). N is any three-digit number, so about 16 of the 99 possible
answers are right for a typical prompt: many distinct correct answers, but a minority. The base
model's habit strongly prefers even answers (``habit_even_bias``), which makes two kinds of problem:
for odd N the right answers are even (N - a must be odd), so the habit finds them often; for even N
they are odd, which the base model says rarely (about 1 sample in 50 is right). The base model's
pass@k therefore keeps rising up to k = 64 and stays below 1 there (about 0.85-0.9 on the demo's 32
held-out problems at n = 64): the hard half is where large-k coverage can be lost or kept.

Whether N - a is prime is something a tiny model cannot learn to compute in CPU minutes; RL can
learn the easy part (a's parity opposite to N's) or, more readily, sharpen onto answers it already
likes, so pass@1 rises while pass@k at large k can fall: the diversity collapse the demo shows.

Version history: "1" had odd N only and an even bias of 3; the base model then solved nearly every
held-out problem at k >= 32 (pass@32 = 1.000), so a fall in large-k pass@k could not be seen.

Other predicates (``PREDICATES``) make variants, e.g. ``GapTask("odd_gap", "odd", odd_n_only=False)``,
whose rule (a's parity must differ from N's last digit) is learnable in principle. Not registered:
in a 150-step CPU run GRPO did not learn it (pass@1 stayed ~0.45), it only lost distinct answers.

Answers are one to three digits followed by eos; leading/trailing whitespace is tolerated and
leading zeros are canonicalised away ("07" -> "7").
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from rl_div.data import PromptRecord
from rl_div.tasks.base import Split, Task

_ANSWER = re.compile(r"\s*(\d{1,3})\s*")


def is_prime(n: int) -> bool:
    """Trial division; the numbers here are below 10^4, so this is exact and fast."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def is_odd(n: int) -> bool:
    return n % 2 == 1


PREDICATES: dict[str, Callable[[int], bool]] = {"prime": is_prime, "odd": is_odd}


@dataclass(frozen=True, repr=False)
class GapTask(Task):
    """Prompt ``f"{N}-a is {predicate}, a="``; a correct answer is a in [1, a_max] with
    ``predicate(N - a)``.

    The habit prior over a is fixed by ``habit_seed``: log-weights ~ Normal(0, habit_sigma), with
    even answers up-weighted by ``habit_even_bias`` (a habit that helps on odd N, so the base model
    starts at a usable pass@1, and hurts on even N, whose right answers are odd). A fraction
    ``format_noise`` of demonstrations is malformed, so the base model is not perfectly well-formed.
    """

    name: str
    predicate: str
    n_min: int = 101
    n_max: int = 999
    odd_n_only: bool = True
    a_max: int = 99
    habit_seed: int = 1234
    habit_sigma: float = 0.75
    habit_even_bias: float = 3.0
    format_noise: float = 0.03
    eval_fraction: float = 0.25
    version: str = "1"
    alphabet: str = "0123456789-=,. aeimnoprsd?"
    max_new_tokens: int = 4  # up to three digits + eos
    _prior: tuple[tuple[int, ...], tuple[float, ...]] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if self.predicate not in PREDICATES:
            raise ValueError(f"unknown predicate {self.predicate!r} (valid: {sorted(PREDICATES)})")
        if not 1 <= self.a_max <= 999 or self.n_min - self.a_max < 0:
            raise ValueError("need 1 <= a_max <= 999 and n_min >= a_max (so N - a >= 0)")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in (0, 1)")
        rng = random.Random(self.habit_seed)
        answers = tuple(range(1, self.a_max + 1))
        weights = [
            math.exp(self.habit_sigma * rng.gauss(0.0, 1.0)) * (self.habit_even_bias if a % 2 == 0 else 1.0)
            for a in answers
        ]
        total = sum(weights)
        object.__setattr__(self, "_prior", (answers, tuple(w / total for w in weights)))

    # ----- prompts -------------------------------------------------------------------------------
    def numbers(self, split: Split) -> list[int]:
        """All N of a split. Membership hangs on a hash of (name, N), never on a seed, so train and
        eval stay disjoint for every seed and every process."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
        step = 2 if self.odd_n_only else 1
        start = self.n_min + (1 - self.n_min % 2 if self.odd_n_only else 0)
        want_eval = split == "eval"
        return [n for n in range(start, self.n_max + 1, step) if self._is_eval(n) == want_eval]

    def _is_eval(self, n: int) -> bool:
        digest = hashlib.sha256(f"{self.name}:{n}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.eval_fraction

    def prompt_text(self, n: int) -> str:
        return f"{n}-a is {self.predicate}, a="

    def record(self, n: int) -> PromptRecord:
        valid = [a for a in range(1, self.a_max + 1) if PREDICATES[self.predicate](n - a)]
        meta = {**self.record_meta(), "n": n, "a_max": self.a_max, "valid_answers": valid}
        # ``answer`` holds one reference solution (the smallest); every correct one is in meta.
        return PromptRecord(
            prompt=self.prompt_text(n), answer=str(valid[0]) if valid else "", uid=f"{self.name}:{n}", meta=meta
        )

    def make_prompts(self, split: Split, n: int, seed: int) -> list[PromptRecord]:
        """``n`` records drawn without replacement from the split; when ``n`` exceeds the split,
        successive shuffles of it are concatenated (uids then repeat, as the prompts do)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        pool = self.numbers(split)
        rng = random.Random(seed * 2 + (split == "eval"))
        chosen: list[int] = []
        while len(chosen) < n:
            chosen.extend(rng.sample(pool, min(len(pool), n - len(chosen))))
        return [self.record(x) for x in chosen]

    # ----- answers ---------------------------------------------------------------------------------
    def extract(self, completion: str) -> str | None:
        m = _ANSWER.fullmatch(completion)
        return str(int(m.group(1))) if m else None

    def verify(self, completion: str, record: PromptRecord) -> float:
        answer = self.extract(completion)
        if answer is None:
            return 0.0
        a = int(answer)
        return float(1 <= a <= self.a_max and PREDICATES[self.predicate](int(record.meta["n"]) - a))

    # ----- demonstrations --------------------------------------------------------------------------
    def habit_prior(self) -> dict[int, float]:
        """The prompt-independent distribution over a that demonstrations are drawn from."""
        answers, probs = self._prior
        return dict(zip(answers, probs, strict=True))

    def sample_demonstration(self, record: PromptRecord, rng: random.Random) -> str:
        answers, probs = self._prior
        a = rng.choices(answers, weights=probs)[0]
        if rng.random() >= self.format_noise:
            return str(a)
        # Malformed on purpose: an echoed variable, a trailing period, a question, two answers.
        return rng.choice([f"a={a}", f"{a}.", "?", f"{a},{rng.choice(answers)}"])


PRIME_GAP = GapTask(name="prime_gap", predicate="prime", odd_n_only=False, habit_even_bias=12.0, version="2")
