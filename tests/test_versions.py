"""Version floors: what pyproject.toml promises is what rl_div checks at start-up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rl_div.versions import MAX_VLLM, MIN_TORCH, MIN_TRANSFORMERS, MIN_VLLM, check_transformers, require, too_old

PYPROJECT = (Path(__file__).parent.parent / "pyproject.toml").read_text()


@pytest.mark.parametrize(("installed", "minimum", "old"), [
    ("0.8.3", "0.32", True), ("0.31.9", "0.32", True), ("0.32.0", "0.32", False), ("0.32.0+cpu", "0.32", False),
    ("0.33.1.dev4+g1234", "0.32", False), ("4.51.3", "4.56", True), ("5.19.0", "4.56", False),
])
def test_release_numbers_compare(installed: str, minimum: str, old: bool) -> None:
    assert too_old(installed, minimum) is old


def test_an_old_package_fails_naming_the_version_it_needs() -> None:
    with pytest.raises(RuntimeError, match=r"needs transformers >= 4.56 \(from_pretrained\(dtype=...\)\); "
                                           r"this environment has 4.51.3"):
        require("transformers", "4.51.3", MIN_TRANSFORMERS, "from_pretrained(dtype=...)")
    check_transformers()  # the environment the tests run in passes


def test_pyproject_floors_are_the_checked_minimums() -> None:
    assert re.search(rf'"transformers>={re.escape(MIN_TRANSFORMERS)}"', PYPROJECT)
    assert re.search(rf'"vllm>={re.escape(MIN_VLLM)},<{re.escape(MAX_VLLM)}"', PYPROJECT)
    assert re.search(rf'"torch>={re.escape(MIN_TORCH)}"', PYPROJECT)
