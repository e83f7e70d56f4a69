"""The rl-div command line: a bad config fails before any work with the field named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parent.parent


def rl_div(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rl_div.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_bad_override_exits_2_naming_the_field() -> None:
    done = rl_div("train", "configs/demo.yaml", "algo.advantage=grpoo", "run.output_dir=/nonexistent/x")
    assert done.returncode == 2
    assert "algo.advantage" in done.stderr and "did you mean 'grpo'" in done.stderr
    assert not Path("/nonexistent/x").exists()  # nothing started


def test_config_help_lists_fields_with_help() -> None:
    done = rl_div("config-help")
    assert done.returncode == 0
    assert "train.lr = 0.001" in done.stdout and "AdamW learning rate" in done.stdout
