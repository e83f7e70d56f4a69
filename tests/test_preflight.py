"""Bad input is rejected before any work starts (issue 8 items 1-7): one ConfigError line naming the
field or file, at config load or at the start of a Trainer, and exit 2 from the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl_div.config import Config, ConfigError, load_config

REPO = Path(__file__).parent.parent


def check_inputs(cfg: Config) -> None:
    from rl_div.config.checks import check_inputs  # imported here: a module that did not exist before the fix

    check_inputs(cfg)


def config_error(*overrides: str, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


# ---- item 1: YAML syntax errors and tags ---------------------------------------------------------
def test_yaml_syntax_error_in_a_file_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: 2\n  lr: [1, 2\n")
    message = config_error(path=path)
    assert str(path) in message and "line 4, column 1" in message and "\n" not in message


def test_yaml_tag_is_refused_as_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "tag.yaml"
    path.write_text('run: !!python/object/apply:os.system ["echo pwned"]\n')
    message = config_error(path=path)
    assert str(path) in message and "line 1, column 6" in message and "python/object/apply" in message


def test_override_that_is_not_yaml_names_the_override() -> None:
    message = config_error("data.prompt_template={prompt} a=")
    assert "data.prompt_template={prompt} a=" in message and "column 10" in message and "quote" in message
    assert "x=!!python/name:os.system" in config_error("x=!!python/name:os.system")


# ---- item 4: plugin modules that do not import ---------------------------------------------------
@pytest.mark.parametrize(("module", "needle"), [
    ("no_such_plugin_module", "ModuleNotFoundError: No module named 'no_such_plugin_module'"),
    ("plugins.broken_plugin", "RuntimeError: this plugin is broken on purpose"),
])
def test_plugin_that_does_not_import_is_a_config_error(module: str, needle: str) -> None:
    message = config_error(f"run.plugins=[{module}]")
    assert message.startswith(f"run.plugins: module {module!r}") and needle in message


# ---- item 5: GPU transports without GPUs ---------------------------------------------------------
def test_gpu_weight_sync_needs_gpus_in_the_config() -> None:
    for sync in ("cuda_ipc", "nccl"):
        message = config_error("rollout.backend=vllm", f"rollout.weight_sync={sync}")
        # rl_div.config.schema.gpu_problems names the transport and the GPU fields it needs
        assert f"rollout.weight_sync={sync}" in message and "train.num_gpus" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_gpus_asked_for_on_a_machine_without_cuda_fail_before_ray() -> None:
    cfg = load_config(None, ["rollout.backend=vllm", "rollout.weight_sync=cuda_ipc", "train.num_gpus=1",
                             "rollout.num_gpus_per_worker=1"])
    with pytest.raises(ConfigError, match=r"share one GPU\) = 1 GPUs, but this machine has 0 CUDA GPU"):
        check_inputs(cfg)
    check_inputs(load_config(None, ["train.num_gpus=1", "cluster.address=auto"]))  # a cluster's GPUs: Ray's job


def _one_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with one CUDA GPU as check_devices sees it (torch.cuda's documented answers)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_colocated_cuda_ipc_fits_one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """weight_sync=cuda_ipc puts learner and engine in one GPU bundle (plan_placement), so one GPU holds
    the run; the check once added the two and refused every one-GPU colocated run."""
    _one_cuda_device(monkeypatch)
    check_inputs(load_config(None, ["rollout.backend=vllm", "rollout.weight_sync=cuda_ipc", "train.num_gpus=1",
                                    "rollout.num_gpus_per_worker=1"]))


def test_every_learner_rank_counts_its_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two FSDP2 ranks with a GPU each need two GPUs (plan_placement gives each rank its own bundle);
    the check once counted train.num_gpus once."""
    _one_cuda_device(monkeypatch)
    cfg = load_config(None, ["train.strategy=fsdp2", "train.num_learners=2", "train.num_gpus=1"])
    with pytest.raises(ConfigError, match=r"train.num_learners .* = 2 GPUs, but this machine has 1 CUDA GPU"):
        check_inputs(cfg)


# ---- item 6: prompt template placeholders --------------------------------------------------------
@pytest.mark.parametrize(("template", "needle"), [
    ("Q: {prompt} {question}", "unknown placeholder {question}"),
    ("{}", "unknown placeholder {}"),
    ("{prompt", "not a valid format string"),
    ("{prompt.upper}", "unknown placeholder {prompt.upper}"),
])
def test_prompt_template_may_only_use_prompt(template: str, needle: str) -> None:
    message = config_error(f'data.prompt_template="{template}"')
    assert "data.prompt_template" in message and needle in message


def test_valid_templates_load() -> None:
    # a conversion or format spec ({prompt!s:>3}) is refused since issue 29: tests/test_small_refusals.py
    for template in ("{prompt}", "Q: {prompt}\\nA:", "{{literal}} {prompt}"):
        load_config(None, [f'data.prompt_template="{template}"'])


