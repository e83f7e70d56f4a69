"""A prompt longer than the model's context is a counted skip at load time, never a crash in the
rollout actor (issue 29 item 6). The model is a saved tiny Llama (max_position_embeddings 64) with
the character tokenizer: a prompt of n characters is n + 1 tokens (its BOS), so with
rollout.max_new_tokens=16 a prompt may have at most 64 - 16 - 1 = 47 characters."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rl_div.config import ConfigError, load_config
from rl_div.data import PromptRecord
from rl_div.models.loading import build_char_tokenizer, load_tokenizer, make_tiny_llama, save_policy
from rl_div.train.prompts import PromptSet, model_context, prompts_that_fit


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    tokenizer = build_char_tokenizer("0123456789 N=")
    model = make_tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                            max_position_embeddings=64)
    return str(save_policy(model, tokenizer, tmp_path_factory.mktemp("m") / "tiny"))


def records(*lengths: int) -> PromptSet:
    return PromptSet([PromptRecord(prompt="7" * n, answer="1", uid=f"r{n}") for n in lengths], skipped_rows=2)


def test_prompts_without_room_to_answer_are_skipped_and_counted(model_path: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(None, [f"model.path={model_path}", "rollout.max_new_tokens=16"])
    tokenizer = load_tokenizer(model_path)
    assert model_context(model_path, False) == 64
    with caplog.at_level(logging.WARNING, logger="rl_div"):
        fitted = prompts_that_fit(cfg, tokenizer, model_path, records(5, 47, 48, 1_000_000, 12), "train")
    assert [len(r.prompt) for r in fitted.records] == [5, 47, 12]
    assert (fitted.skipped_rows, fitted.too_long) == (2, 2)  # malformed rows counted apart
    [line] = [r.getMessage() for r in caplog.records if r.name == "rl_div"]
    assert line == ("train prompts: skipped 2 of 5 whose templated prompt has over 48 tokens, leaving no room for "
                    "rollout.max_new_tokens=16 within the model's context of 64 tokens")
    # the template counts: 10 more characters each
    templated = load_config(None, [f"model.path={model_path}", "rollout.max_new_tokens=16",
                                   "data.prompt_template='N={prompt}========'"])
    fitted = prompts_that_fit(templated, tokenizer, model_path, records(5, 37, 38), "eval")
    assert [len(r.prompt) for r in fitted.records] == [5, 37]


def test_no_prompt_that_fits_is_one_line(model_path: str) -> None:
    cfg = load_config(None, [f"model.path={model_path}", "rollout.max_new_tokens=60"])
    with pytest.raises(ConfigError, match="no eval prompt fits: each has over 4 tokens"):
        prompts_that_fit(cfg, load_tokenizer(model_path), model_path, records(5, 9), "eval")


def test_a_model_without_a_context_length_keeps_every_prompt(tmp_path: Path) -> None:
    from rl_div.train.prompts import leave_room_to_answer

    kept = leave_room_to_answer(records(5, 10**6), lambda r: len(r.prompt), 16, None, "train")
    assert [len(r.prompt) for r in kept.records] == [5, 10**6] and kept.too_long == 0
