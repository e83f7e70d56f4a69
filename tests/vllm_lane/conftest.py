"""Fixtures of the vLLM lane (tests marked ``vllm``; run by launch/test_vllm.sh in .venv-vllm).

vLLM's CPU attention supports head sizes 32, 64, 80, ... only, so the lane bootstraps the demo
task's tiny model with one 64-wide head instead of the demo's four 16-wide heads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def vllm_base_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from rl_div.models.bootstrap import bootstrap_base_model

    cache = tmp_path_factory.mktemp("bootstrap")
    path: Path = bootstrap_base_model("prime_gap", cache, steps=40, seed=0, num_heads=1, log=None)
    yield str(path)
    import ray

    if ray.is_initialized():
        ray.shutdown()