# ---- item 7: *_params against the function's keywords --------------------------------------------
@pytest.mark.parametrize(("overrides", "needle"), [
    (["algo=arm", "algo.advantage_params={alpah: 2.0}"],
     "algo.advantage_params: unknown advantage 'arm' parameter 'alpah'; did you mean 'alpha'?"),
    (["algo.token_weight=steer", "algo.token_weight_params={lambda_mn: 0.5}"],
     "algo.token_weight_params: unknown token weight 'steer' parameter 'lambda_mn'; did you mean 'lambda_min'?"),
    (["algo.loss_params={clip_hi: 0.3}"], "algo.loss_params: unknown loss 'ppo_clip' parameter 'clip_hi'"),
    (["reward.rewards=[{name: novelty, params: {txt: answer}}]"],
     "reward.rewards[0].params: unknown reward 'novelty' parameter 'txt'; did you mean 'text'?"),
    (["reward.rewards=[{name: format, params: {completion: x}}]"], "unknown reward 'format' parameter 'completion'"),
    (["run.plugins=[plugins.my_algos]", "algo.advantage=test_raw_reward", "algo.advantage_params={ofset: 1}"],
     "unknown advantage 'test_raw_reward' parameter 'ofset'; did you mean 'offset'?"),
    (["run.plugins=[plugins.my_rewards]", "reward.rewards=[{name: test_length, params: {per_chr: 2}}]"],
     "unknown reward 'test_length' parameter 'per_chr'; did you mean 'per_char'?"),
    (["algo=grpo", "algo.advantage_params={x: 1}"], "(valid: eps, scale, unbiased_std)"),
])
def test_unknown_params_fail_at_config_load(overrides: list[str], needle: str) -> None:
    assert needle in config_error(*overrides)


def test_known_params_and_kwargs_functions_load() -> None:
    cfg = load_config(None, ["algo=arm", "algo.advantage_params={alpha: 2.0}",
                             "reward.rewards=[{name: task_verifier, params: {anything: 1}}]"])
    assert cfg.algo.advantage_params == {"alpha": 2.0}
    load_config(None, ["run.plugins=[plugins.my_algos]", "algo.loss=test_nan_loss", "algo.loss_params={z: 1}"])


def test_accepted_keywords_by_hand() -> None:
    from rl_div.config.checks import accepted_keywords

    def sample(completion: str, record: object, scale: float = 1.0, *, power: int, shift: float = 0.0) -> float:
        return 0.0

    def anything(inputs: object, **params: object) -> None:
        return None

    assert accepted_keywords(sample, 2) == (["scale", "power", "shift"], ["power"])
    assert accepted_keywords(anything, 1) is None
    assert "needs parameter(s) power" in _check_required(sample)


def _check_required(fn: object) -> str:
    from rl_div.config.checks import check_params

    with pytest.raises(ConfigError) as info:
        check_params("reward.rewards[0].params", "reward 'x'", fn, {}, 2)  # type: ignore[arg-type]
    return str(info.value)


# ---- items 2 and 3: missing model and data paths -------------------------------------------------
def test_missing_model_path_is_a_config_error(tmp_path: Path) -> None:
    for value, needle in [(str(tmp_path / "no_model"), "does not exist"),
                          (str(tmp_path), "is not a model directory (no config.json)"),
                          ("./relative/model", "does not exist"),
                          ("no-such-org/no-such-model-xyz", "nor in the HF cache")]:
        with pytest.raises(ConfigError, match="model.path") as info:
            check_inputs(load_config(None, [f"model.path={value}"]))
        assert needle in str(info.value)


def test_missing_data_paths_are_config_errors(tmp_path: Path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text('{"question": "q", "answer": "1"}\n')
    for overrides, needle in [
        ([f"data.path={tmp_path / 'nope.jsonl'}"], "data.path: "),
        ([f"data.path={good}", f"data.eval_path={tmp_path / 'nope.jsonl'}"], "data.eval_path: "),
        ([f"data.path={tmp_path}"], "is a directory"),
    ]:
        with pytest.raises(ConfigError) as info:
            check_inputs(load_config(None, ["data.source=jsonl", *overrides]))
        assert needle in str(info.value)
    assert "needs data.path" in config_error("data.source=parquet")
    check_inputs(load_config(None, ["data.source=jsonl", f"data.path={good}"]))


# ---- the CLI: exit 2, one line, before any output -------------------------------------------------
CLI_CASES = {
    "1-yaml": ["data.prompt_template={prompt} a="],
    "2-model": ["model.path=/nonexistent/rl_div_model"],
    "3-data": ["data.source=jsonl", "data.path=/nonexistent/prompts.jsonl"],
    "4-plugin": ["run.plugins=[no_such_plugin_module]"],
    "5-transport": ["rollout.backend=vllm", "rollout.weight_sync=nccl"],
    "6-template": ['data.prompt_template="{prompt} {question}"'],
    "7-params": ["algo=arm", "algo.advantage_params={alpah: 2.0}"],
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_rejects_bad_input_with_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    out = tmp_path / "run"
    # cwd is not the repository: `python -m` puts the cwd first on sys.path, PYTHONPATH picks the code
    done = subprocess.run([sys.executable, "-m", "rl_div.cli", "train", str(REPO / "configs/demo.yaml"),
                           *CLI_CASES[case], f"run.output_dir={out}"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rl-div: "), done.stderr
    assert not out.exists()  # nothing started
