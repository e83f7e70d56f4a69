"""A test plugin: the sentence-embedding call hangs (a stuck embedding model or a wedged device).

Imported in every process (run.plugins), it replaces rewards.embedding.embed, which the reward actor
looks up at each call; the evaluation's embedding metrics must time out rather than hold the run.
"""

from __future__ import annotations

import time
from typing import Any

import rewards.embedding


def hung_embed(texts: list[str], model: str | None = None, batch_size: int = 64) -> Any:
    time.sleep(600)


rewards.embedding.embed = hung_embed
