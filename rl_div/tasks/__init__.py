"""Built-in synthetic tasks (prompt generator + exact verifier), registered by name in ``TASKS``.

    from rl_div.tasks import TASKS
    task = TASKS["prime_gap"]
    records = task.make_prompts("train", 64, seed=0)
    task.verify("10", records[0])

Every record's meta carries ``{"task": name, "extractor": name}``, the keys through which the
rewards package finds the task's answer extractor and verifier (rewards.tasks registers them).
"""

from __future__ import annotations

from typing import Any

from rl_div.registry import Registry
from rl_div.tasks.base import Split, Task
from rl_div.tasks.gap import PRIME_GAP, GapTask, is_prime

TASKS: Registry[Any] = Registry("task")
TASKS.register(PRIME_GAP.name)(PRIME_GAP)


def get_task(name: str) -> Task:
    """The registered task called ``name`` (the error lists the valid names)."""
    return TASKS.get(name)


__all__ = ["TASKS", "GapTask", "Split", "Task", "get_task", "is_prime"]
