"""Selective Layer Restoration: a tuned model with some decoder layers put back to the base model's.

RL fine-tuning can narrow a model's output distribution in a few layers; restoring those layers'
base weights (and keeping the tuned ones elsewhere) shows how much diversity comes back and what
accuracy it costs. Evaluate the result with ``rl-div eval OUT --reference BASE``.

Slice convention: ``"i:j"`` is Python's half-open slice over the 0-based decoder layers, i.e. layers
i, i+1, ..., j-1: tensors ``model.layers.i.*`` ... ``model.layers.{j-1}.*`` (Llama/Qwen/Mistral naming;
the layer prefix is detected from the checkpoint, e.g. ``transformer.h`` for GPT-2). Open ends and
negative indices work as in Python (``":4"`` the first four, ``"-2:"`` the last two), several slices
join with commas (``"0:2,6:8"``). Unlike Python, a slice reaching past the last layer is an error, not
silently clipped, because a typo there would quietly restore fewer layers than asked for.

Everything outside the chosen layers (embeddings, final norm, lm_head, the other layers) and every
non-weight file (config, tokenizer, generation config) is the tuned model's.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
INFO_FILE = "restore.json"
# The first ".<number>." of a key names its layer: "model.layers.3.mlp.experts.7.w1" is layer 3.
_LAYER_KEY = re.compile(r"^(?P<prefix>[^.].*?)\.(?P<idx>\d+)\.")


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """'1:3' -> [1, 2]; '0:2,5:' on 8 layers -> [0, 1, 5, 6, 7]. See the module docstring."""
    chosen: set[int] = set()
    for part in spec.split(","):
        text = part.strip()
        if text.count(":") != 1:
            raise ValueError(f"layer slice {text!r} is not i:j (e.g. 4:8 for layers 4..7)")
        lo_text, hi_text = text.split(":")
        try:
            lo = int(lo_text) if lo_text.strip() else 0
            hi = int(hi_text) if hi_text.strip() else num_layers
        except ValueError:
            raise ValueError(f"layer slice {text!r}: bounds must be integers") from None
        for bound in (lo, hi):
            if not -num_layers <= bound <= num_layers:
                raise ValueError(f"layer slice {text!r} is outside the model's {num_layers} layers")
        lo, hi = lo % num_layers if lo < 0 else lo, hi % num_layers if hi < 0 else hi
        if lo >= hi:
            raise ValueError(f"layer slice {text!r} selects no layer (i:j means layers i..j-1)")
        chosen.update(range(lo, hi))
    return sorted(chosen)


def _weight_map(model_dir: Path) -> dict[str, str] | None:
    """tensor name -> safetensors file, or None when the model is not stored as safetensors."""
    if (model_dir / SAFE_INDEX).exists():
        return dict(json.loads((model_dir / SAFE_INDEX).read_text())["weight_map"])
    if (model_dir / SAFE_SINGLE).exists():
        with safe_open(str(model_dir / SAFE_SINGLE), framework="pt") as f:
            return dict.fromkeys(f.keys(), SAFE_SINGLE)
    return None


def layer_prefix(keys: list[str], num_layers: int) -> str:
    """The prefix whose numbered children are exactly layers 0..num_layers-1 (e.g. 'model.layers')."""
    seen: dict[str, set[int]] = {}
    for key in keys:
        m = _LAYER_KEY.match(key)
        if m:
            seen.setdefault(m.group("prefix"), set()).add(int(m.group("idx")))
    matches = [p for p, idx in seen.items() if idx == set(range(num_layers))]
    if len(matches) != 1:
        raise ValueError(f"cannot tell the decoder layers apart (candidates {sorted(seen)}); pass prefix=")
    return matches[0]


def _layer_of(key: str, prefix: str) -> int | None:
    if not key.startswith(prefix + "."):
        return None
    head = key[len(prefix) + 1:].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _check_compatible(base: dict[str, Any], tuned: dict[str, Any]) -> int:
    for key in ("model_type", "num_hidden_layers", "hidden_size", "vocab_size"):
        if base.get(key) != tuned.get(key):
            raise ValueError(f"base and tuned models differ in {key}: {base.get(key)!r} vs {tuned.get(key)!r}")
    return int(tuned["num_hidden_layers"])


def restore_layers(base: str | Path, tuned: str | Path, layers: str, out: str | Path, prefix: str | None = None,
                   overwrite: bool = False) -> dict[str, Any]:
    """Write to ``out`` the tuned model with the decoder layers selected by ``layers`` taken from ``base``.

    Returns (and writes to out/restore.json) what was done: the layer indices, the prefix, how many
    tensors were replaced. The directory appears complete or not at all (written beside, renamed).
    """
    base, tuned, out = Path(base), Path(tuned), Path(out)
    num_layers = _check_compatible(json.loads((base / "config.json").read_text()),
                                   json.loads((tuned / "config.json").read_text()))
    chosen = parse_layers(layers, num_layers)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    base_map, tuned_map = _weight_map(base), _weight_map(tuned)
    if base_map is not None and tuned_map is not None:
        prefix = prefix or layer_prefix(list(tuned_map), num_layers)
        replaced = _restore_safetensors(base, tuned, base_map, tuned_map, set(chosen), prefix, tmp)
    else:  # .bin checkpoints: go through transformers (holds both models in memory)
        replaced, prefix = _restore_via_transformers(base, tuned, set(chosen), prefix, num_layers, tmp)
    info = {"base": str(base.resolve()), "tuned": str(tuned.resolve()), "layers_spec": layers,
            "layers": chosen, "num_layers": num_layers, "prefix": prefix, "replaced_tensors": replaced}
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return info


def _restore_safetensors(base: Path, tuned: Path, base_map: dict[str, str], tuned_map: dict[str, str],
                         chosen: set[int], prefix: str, dest: Path) -> int:
    """Rewrite the tuned model's shards with the chosen layers' tensors read from the base shards.

    One tuned shard is in memory at a time, and base tensors are read lazily one by one, so a
    restoration costs about one shard of memory, not two models.
    """
    for item in tuned.iterdir():
        if item.is_file() and item.name not in set(tuned_map.values()):
            shutil.copy2(item, dest / item.name)
    replaced = 0
    with contextlib.ExitStack() as stack:
        handles: dict[str, Any] = {}
        for shard in sorted(set(tuned_map.values())):
            tensors = load_file(str(tuned / shard))
            for key, value in tensors.items():
                if _layer_of(key, prefix) not in chosen:
                    continue
                if key not in base_map:
                    raise ValueError(f"the base model has no tensor {key}")
                source = base_map[key]
                if source not in handles:
                    handles[source] = stack.enter_context(safe_open(str(base / source), framework="pt"))
                restored = handles[source].get_tensor(key)
                if restored.shape != value.shape:
                    raise ValueError(f"{key}: base shape {tuple(restored.shape)} != tuned {tuple(value.shape)}")
                # Keep the tuned checkpoint's dtype so the result loads like the tuned model does.
                tensors[key] = restored.to(value.dtype).contiguous()
                replaced += 1
            save_file(tensors, str(dest / shard), metadata={"format": "pt"})
    return replaced


def _restore_via_transformers(base: Path, tuned: Path, chosen: set[int], prefix: str | None, num_layers: int,
                              dest: Path) -> tuple[int, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tuned_model = AutoModelForCausalLM.from_pretrained(str(tuned))
    base_state = AutoModelForCausalLM.from_pretrained(str(base), dtype=tuned_model.dtype).state_dict()
    state = tuned_model.state_dict()
    prefix = prefix or layer_prefix(list(state), num_layers)
    replaced = 0
    with torch.no_grad():
        for key, value in state.items():
            if _layer_of(key, prefix) in chosen:
                value.copy_(base_state[key])
                replaced += 1
    tuned_model.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tuned)).save_pretrained(dest)
    return replaced, prefix
