"""Start-up work: the driver does not import the modelling code, and the embedding model is loaded
(early, in the background) only when a reward or metric needs it. Each check runs in a fresh
interpreter, since what a process has imported is the thing under test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewards import REWARDS
from rewards.registry import uses_embedder

REPO = Path(__file__).resolve().parents[1]


def fresh_python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=REPO, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_the_driver_imports_no_model_classes() -> None:
    code = ("import sys, rl_div.train.loop, rl_div.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('transformers.models.llama', "
            "'transformers.modeling_utils', 'sentence_transformers'))))")
    assert fresh_python(code) == "[]"


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("novelty", {}, True),
    ("partition", {}, True),  # default test: answer_or_embedding
    ("partition", {"test": "answer"}, False),
    ("math_verify", {}, False),
])
def test_which_rewards_use_the_embedder(name: str, params: dict, expected: bool) -> None:
    assert uses_embedder(REWARDS[name], params) is expected


WARM = """
import sys, threading
from rl_div.cluster.actors import RewardHost
from rl_div.config import load_config
from rewards.embedding import _load_embedder

def start(embedding_metrics):
    RewardHost(load_config("configs/demo.yaml", ["reward.isolated=false",
                                                f"eval.embedding_metrics={embedding_metrics}"]))
    for t in threading.enumerate():
        if t.name == "embedder-warm-up":
            t.join()
    return _load_embedder.cache_info().currsize, "sentence_transformers" in sys.modules

print(start("false"), start("true"))
"""


def test_the_reward_actor_loads_the_embedder_only_when_needed() -> None:
    """Demo rewards without the embedding metric: never imported; with it: loaded at start."""
    assert fresh_python(WARM) == "(0, False) (1, True)"
