"""Task rewards: every built-in synthetic task (rl_div.tasks.TASKS) as an answer extractor and a
verifier reward under the task's name."""

from __future__ import annotations

from typing import Any

from rewards.answers import ANSWER_EXTRACTORS
from rewards.registry import REWARDS, register_reward
from rl_div.tasks import TASKS, Task


def register_task_rewards(*, overwrite: bool = False) -> None:
    """Register, for every task in ``TASKS``, an answer extractor and a verifier reward, both under
    the task's name, in the ``rewards`` package (``ANSWER_EXTRACTORS`` and ``register_reward``).

    Here, not in ``rl_div.tasks``, so that the tasks never depend on ``rewards``; ``rewards`` calls this
    when it loads, and calling it again is a no-op.
    """
    for name in TASKS.names():
        task: Task = TASKS[name]
        if overwrite or name not in ANSWER_EXTRACTORS:
            ANSWER_EXTRACTORS.register(name, overwrite=overwrite)(task.extract)
        if overwrite or name not in REWARDS:
            register_reward(name, scope="sample", verifier=True, overwrite=overwrite)(TaskVerifier(name))


class TaskVerifier:
    """A verifier reward ``(completion, record, **params) -> 0.0/1.0`` for one registered task.

    A module-level class holding only the task's name (not a closure) so that it pickles into the
    isolated reward worker and resolves the task there from ``TASKS``.
    """

    def __init__(self, task_name: str) -> None:
        self.task_name = task_name
        self.__name__ = f"verify_{task_name}"
        self.__doc__ = f"1.0 when the completion answers the {task_name!r} prompt correctly, else 0.0."

    def __call__(self, completion: str, record: Any, **params: Any) -> float:
        if params:
            raise TypeError(f"{self.__name__} takes no parameters, got {sorted(params)}")
        return TASKS[self.task_name].verify(completion, record)

    def __repr__(self) -> str:
        return f"TaskVerifier({self.task_name!r})"
