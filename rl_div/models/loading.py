"""Load a policy and its tokenizer (Hugging Face), and build tiny local models for demos and tests.

Nothing here downloads anything unless the user passes a hub name to :func:`load_policy`. The
tiny-model factory builds a character-level tokenizer with the ``tokenizers`` library and a small
Llama from a config, so the demo and the test-suite run offline on a CPU.
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer, decoders, models, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

if TYPE_CHECKING:  # the modelling classes are imported where used: the driver only needs tokenizers
    from transformers import LlamaForCausalLM, PreTrainedModel

from rl_div.versions import check_transformers

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order
# Printable ASCII (space included) plus newline: enough for every built-in task and for readable
# demo prompts; tabs and other control characters map to <unk>.
DEFAULT_ALPHABET = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def build_char_tokenizer(alphabet: str | None = None) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one token per character of ``alphabet``.

    Ids 0..3 are ``<pad>, <bos>, <eos>, <unk>``; characters follow in sorted order so the same
    alphabet always gives the same ids. Encoding prepends ``<bos>`` (as Llama tokenizers do); the
    ``Fuse`` decoder concatenates tokens, so spaces round-trip exactly.
    """
    chars = sorted(set(DEFAULT_ALPHABET if alphabet is None else alphabet))
    if not chars:
        raise ValueError("alphabet must contain at least one character")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    # A BPE with no merges and no pre-tokenizer splits any text into single characters and keeps
    # every space as its own token (WordLevel would need a splitting pre-tokenizer to do the same).
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        # The default clean-up would delete the space in "a ." and break exact round-trips.
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )


def make_tiny_llama(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 64,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised small Llama sized to ``tokenizer`` (defaults: ~0.1M parameters).

    The defaults train a built-in task in about a minute on two CPU cores; initialisation is
    deterministic given ``seed`` (the global torch RNG is restored afterwards).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def load_policy(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: str = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory or a hub name.

    The tokenizer gets a pad token (its eos) when it has none, and pads on the left, because
    batched generation appends new tokens on the right of every row.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (valid: {', '.join(sorted(DTYPES))})")
    check_transformers()
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    model.to(device)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_tokenizer(name_or_path: str | os.PathLike[str], *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer with a pad token (eos when missing) and left padding."""
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def tokenizer_problem(model_dir: str | os.PathLike[str]) -> str | None:
    """Why a local model folder's tokenizer cannot be loaded (one line), or None. A folder without any
    tokenizer file is named as such, not as the error transformers raises after trying every converter."""
    folder = Path(model_dir)
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        return f"no tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES)}); save it beside the model"
    try:
        load_tokenizer(folder)
    except Exception as err:  # any loader failure: one line, the cause's first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"the tokenizer in {folder} does not load ({type(err).__name__}: {first})"
    return None


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool | None = None,
                  system: str | None = None) -> str:
    """The text the policy sees for ``prompt``.

    ``use_chat_template=None`` (the default) applies the tokenizer's chat template when it has one
    (as a single user turn with the generation prompt opened); ``False`` never applies it; ``True``
    requires one. A template's text may already start with the model's BOS; tokenize such text
    with ``add_special_tokens=False`` or the BOS appears twice. ``system``: a system message before
    the user turn (None: the template's own default, if any).
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template is False or (use_chat_template is None and not has_template):
        return prompt
    if not has_template:
        raise ValueError("use_chat_template=True but the tokenizer has no chat_template")
    system_turn = [{"role": "system", "content": system}] if system is not None else []
    return format_chat(tokenizer, [*system_turn, {"role": "user", "content": prompt}])


def format_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]],
                use_chat_template: bool | None = None) -> str:
    """The text the policy sees for a chat-format prompt: the tokenizer's chat template over the turns,
    with the assistant turn opened (``add_generation_prompt``). Raises ValueError when no template can
    be applied (``use_chat_template=False``, or a tokenizer without one): a conversation has no
    faithful plain-text rendering."""
    if use_chat_template is False:
        raise ValueError("chat-format prompts need the chat template, but model.use_chat_template is false")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"chat-format prompts need a tokenizer with a chat template; "
                         f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')!r} has none")
    return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | os.PathLike[str]) -> Path:
    """Save model (safetensors) and tokenizer to ``path``; :func:`load_policy` reads it back."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def model_summary(model: PreTrainedModel) -> dict[str, Any]:
    """A few numbers worth logging about a policy."""
    cfg = model.config
    return {
        "model_type": getattr(cfg, "model_type", "?"),
        "parameters": count_parameters(model),
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
    }
