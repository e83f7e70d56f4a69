"""Colocated vLLM (cuda_ipc): the engine finishes starting before the learner starts; elsewhere both
start together. The actor starters are replaced by recorders (the colocated case needs a GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import run_config

import rl_div.train.startup as startup


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def learner(self, cfg: Any, model_path: str, placement: Any) -> str:
        self.events.append("learner starts")
        return "learner"

    def pipeline(self, recorder: Recorder) -> type:
        class Pipeline:
            def __init__(self, cfg: Any, model_path: str, placement: Any, learner: Any, counters: Any) -> None:
                recorder.events.append(f"engines start (learner={learner})")
                self.learner = learner

            def actors(self) -> dict[str, Any]:
                return {"rollout worker 0": object()}

        return Pipeline

    def wait(self, actors: dict[str, Any], timeout_s: float) -> None:
        self.events.append(f"wait for {', '.join(actors)}")


@pytest.mark.parametrize(("overrides", "order"), [
    (["rollout.backend=vllm", "rollout.weight_sync=cuda_ipc", "train.num_gpus=1", "rollout.num_gpus_per_worker=1"],
     ["engines start (learner=None)", "wait for rollout worker 0", "learner starts"]),
    (["rollout.backend=vllm", "rollout.weight_sync=nccl", "train.num_gpus=1", "rollout.num_gpus_per_worker=1"],
     ["learner starts", "engines start (learner=learner)"]),
    ([], ["learner starts", "engines start (learner=learner)"]),
])
def test_colocated_engine_starts_before_the_learner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    overrides: list[str], order: list[str]) -> None:
    rec = Recorder()
    monkeypatch.setattr(startup, "start_learner", rec.learner)
    monkeypatch.setattr(startup, "RolloutPipeline", rec.pipeline(rec))
    monkeypatch.setattr(startup, "wait_started", rec.wait)
    cfg = run_config("m", tmp_path, *overrides)
    learner, pipeline = startup.start_policy_actors(cfg, "m", None, {})
    assert rec.events == order
    assert learner == "learner" and pipeline.learner == "learner"
