"""rl-div bench --vs-trl: the settings it gives rl_div are valid config and are the advertised ones
(the timings themselves are reported by the bench, never asserted)."""

from __future__ import annotations

from pathlib import Path

from rl_div.bench.vs_trl import GROUP, NEW_TOKENS, PROMPTS, REPO, _overrides
from rl_div.config import load_config


def test_the_rl_div_side_runs_the_advertised_work(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml", _overrides("some/model", 7, 1e-3, str(tmp_path)))
    assert (cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_new_tokens) == (16, 8, 4)
    assert (PROMPTS, GROUP, NEW_TOKENS) == (16, 8, 4)
    assert cfg.train.micro_batch_size >= PROMPTS * GROUP  # one forward over the batch, as TRL's side
    assert cfg.train.ppo_epochs == 1 and cfg.train.warmup_steps == 0 and cfg.model.dtype == "float32"
    assert cfg.algo.advantage == "grpo" and cfg.algo.loss == "ppo_clip" and cfg.algo.token_weight == "none"
    assert cfg.algo.loss_params.get("agg", "token-mean") == "token-mean"
    assert cfg.algo.loss_params.get("kl_coef", 0.0) == 0.0 and not cfg.train.use_ref_model
    assert cfg.run.torch_threads == 1 and cfg.eval.every == 0 and not cfg.eval.at_start


def test_the_method_bench_runs_each_method_on_the_same_work(tmp_path: Path) -> None:
    from rl_div.bench.methods import METHOD_CONFIGS

    for method, config in METHOD_CONFIGS.items():
        overrides = [o for o in _overrides("some/model", 7, 1e-8, str(tmp_path)) if o != "algo=grpo"]
        cfg = load_config(REPO / "configs" / config, overrides)
        assert (cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_new_tokens) == (16, 8, 4)
        assert cfg.train.micro_batch_size >= PROMPTS * GROUP and cfg.run.torch_threads == 1
        assert method in (cfg.algo.advantage, cfg.algo.token_weight, cfg.guard.controller.mode,
                          *[r.name for r in cfg.reward.rewards])


def test_both_vs_trl_settings_and_the_colocated_mode_are_valid_config(tmp_path: Path) -> None:
    """The two settings of issue 27 (one micro-batch of 128 rows, two of 64) and rl_div's colocated mode."""
    from rl_div.bench.vs_trl import SIDES

    for micro_batches in (1, 2):
        rows = PROMPTS * GROUP // micro_batches
        overrides = _overrides("some/model", 7, 1e-3, str(tmp_path), rows)
        cfg = load_config(REPO / "configs" / "demo.yaml", [*overrides, "rollout.colocate=true"])
        assert cfg.train.micro_batch_size == rows and cfg.rollout.colocate and cfg.train.mini_batch_size is None
    assert SIDES["colocated"] == {"colocate": True} and SIDES["trl"] is None
