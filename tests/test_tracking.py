"""Tracker hygiene: TensorBoard tags and config (read back with tensorboard's own event reader),
W&B project/group/tags and a run id that --resume keeps (W&B itself in offline mode when installed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rl_div.config import Config, TrackingConfig
from rl_div.run.tracking import Tracker, wandb_init_kwargs

CONFIG = Config().model_dump(mode="json")


def test_tensorboard_tags_config_text_and_hparams(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = Tracker(tmp_path, TrackingConfig(tensorboard=True, progress=False), "demo", CONFIG, 2)
    tracker.log(1, {"policy/entropy": 1.5})
    tracker.log(1, {"pass@1": 0.25, "eval/unscored": 0.0, "eval/reward_errors": 1.0}, kind="eval")
    tracker.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"policy/entropy", "eval/pass@1", "eval/unscored", "eval/reward_errors"}
    assert acc.Scalars("eval/pass@1")[0].value == 0.25 and acc.Scalars("eval/pass@1")[0].step == 1
    assert "config/text_summary" in tags["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "advantage: grpo" in text and "group_size: 8" in text
    # hparams: read the raw events (EventAccumulator keeps no value-less summaries)
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = [e for f in (tmp_path / "tensorboard").iterdir() for e in EventFileLoader(str(f)).Load()]
    meta = {v.tag: v.metadata.plugin_data.content for e in events if e.HasField("summary") for v in e.summary.value}
    assert "_hparams_/experiment" in meta
    info = plugin_data_pb2.HParamsPluginData.FromString(meta["_hparams_/session_start_info"]).session_start_info
    assert info.hparams["rollout.group_size"].number_value == 8
    assert info.hparams["algo.advantage"].string_value == "grpo"


def test_wandb_arguments_and_a_stable_id(tmp_path: Path) -> None:
    cfg = TrackingConfig(wandb=True, wandb_project="proj", wandb_group="cmp1", wandb_tags=["mine"])
    config = {**CONFIG, "algo": {**CONFIG["algo"], "advantage": "arm", "token_weight": "steer"}}
    (tmp_path / "a").mkdir()
    first = wandb_init_kwargs(tmp_path / "a", cfg, "demo_arm", config)
    again = wandb_init_kwargs(tmp_path / "a", cfg, "demo_arm", config)  # what --resume does
    (tmp_path / "b").mkdir()
    other = wandb_init_kwargs(tmp_path / "b", cfg, "demo_arm", config)
    assert first["id"] == again["id"] != other["id"] and first["resume"] == "allow"
    assert (first["project"], first["group"], first["name"]) == ("proj", "cmp1", "demo_arm")
    assert first["tags"] == ["demo_arm", "arm", "steer", "ppo_clip", "mine"]


def test_compare_puts_one_comparison_in_one_wandb_group(tmp_path: Path) -> None:
    from rl_div.experiments.compare import plan

    root = Path(__file__).resolve().parent.parent / "configs"
    runs = plan([str(root / "demo_grpo.yaml"), str(root / "demo_arm.yaml")], [0, 1], tmp_path / "cmp7", [])
    assert {r.config.tracking.wandb_group for r in runs} == {"cmp7"}


def test_wandb_offline_resume_continues_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = TrackingConfig(tensorboard=False, wandb=True, progress=False, wandb_group="g")
    ids = []
    for step in (1, 2):  # a run, then its --resume
        tracker = Tracker(tmp_path, cfg, "demo", CONFIG, 2)
        ids.append(wandb.run.id)
        assert wandb.run.group == "g" and "demo" in wandb.run.tags
        tracker.log(step, {"pass@1": 0.5}, kind="eval")
        tracker.close()
    assert ids[0] == ids[1] == (tmp_path / "wandb_run_id").read_text().strip()
    runs = [p.name for p in (tmp_path / "wandb").iterdir() if p.name.startswith("offline-run-")]
    assert len(runs) == 2 and all(name.endswith(ids[0]) for name in runs)
    assert os.environ["WANDB_MODE"] == "offline"
