"""rollout.seed_mode: the per-request SamplingParams seeds and the engine reseed of one vLLM call
(rl_div.rollout.seed_plan), without vLLM. The engine's side (per-row samples equal the single sample
with seed + g*n + i; per_batch repeating a call) is tested in the vLLM lane (tests/vllm_lane)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rl_div.config import Config
from rl_div.config.rollout_backends import vllm_worker_args
from rl_div.rollout.seed_plan import engine_reseed, request_seeds


def test_per_row_seeds_prompt_g_with_seed_plus_g_times_n() -> None:
    # vLLM seeds a request's n samples seed, seed+1, ..., so row i of prompt g gets 7 + 4g + i: all distinct
    assert request_seeds("per_row", 7, 3, 4) == [7, 11, 15]
    rows = [s + i for s in request_seeds("per_row", 7, 3, 4) for i in range(4)]
    assert rows == list(range(7, 19))
    assert engine_reseed("per_row", 7) is None


def test_per_batch_seeds_no_request_and_resets_the_engine() -> None:
    assert request_seeds("per_batch", 7, 3, 4) == [None, None, None]  # vLLM's batched (fast) sampler
    assert engine_reseed("per_batch", 7) == 7


def test_none_seeds_nothing() -> None:
    assert request_seeds("none", 7, 2, 4) == [None, None]
    assert engine_reseed("none", 7) is None


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="seed_mode"):
        request_seeds("per_token", 0, 1, 1)
    with pytest.raises(ValueError, match="seed_mode"):
        engine_reseed("per_token", 0)


def test_the_config_field_reaches_the_vllm_worker() -> None:
    assert Config().rollout.seed_mode == "per_row"  # the documented per-row guarantee by default
    cfg = Config.model_validate({"rollout": {"backend": "vllm", "seed_mode": "per_batch"}})
    assert vllm_worker_args(cfg, 1.0)["seed_mode"] == "per_batch"
    with pytest.raises(ValidationError, match="seed_mode"):
        Config.model_validate({"rollout": {"seed_mode": "per_token"}})
