"""Selective layer restoration on two tiny Llamas with different weights: the chosen layers' tensors
are the base model's, everything else the tuned model's, and the result loads with from_pretrained."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rl_div.cli import main
from rl_div.models.layer_restore import parse_layers, restore_layers
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy

LAYERS = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("restore")
    tok = build_char_tokenizer()
    base = save_policy(make_tiny_llama(tok, hidden_size=32, num_layers=LAYERS, intermediate_size=64, seed=1), tok,
                       root / "base")
    tuned_model = make_tiny_llama(tok, hidden_size=32, num_layers=LAYERS, intermediate_size=64, seed=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # norms start at 1 in both: perturb every tensor, as fine-tuning would
        for p in tuned_model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return base, save_policy(tuned_model, tok, root / "tuned")


def layer_of(key: str) -> int | None:
    m = re.match(r"model\.layers\.(\d+)\.", key)
    return int(m.group(1)) if m else None


def test_parse_layers_is_a_half_open_python_slice() -> None:
    assert parse_layers("1:3", 4) == [1, 2]
    assert parse_layers(":2", 4) == [0, 1]
    assert parse_layers("-1:", 4) == [3]
    assert parse_layers("0:1,3:4", 4) == [0, 3]
    assert parse_layers("2:", 4) == list(range(4))[2:]
    for bad in ("3:1", "1:9", "2", "a:b", "1:1"):
        with pytest.raises(ValueError):
            parse_layers(bad, 4)


@pytest.mark.parametrize("spec, chosen", [("1:3", {1, 2}), ("0:1,3:", {0, 3})])
def test_restored_layers_come_from_base_and_the_rest_from_tuned(tmp_path: Path, models: tuple[Path, Path],
                                                                 spec: str, chosen: set[int]) -> None:
    base_dir, tuned_dir = models
    out = tmp_path / "restored"
    info = restore_layers(base_dir, tuned_dir, spec, out)
    assert info["layers"] == sorted(chosen) and info["prefix"] == "model.layers"
    base, tuned = load_file(str(base_dir / "model.safetensors")), load_file(str(tuned_dir / "model.safetensors"))
    written = load_file(str(out / "model.safetensors"))
    assert written.keys() == tuned.keys()
    n_from_base = 0
    for key, value in written.items():
        assert not torch.equal(base[key], tuned[key]), f"{key}: the two fixtures must differ for the test to mean much"
        expected = base[key] if layer_of(key) in chosen else tuned[key]
        assert torch.equal(value, expected), key
        n_from_base += layer_of(key) in chosen
    assert info["replaced_tensors"] == n_from_base > 0

    # Loads as a model, and its parameters are the expected mix (checked through the model, not the file).
    model = AutoModelForCausalLM.from_pretrained(str(out))
    for i in range(LAYERS):
        source = base if i in chosen else tuned
        got = model.model.layers[i].self_attn.q_proj.weight
        assert torch.equal(got, source[f"model.layers.{i}.self_attn.q_proj.weight"])
    assert torch.equal(model.model.embed_tokens.weight, tuned["model.embed_tokens.weight"])
    assert (out / "tokenizer.json").exists()
    assert json.loads((out / "restore.json").read_text())["layers"] == sorted(chosen)


def test_restore_cli_and_refusals(tmp_path: Path, models: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    base_dir, tuned_dir = models
    out = tmp_path / "cli"
    assert main(["restore", "--base", str(base_dir), "--tuned", str(tuned_dir), "--layers", "0:2", "--out",
                 str(out)]) == 0
    assert "layers [0, 1] of 4" in capsys.readouterr().out
    written, base = load_file(str(out / "model.safetensors")), load_file(str(base_dir / "model.safetensors"))
    assert torch.equal(written["model.layers.1.mlp.up_proj.weight"], base["model.layers.1.mlp.up_proj.weight"])
    with pytest.raises(FileExistsError):  # never overwrites silently
        restore_layers(base_dir, tuned_dir, "0:1", out)
    other = tmp_path / "other"
    tok = build_char_tokenizer()
    save_policy(make_tiny_llama(tok, hidden_size=32, num_layers=2, intermediate_size=64), tok, other)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        restore_layers(other, tuned_dir, "0:1", tmp_path / "x")


def test_restore_cli_takes_checkpoint_folders_and_reports_bad_input_in_one_line(
        tmp_path: Path, models: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    """Issue 8 item 15: a run's checkpoint step folder (as rl-div eval takes) crashed with 'config.json
    not found', and --layers out of range printed a traceback."""
    import shutil

    base_dir, tuned_dir = models
    step = tmp_path / "run" / "checkpoints" / "step_000004"
    shutil.copytree(tuned_dir, step / "policy")
    out = tmp_path / "from_ckpt"
    assert main(["restore", "--base", str(base_dir), "--tuned", str(step), "--layers", "1:2", "--out",
                 str(out)]) == 0
    written, base = load_file(str(out / "model.safetensors")), load_file(str(base_dir / "model.safetensors"))
    tuned = load_file(str(tuned_dir / "model.safetensors"))
    assert torch.equal(written["model.layers.1.mlp.up_proj.weight"], base["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(written["model.layers.0.mlp.up_proj.weight"], tuned["model.layers.0.mlp.up_proj.weight"])
    capsys.readouterr()
    for layers, needle in [("2:9", "outside the model's 4 layers"), ("3:1", "selects no layer")]:
        assert main(["restore", "--base", str(base_dir), "--tuned", str(step), f"--layers={layers}", "--out",
                     str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rl-div: restore:") and needle in err and "\n" not in err
    assert main(["restore", "--base", str(tmp_path / "nothing"), "--tuned", str(step), "--layers", "0:1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "not a model directory" in capsys.readouterr().err
