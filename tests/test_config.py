"""Config: YAML + overrides, validation errors that name the field and suggest the closest name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rl_div.config import ALGO_PRESETS, Config, ConfigError, config_help, load_config, save_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {"train": {"lr": 0.5}}), ["train.steps=3", "rollout.stop=[x, y]"])
    assert cfg.train.lr == 0.5 and cfg.train.steps == 3
    assert cfg.rollout.stop == ["x", "y"]
    assert cfg.algo.advantage == "grpo" and cfg.algo.loss == "ppo_clip"


def test_algo_preset_shorthand(tmp_path: Path) -> None:
    cfg = load_config(None, ["algo=steer"])
    assert (cfg.algo.advantage, cfg.algo.token_weight) == ("grpo", "steer")
    cfg = load_config(None, ["algo=arm", "algo.advantage_params={alpha: 0.5}"])
    assert cfg.algo.advantage == "arm" and cfg.algo.advantage_params == {"alpha": 0.5}
    assert set(ALGO_PRESETS) >= {"grpo", "arm", "steer", "dr_grpo"}


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.lrr=1"], "did you mean 'lr'"),
        (["trian.lr=1"], "did you mean 'train'"),
        (["train.lr=-1"], "train.lr"),
        (["train.steps=abc"], "train.steps"),
        (["algo.advantage=grp"], "did you mean 'grpo'"),
        (["algo.token_weight=steerr"], "did you mean 'steer'"),
        (["algo=arn"], "did you mean 'arm'"),
        (["reward.rewards=[{name: math_verfy}]"], "did you mean 'math_verify'"),
        (["rollout.backend=vlm"], "rollout.backend"),
        (["train.mini_batch_size=100000"], "exceeds"),
        (["noequals"], "key=value"),
        (["cluster.learner_resources={GPU: 1}"], "use train.num_cpus/num_gpus"),
        (["cluster.rollout_resources={node_a: 0}"], "cluster.rollout_resources.node_a must be > 0"),
    ],
)
def test_bad_configs_fail_early_with_a_named_field(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, overrides)
    assert needle in str(info.value)


def test_unknown_yaml_key_is_reported_with_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, {"rollout": {"group_sise": 4}}))
    assert "rollout.group_sise" in str(info.value) and "group_size" in str(info.value)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["algo=arm", "train.steps=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


def test_every_field_has_help() -> None:
    def walk(model: type) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no help text"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(Config)
    assert any("train.lr" in line for line in config_help())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path: Path) -> None:
    load_config(path)


def test_config_differences_name_the_filled_keys_not_the_empty_mapping() -> None:
    """A report listed 'algo.advantage_params: {} -> None' beside the real change 'alpha: None -> 1.0'."""
    from rl_div.config.tree import config_differences

    base = {"algo": {"advantage": "grpo", "advantage_params": {}}, "run": {"seed": 0}}
    arm = {"algo": {"advantage": "arm", "advantage_params": {"alpha": 1.0, "extra": {"deep": 2}}}, "run": {"seed": 0}}
    assert config_differences(base, arm, ()) == ["algo.advantage", "algo.advantage_params.alpha",
                                                 "algo.advantage_params.extra.deep"]
    assert config_differences({"a": {}}, {"a": 3}, ()) == ["a"]  # a mapping replaced by a value still shows


def test_float16_is_refused_in_one_line_naming_bfloat16() -> None:
    """The learner has no loss scaling: fp16 autocast gradients would underflow, so fp16 is refused at load."""
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.dtype=float16"])
    message = str(info.value)
    assert "\n" not in message and "model.dtype" in message and "bfloat16" in message
    assert load_config(None, ["model.dtype=bfloat16"]).model.dtype == "bfloat16"
