"""Tiny-model factory, tokenizer round-trips, local loading and prompt formatting."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rl_div.models.loading import (
    BOS,
    EOS,
    PAD,
    UNK,
    build_char_tokenizer,
    count_parameters,
    format_prompt,
    load_policy,
    make_tiny_llama,
    save_policy,
)

TEXTS = ["  two  leading spaces", "347-a is prime, a=12", "trailing space ", "a\nb  c", "0123456789", " "]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_char_tokenizer()


def test_special_token_ids_are_fixed(tokenizer: PreTrainedTokenizerFast) -> None:
    assert [tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token] == [PAD, BOS, EOS, UNK]
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id] == [
        0,
        1,
        2,
        3,
    ]
    assert tokenizer.padding_side == "left"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact_and_one_token_per_char(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) == len(text) + 1  # <bos> + one id per character, spaces included
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_small_alphabet_maps_unknown_characters_to_unk() -> None:
    tok = build_char_tokenizer("0123456789 ")
    assert len(tok) == 4 + 11
    ids = tok("1 x2", add_special_tokens=False)["input_ids"]
    assert ids[2] == tok.unk_token_id
    assert tok.decode(tok("10 2", add_special_tokens=False)["input_ids"]) == "10 2"


@pytest.mark.parametrize("loader", [AutoTokenizer, PreTrainedTokenizerFast])
def test_round_trip_after_save_and_reload(tokenizer: PreTrainedTokenizerFast, tmp_path, loader) -> None:
    tokenizer.save_pretrained(tmp_path)
    reloaded = loader.from_pretrained(tmp_path)
    for text in TEXTS:
        ids = reloaded(text)["input_ids"]
        assert ids == tokenizer(text)["input_ids"]
        assert reloaded.decode(ids, skip_special_tokens=True) == text
    assert reloaded.pad_token_id == 0 and reloaded.eos_token_id == 2
    assert reloaded.padding_side == "left"


def test_tiny_llama_forward_shapes_and_determinism(tokenizer: PreTrainedTokenizerFast) -> None:
    model = make_tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, seed=3)
    enc = tokenizer(["12 + 3", "7"], return_tensors="pt", padding=True)
    out = model(**enc)
    assert out.logits.shape == (2, enc["input_ids"].shape[1], len(tokenizer))
    assert model.config.model_type == "llama"
    same = make_tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, seed=3)
    other = make_tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, seed=4)
    w = model.model.embed_tokens.weight
    assert torch.equal(w, same.model.embed_tokens.weight)
    assert not torch.equal(w, other.model.embed_tokens.weight)
    # Tied embeddings: vocab*hidden counted once; 2 layers of (4 h*h attention + 3 h*i MLP + 2 h norms),
    # plus the final norm.
    v, h, i = len(tokenizer), 32, 64
    assert count_parameters(model) == v * h + 2 * (4 * h * h + 3 * h * i + 2 * h) + h


def test_load_policy_from_local_dir_generates(tokenizer: PreTrainedTokenizerFast, tmp_path) -> None:
    model = make_tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    save_policy(model, tokenizer, tmp_path / "policy")
    assert (tmp_path / "policy" / "model.safetensors").is_file()
    config = json.loads((tmp_path / "policy" / "config.json").read_text())
    assert config["model_type"] == "llama"

    loaded, tok = load_policy(tmp_path / "policy")
    assert tok.padding_side == "left" and tok.pad_token_id == 0
    enc = tok(["347-a is prime, a=", "9-a="], return_tensors="pt", padding=True)
    assert enc["attention_mask"][1, 0] == 0  # the shorter prompt is padded on the left
    with torch.no_grad():
        same = loaded(**enc).logits
        ref = model(**enc).logits
    real = enc["attention_mask"].bool()  # padded query positions hold no meaningful logits
    torch.testing.assert_close(same[real], ref[real])
    gen = loaded.generate(**enc, do_sample=True, max_new_tokens=3, top_k=0, pad_token_id=tok.pad_token_id)
    assert gen.shape[0] == 2 and 1 <= gen.shape[1] - enc["input_ids"].shape[1] <= 3


def test_load_policy_sets_missing_pad_token(tokenizer: PreTrainedTokenizerFast, tmp_path) -> None:
    model = make_tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    tok = build_char_tokenizer()
    tok.padding_side = "right"
    save_policy(model, tok, tmp_path)
    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token")
    cfg_path.write_text(json.dumps(cfg))
    _, loaded = load_policy(tmp_path)
    assert loaded.pad_token == EOS and loaded.padding_side == "left"


def test_load_policy_rejects_unknown_dtype(tmp_path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        load_policy(tmp_path, dtype="float8")


def test_format_prompt_without_template_is_identity(tokenizer: PreTrainedTokenizerFast) -> None:
    assert format_prompt(tokenizer, "347-a is prime, a=") == "347-a is prime, a="
    with pytest.raises(ValueError, match="chat_template"):
        format_prompt(tokenizer, "x", use_chat_template=True)


def test_format_prompt_applies_chat_template() -> None:
    tok = build_char_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert format_prompt(tok, "hi there") == "<user>hi there\n<assistant>"
    assert format_prompt(tok, "hi there", use_chat_template=False) == "hi there"
