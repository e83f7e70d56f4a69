"""A user-style plugin module: importing it registers rewards (tests use it as "plugins.my_rewards").

tests/conftest.py puts tests/ on sys.path; the isolated worker inherits the parent's sys.path, so
it imports this module by the same name.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rewards import register_reward


@register_reward("test_length", scope="sample")
def length_reward(completion: str, record: Any, *, per_char: float = 1.0, pid_after_s: float = 0.0) -> float:
    """per_char * number of characters; also reports the worker's pid via a record flag (after
    pid_after_s seconds: a call that takes time, so one worker cannot drain a pool's queue alone)."""
    if record.meta.get("want_pid"):
        time.sleep(pid_after_s)
        return float(os.getpid())
    return per_char * len(completion)


@register_reward("test_raises", scope="sample")
def raising_reward(completion: str, record: Any) -> float:
    if "boom" in completion:
        raise RuntimeError(f"exploded on {completion!r}")
    return 1.0


@register_reward("test_sleep", scope="sample")
def sleeping_reward(completion: str, record: Any, *, seconds: float = 0.0) -> float:
    time.sleep(seconds)
    return 1.0


@register_reward("test_exit", scope="sample")
def exiting_reward(completion: str, record: Any) -> float:
    os._exit(3)  # a crash that takes the worker process down


@register_reward("test_text", scope="sample")
def text_reward(completion: str, record: Any) -> Any:
    return "yes"  # not a number: the runner must report it, not score it


@register_reward("test_sees_correct", scope="group")
def sees_correct(completions: list[str], answers: list[str | None], correct: list[float],
                 records: list[Any]) -> list[float]:
    """10 * correct: shows that group rewards run after the verifier."""
    return [10.0 * c for c in correct]


@register_reward("test_group_raises", scope="group")
def group_raises(completions: list[str], answers: list[str | None], correct: list[float],
                 records: list[Any]) -> list[float]:
    if any("boom" in c for c in completions):
        raise ValueError("group exploded")
    return [0.0] * len(completions)


@register_reward("test_nonfinite", scope="sample")
def nonfinite_reward(completion: str, record: Any) -> float:
    """'nan' -> NaN, 'inf' -> inf, anything else 1.0."""
    return {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}.get(completion, 1.0)


@register_reward("test_group_nonfinite", scope="group")
def group_nonfinite(completions: list[str], answers: list[str | None], correct: list[float],
                    records: list[Any]) -> list[float]:
    """inf for a response 'inf', 2.0 for the others."""
    return [float("inf") if c == "inf" else 2.0 for c in completions]


@register_reward("test_group_sleep", scope="group")
def group_sleep(completions: list[str], answers: list[str | None], correct: list[float],
                records: list[Any], *, seconds: float = 60.0) -> list[float]:
    """Hangs (sleeps ``seconds``) on a group that contains "hang"; else 1.0 each."""
    if any("hang" in c for c in completions):
        time.sleep(seconds)
    return [1.0] * len(completions)


@register_reward("test_chat_turns", scope="sample")
def chat_turns_reward(completion: str, record: Any) -> float:
    """The number of chat turns the record kept (0 for a plain-text prompt); -1 when the prompt text is
    not the 'role: content' rendering of those turns."""
    if record.messages is None:
        return 0.0
    text = "\n".join(f"{m['role']}: {m['content']}" for m in record.messages)
    return float(len(record.messages)) if record.prompt == text else -1.0
