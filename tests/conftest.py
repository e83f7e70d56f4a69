"""Test-wide settings: nothing is downloaded, and Ray starts without its dashboard."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# tests/plugins holds user-style plugin modules registered by import (e.g. "plugins.my_rewards").
TESTS_DIR = Path(__file__).parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))



@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 with Qwen's real tokenizer (rl_div.models.tiny_qwen), built once per session (~10 s)."""
    from rl_div.models.tiny_qwen import tiny_qwen_model

    return tiny_qwen_model(tmp_path_factory.mktemp("tiny_qwen"))


@pytest.fixture(scope="session")
def bootstrapped_prime_gap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo model bootstrapped on prime_gap (40 steps, seed 0), built once per session (~5 s
    on a quiet 2-core machine) for the end-to-end modules (test_train_e2e, test_guard, test_dist_group,
    test_dist_faults)."""
    from rl_div.models.bootstrap import bootstrap_base_model

    return bootstrap_base_model("prime_gap", tmp_path_factory.mktemp("bootstrap"), steps=40, seed=0, log=None)


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left_after_the_module() -> Iterator[None]:
    """Every test module starts without a Ray connection in its process, whatever ran before it there:
    with two test processes (pytest-xdist) the modules each process runs, and their order, vary."""
    yield
    ray = sys.modules.get("ray")  # a module that never imported Ray has nothing to shut down
    if ray is not None and ray.is_initialized():
        ray.shutdown()
