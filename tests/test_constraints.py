"""The CPU environment is the tested one (issue 28 item 0): every package that affects sampling, scoring
or training is installed at the version constraints-cpu.txt pins, so a run's numbers reproduce on a
fresh machine. Skipped where torch is not the local CPU build (a GPU user's own environment)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import torch

PINS_FILE = Path(__file__).resolve().parents[1] / "constraints-cpu.txt"
# What changes the numbers a run produces (sampling, tokenization, scoring, the update).
NUMERIC = ("torch", "transformers", "tokenizers", "trl", "accelerate", "peft", "numpy", "safetensors",
           "math-verify", "latex2sympy2_extended", "sentence-transformers", "ray", "scipy")


def pinned_versions(text: str) -> dict[str, str]:
    """name (normalised) -> version of each ``name==version`` line; comments and blanks skipped."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if match := re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line):
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


def test_pins_parse_by_hand() -> None:
    text = "# header\ntorch==2.13.0\nMath_Verify==0.9.0  # comment\n\nfoo>=1\n"
    assert pinned_versions(text) == {"torch": "2.13.0", "math-verify": "0.9.0"}


@pytest.mark.skipif("+cpu" not in torch.__version__, reason="not the local CPU build: a GPU environment")
def test_every_numeric_package_is_at_its_pinned_version() -> None:
    pins = pinned_versions(PINS_FILE.read_text())
    missing = [name for name in NUMERIC if re.sub(r"[-_.]+", "-", name).lower() not in pins]
    assert not missing, f"constraints-cpu.txt pins none of {missing}"
    wrong = {}
    for name in NUMERIC:
        installed = metadata.version(name).split("+")[0]
        if installed != pins[re.sub(r"[-_.]+", "-", name).lower()]:
            wrong[name] = (installed, pins[re.sub(r"[-_.]+", "-", name).lower()])
    assert not wrong, f"installed vs pinned: {wrong}"
