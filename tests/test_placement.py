"""Placement of the learner and rollout actors: the config rules of each weight-sync transport,
the plan checked against the cluster, and on a real local Ray: actors inside the run's placement
group, fast failures naming what is missing, and the start-up timeout."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from helpers import placement_config

from rl_div.cli import main
from rl_div.cluster.actors import (
    PlacementError,
    StartupError,
    init_ray,
    start_learner,
    start_rollout_worker,
    wait_started,
)
from rl_div.cluster.placement import cluster_problems, plan_placement
from rl_div.config import ConfigError, load_config, save_config
from rl_div.data import PromptRecord
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy
from rl_div.rollout import SamplingSpec
from rl_div.sync.buckets import WeightSyncError
from rl_div.sync.push import push_weights
from rl_div.tasks import TASKS
from rl_div.train.loop import Trainer

VLLM_GPU = ["rollout.backend=vllm", "train.num_gpus=1", "rollout.num_gpus_per_worker=1"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.num_gpus=2"], "train.num_gpus=2: the learner is one process"),
    (["rollout.num_gpus_per_worker=2"], "an hf rollout worker uses one device"),
    (["rollout.backend=vllm", "rollout.tensor_parallel_size=2", "rollout.num_gpus_per_worker=1"],
     "tensor_parallel_size=2 needs rollout.num_gpus_per_worker=2"),
    ([*VLLM_GPU, "rollout.weight_sync=cuda_ipc", "rollout.num_workers=2"], "cuda_ipc puts the learner and one"),
    ([*VLLM_GPU, "rollout.weight_sync=cuda_ipc", "train.num_gpus=0"], "cuda_ipc puts the learner and one"),
    (["rollout.backend=vllm", "rollout.weight_sync=nccl", "train.num_gpus=1"], "nccl broadcasts from the learner"),
])
def test_impossible_gpu_layouts_are_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_transport_plans() -> None:
    ipc = plan_placement(load_config(None, [*VLLM_GPU, "rollout.weight_sync=cuda_ipc"]))
    assert ipc.bundles == [{"CPU": 2.0, "GPU": 1.0}]  # one bundle, one GPU shared by both actors
    assert ipc.learner.bundle == ipc.rollout[0].bundle == 0 and ipc.learner.num_gpus + ipc.rollout[0].num_gpus == 1
    nccl = plan_placement(load_config(None, [*VLLM_GPU, "rollout.weight_sync=nccl", "rollout.num_workers=2",
                                             "rollout.tensor_parallel_size=2", "rollout.num_gpus_per_worker=2"]))
    assert nccl.bundles == [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 2.0}, {"CPU": 1.0, "GPU": 2.0}]
    assert [s.bundle for s in nccl.rollout] == [1, 2]
    cpu = plan_placement(load_config(None, ["rollout.num_workers=2", "rollout.num_cpus_per_worker=0"]))
    assert cpu.bundles == [{"CPU": 1.0}] and [s.bundle for s in cpu.rollout] == [None, None]  # nothing to reserve
    colocated = plan_placement(load_config(None, ["rollout.colocate=true", "train.num_gpus=1"]))
    assert colocated.bundles == [{"CPU": 1.0, "GPU": 1.0}] and colocated.rollout == []  # the learner samples


def test_cluster_shortfalls_are_named() -> None:
    cfg = load_config(None, VLLM_GPU)
    one_gpu = {"CPU": 16.0, "GPU": 1.0}
    [problem] = cluster_problems(plan_placement(cfg), cfg, one_gpu, [one_gpu])
    assert "needs 2 GPU (the cluster has 1)" in problem and "learner: 1 CPU, 1 GPU" in problem
    two_nodes = [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}]
    assert cluster_problems(plan_placement(cfg), cfg, {"CPU": 2.0, "GPU": 2.0}, two_nodes) == []
    ipc = load_config(None, [*VLLM_GPU, "rollout.weight_sync=cuda_ipc"])
    [problem] = cluster_problems(plan_placement(ipc), ipc, {"CPU": 2.0, "GPU": 2.0}, two_nodes)
    assert "needs 2 CPU, 1 GPU on one node" in problem
    gpu_engines = load_config(None, ["rollout.backend=vllm"])
    [problem] = cluster_problems(plan_placement(gpu_engines), gpu_engines, one_gpu, [one_gpu])
    assert "num_gpus_per_worker=0 on a cluster with GPUs" in problem


# ---- on a real local Ray (2 CPUs, no GPU) ---------------------------------------------------------
@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    yield str(save_policy(make_tiny_llama(tok, seed=0), tok, tmp_path_factory.mktemp("m") / "tiny"))
    if ray.is_initialized():
        ray.shutdown()


def test_cpu_actors_run_inside_the_placement_group(tmp_path: Path, model_path: str) -> None:
    trainer = Trainer(placement_config(tmp_path, model_path))
    try:
        group = trainer.placement.group
        assert group is not None and group.bundle_specs == [{"CPU": 1.0}, {"CPU": 1.0}]

        def group_id(_: object) -> str:
            return ray.get_runtime_context().get_placement_group_id()

        ids = ray.get([a.__ray_call__.remote(group_id) for a in [*trainer.learner.actors, *trainer.pipeline.workers]])
        assert ids == [group.id.hex()] * 2
    finally:
        trainer.close()
    assert ray.util.placement_group_table(group)["state"] == "REMOVED"  # closing gives the resources back


@pytest.mark.parametrize(("overrides", "missing"), [
    (["train.num_cpus=64"], "needs 65 CPU (the cluster has 2)"),
    # GPUs asked for on a machine without CUDA are refused earlier (rl_div.config.checks); a custom
    # resource no node has is the placement check's
    (["cluster.learner_resources={node_x: 1}"], "needs 1 node_x (the cluster has 0)"),
])
def test_a_run_the_cluster_cannot_hold_fails_in_seconds(tmp_path: Path, model_path: str, overrides: list[str],
                                                       missing: str) -> None:
    start = time.monotonic()
    with pytest.raises(PlacementError, match=missing.replace("(", r"\(").replace(")", r"\)")):
        Trainer(placement_config(tmp_path, model_path, *overrides))
    assert time.monotonic() - start < 15
    # nothing was reserved or started
    assert all(g["state"] == "REMOVED" for g in ray.util.placement_group_table().values())


def test_cli_exits_2_with_the_placement_error(tmp_path: Path, model_path: str, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "too_big.yaml"
    save_config(placement_config(tmp_path, model_path, "train.num_cpus=64"), config)
    assert main(["train", str(config)]) == 2
    assert "cannot hold the run: the run needs 65 CPU (the cluster has 2)" in capsys.readouterr().err


def test_resources_held_by_another_job_time_out_with_what_is_free(tmp_path: Path, model_path: str) -> None:
    from ray.util.placement_group import placement_group, remove_placement_group

    init_ray(placement_config(tmp_path, model_path))
    other = placement_group([{"CPU": 1.5}])
    ray.get(other.ready(), timeout=30)
    try:
        with pytest.raises(PlacementError, match=r"not free within cluster.placement_timeout_s=1 s.*free now: 0.5 CPU"):
            Trainer(placement_config(tmp_path, model_path, "cluster.placement_timeout_s=1"))
    finally:
        remove_placement_group(other)


def test_startup_has_its_own_timeout_naming_the_stage(tmp_path: Path, model_path: str) -> None:
    with pytest.raises(StartupError, match=r"did not start within cluster.startup_timeout_s=0.01 s \(stage: actor "
                                           r"start-up"):
        Trainer(placement_config(tmp_path, model_path, "cluster.startup_timeout_s=0.01"))


def test_a_sync_past_its_timeout_names_the_stages_still_running(tmp_path: Path, model_path: str) -> None:
    cfg = placement_config(tmp_path, model_path)
    init_ray(cfg)
    learner, worker = start_learner(cfg, model_path), start_rollout_worker(cfg, model_path)
    try:
        wait_started({"learner": learner, "rollout worker 0": worker}, timeout_s=120)
        with pytest.raises(WeightSyncError, match=r"longer than 0 s; still running: .*rollout worker 0 \(loading\)"):
            push_weights(learner, [worker], "object_store", 3, timeout_s=1e-3)
        push_weights(learner, [worker], "object_store", 4, timeout_s=60)
        assert ray.get(worker.policy_version.remote()) == 4
    finally:
        for actor in (*learner.actors, worker):
            ray.kill(actor)


def test_a_plugin_rollout_backend_runs_inside_its_actor(tmp_path: Path, model_path: str) -> None:
    """The actor imports run.plugins, then builds tests/plugins/my_backend.py's worker by name."""
    cfg = placement_config(tmp_path, model_path, "run.plugins=[plugins.my_backend]", "rollout.backend=test_echo",
                           "run.seed=3", "rollout.max_new_tokens=9")
    init_ray(cfg)
    worker = start_rollout_worker(cfg, "unused")  # the echo worker loads no model
    try:
        assert ray.get(worker.set_weights.remote({}, 4), timeout=60) == 4
        batch = ray.get(worker.generate.remote([PromptRecord("a", "1")], SamplingSpec(n=3)), timeout=60)
        # prompt ids [5, 6], response ids (run.seed, rollout.max_new_tokens), the version pushed
        assert batch.prompt_ids.tolist() == [[5, 6]] * 3 and batch.response_ids.tolist() == [[3, 9]] * 3
        assert batch.behavior_version.tolist() == [4] * 3
        assert ray.get(worker.pid.remote()) != os.getpid()  # another process imported the plugin
    finally:
        ray.kill(worker)
