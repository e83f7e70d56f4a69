"""The reward registry: name -> reward function, each tagged with its scope.

Two scopes (recorded on the function by :func:`register_reward`):

* ``"sample"``: ``fn(completion: str, record: PromptRecord, **params) -> float`` scores one
  response. A *verifier* is a sample reward that returns 1.0/0.0 and defines correctness. Sample
  rewards run in the killable worker process (rewards.isolation), so they must be importable there:
  built-ins register when ``rewards`` is imported, user rewards in a plugin module.
* ``"group"``: ``fn(completions, answers, correct, records, **params) -> list[float]`` scores the G
  responses to one prompt together (novelty, partition). It runs in the scoring process after every
  sample reward, so ``correct`` (1.0/0.0/NaN) is already known.
  A group reward may carry ``fn.prepare_batch(completions, answers, correct, records, group_index,
  **params)``, called once per batch (rows [B]) before the per-group calls, to do batch-wide work
  once (novelty and partition embed every needed text of the batch in one call there), and
  ``fn.uses_embedder(params) -> bool`` when it needs the sentence embedder (loaded early then).

A *stateful* group reward (``fn.stateful = True``: ``outcome_ucb``) keeps state across batches: it runs
in the scoring process (not the killable worker), and gets ``state=``, a mutable dict that belongs to
the group's prompt (its text) and to that reward, which the caller of ``RewardScorer.score`` owns
(``rl-div train`` keeps it in the driver and the checkpoint; see rewards.runner).

A reward signals failure by raising; the runner turns that into NaN and an error count, never 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from rl_div.registry import Registry

Scope = Literal["sample", "group"]
SCOPES: tuple[str, ...] = ("sample", "group")

RewardFn = Callable[..., Any]

REWARDS: Registry[RewardFn] = Registry("reward")


def register_reward(
    name: str, scope: Scope = "sample", verifier: bool = False, *, overwrite: bool = False
) -> Callable[[RewardFn], RewardFn]:
    """Decorator: ``@register_reward("my_reward", scope="sample", verifier=False)``.

    Sets ``fn.scope`` and ``fn.is_verifier`` and adds ``fn`` to :data:`REWARDS` under ``name``.
    Only sample rewards can be verifiers: correctness is a property of one response.
    """
    if scope not in SCOPES:
        raise ValueError(f"reward scope must be one of {SCOPES}, got {scope!r}")
    if verifier and scope != "sample":
        raise ValueError(f"reward {name!r}: only a sample reward can be a verifier")

    def add(fn: RewardFn) -> RewardFn:
        fn.scope = scope  # type: ignore[attr-defined]
        fn.is_verifier = verifier  # type: ignore[attr-defined]
        return REWARDS.register(name, overwrite=overwrite)(fn)

    return add


def reward_scope(fn: RewardFn) -> str:
    """The scope of a registered reward (a plain function registered without the decorator is a
    sample reward, the TRL-style default)."""
    return str(getattr(fn, "scope", "sample"))


def is_verifier(fn: RewardFn) -> bool:
    return bool(getattr(fn, "is_verifier", False))


def uses_embedder(fn: RewardFn, params: dict[str, Any]) -> bool:
    """Whether the reward with these params embeds texts (its ``uses_embedder`` hook; default no)."""
    hook = getattr(fn, "uses_embedder", None)
    return bool(hook(params)) if hook is not None else False


def is_stateful(fn: RewardFn) -> bool:
    """Whether a group reward keeps state across batches (``fn.stateful``; see the module docstring)."""
    return bool(getattr(fn, "stateful", False))
