"""Issue 30 item 2: a plugin next to the config was not found without PYTHONPATH=., and the error gave no
hint. docs/plugins.md's four examples (reward, advantage, token weight, loss) are copied out of the page
beside a config and trained through `rl-div train` from another directory: each one's metric shows it
ran in the process that owns it (reward actor, driver, learner actor). Each function's values are
checked against hand computations, and a missing plugin is refused in one line naming where it looked."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "plugins.md"
QUICK = ["train.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2", "eval.n=2", "data.num_eval_prompts=2",
         "eval.every=0", "eval.embedding_metrics=false", "tracking.progress=false", "tracking.tensorboard=false",
         "cluster.num_cpus=2"]


def doc_files() -> dict[str, str]:
    """The page's code blocks that start with a '# <file name>' line, by file name."""
    blocks = re.findall(r"```(?:python|yaml)\n(.*?)```", DOC.read_text(), flags=re.S)
    return {m.group(1): block for block in blocks if (m := re.match(r"# (\S+\.(?:py|yaml))\n", block))}


@pytest.fixture(scope="module")
def plugin_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("experiment")
    for name, text in doc_files().items():
        (folder / name).write_text(text)
    shutil.copy(REPO / "configs" / "demo.yaml", folder / "demo.yaml")
    return folder


def test_the_page_has_a_complete_example_of_each_kind() -> None:
    assert set(doc_files()) == {"my_rewards.py", "my_advantages.py", "my_token_weights.py", "my_losses.py",
                                "plugin_run.yaml"}


def import_example(folder: Path, name: str):  # noqa: ANN201
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


def test_each_example_computes_what_its_docstring_says(plugin_folder: Path) -> None:
    from rewards import REWARDS
    from rl_div.algos import ADVANTAGES, LOSSES, TOKEN_WEIGHTS, AdvantageInputs, LossInputs, TokenWeightInputs
    from rl_div.data import PromptRecord

    for name in ("my_rewards", "my_advantages", "my_token_weights", "my_losses"):
        import_example(plugin_folder, name)
    record = PromptRecord(prompt="q", answer="1")
    assert [REWARDS.get("brevity")(c, record, max_chars=8) for c in ("", "abcd", "abcdefghij")] == [1.0, 0.5, 0.0]

    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    out = ADVANTAGES.get("rloo")(AdvantageInputs(rewards=rewards, group_index=groups), scale=2.0)
    # group 0: 1 - 0, 0 - 1; group 1: 0 - 1/2, 0 - 1/2, 1 - 0; group 2 (one row): 0; times scale 2
    assert out.advantages.tolist() == [2.0, -2.0, -1.0, -1.0, 2.0, 0.0]

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    inputs = TokenWeightInputs(advantages=torch.ones(2, 3), logprobs=torch.zeros(2, 3), old_logprobs=torch.zeros(2, 3),
                               mask=mask)
    weights = TOKEN_WEIGHTS.get("fade")(inputs, decay=0.5)
    assert weights.weights.tolist() == [[1.0, 0.5, 0.25], [1.0, 0.0, 0.0]]
    assert weights.metrics["fade/mean_weight"] == pytest.approx(2.75 / 4)

    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -9.0, -9.0]], requires_grad=True)
    loss = LOSSES.get("reinforce")(LossInputs(logprobs=logprobs, old_logprobs=logprobs.detach(),
                                              advantages=torch.tensor([1.0, -2.0]), mask=mask,
                                              token_weights=weights.weights), token_denominator=4.0)
    # -(1*(1*-1 + .5*-2 + .25*-3) + -2*(1*-0.5)) / 4 = -(-2.75 + 1) / 4
    assert loss.loss.item() == pytest.approx(1.75 / 4)


def rl_div(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rl_div.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


@pytest.mark.slow
def test_all_four_beside_the_config_train_through_ray_from_another_directory(
        plugin_folder: Path, tmp_path: Path, bootstrapped_prime_gap: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "run"
    done = rl_div("train", str(plugin_folder / "plugin_run.yaml"), f"model.path={bootstrapped_prime_gap}",
                  f"run.output_dir={out}", *QUICK, cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 2
    for key in ("reward/brevity", "rloo/abs_mean", "fade/mean_weight", "reinforce/loss"):
        assert all(isinstance(r.get(key), float) for r in train), key  # reward actor, driver, learner actor
    saved = (out / "config.yaml").read_text()
    assert str(plugin_folder / "my_rewards.py") in saved and str(plugin_folder / "my_losses.py") in saved


def test_a_missing_plugin_is_refused_naming_where_it_looked(plugin_folder: Path, tmp_path: Path) -> None:
    config = plugin_folder / "plugin_run.yaml"
    for entry, looked in (("my_rewardz", "looked beside the config and in the current directory"),
                          ("./nowhere.py", "looked in")):
        done = rl_div("train", str(config), f"run.plugins=[{entry}]", f"run.output_dir={tmp_path / 'run'}",
                      cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "run.plugins: " in lines[0] and looked in lines[0], lines
        assert str(plugin_folder) in lines[0] and str(tmp_path) in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_plugin_in_the_current_directory_is_found_by_name(tmp_path: Path) -> None:
    """The console script's sys.path lacks the current directory: 'my_rewards' there was not found."""
    from rl_div.config import load_config

    (tmp_path / "cwd_rewards.py").write_text("from rewards import register_reward\n\n\n"
                                             "@register_reward('from_cwd')\ndef from_cwd(completion, record):\n"
                                             "    return 1.0\n")
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "c.yaml").write_text("run: {plugins: [cwd_rewards]}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        cfg = load_config(cfg_dir / "c.yaml")
    assert cfg.run.plugins == [str((tmp_path / "cwd_rewards.py").resolve())]
    from rewards import REWARDS

    assert REWARDS.get("from_cwd")("x", None) == 1.0
