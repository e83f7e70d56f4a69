"""The run configuration: typed sections (schema), YAML with ``inherit`` and ``key=value`` overrides (load),
the run's config files (tree), and the checks that refuse a bad run before any work (checks).

``rl_div.config`` is the one import for all of it."""

from rl_div.config.guard import GuardConfig
from rl_div.config.load import (
    apply_override,
    build_config,
    config_help,
    deep_merge,
    load_config,
    parse_override,
    read_config_tree,
    save_config,
    yaml_error_text,
)
from rl_div.config.schema import (
    Config,
    ConfigError,
)
from rl_div.config.sections import (
    ALGO_PRESETS,
    AlgoConfig,
    BootstrapConfig,
    CheckpointConfig,
    ClusterConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RewardConfig,
    RewardItem,
    RolloutConfig,
    RunConfig,
    Section,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "ALGO_PRESETS",
    "AlgoConfig",
    "BootstrapConfig",
    "CheckpointConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GuardConfig",
    "ModelConfig",
    "RewardConfig",
    "RewardItem",
    "RolloutConfig",
    "RunConfig",
    "Section",
    "TrackingConfig",
    "TrainConfig",
    "apply_override",
    "build_config",
    "config_help",
    "deep_merge",
    "load_config",
    "parse_override",
    "read_config_tree",
    "save_config",
    "yaml_error_text",
]
