"""The rollout-backend registry: a backend declared in one plugin module (tests/plugins/my_backend.py)
is accepted by the config, its transports and GPU rule are enforced before any work, the cluster
check applies its rule, and the worker it names is built with its arguments, in this process and
inside a Ray actor (tests/test_placement.py, on its local Ray). Expected values are written out by
hand from the plugin's declaration."""

from __future__ import annotations

import pytest

from rl_div.cluster.actors import rollout_worker_args
from rl_div.cluster.placement import cluster_problems, plan_placement
from rl_div.config import Config, ConfigError, RolloutConfig, RunConfig, TrainConfig, load_config
from rl_div.config.checks import check_inputs
from rl_div.config.rollout_backends import ROLLOUT_BACKENDS, RolloutBackend, register_rollout_backend
from rl_div.data import PromptRecord
from rl_div.rollout import SamplingSpec, make_rollout_worker

ECHO = ["run.plugins=[plugins.my_backend]", "rollout.backend=test_echo"]


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    return str(info.value)


def test_builtin_declarations() -> None:
    assert {"hf", "vllm"} <= set(ROLLOUT_BACKENDS.names())
    assert ROLLOUT_BACKENDS["hf"].transports == ("object_store",)
    assert ROLLOUT_BACKENDS["vllm"].transports == ("object_store", "cuda_ipc", "nccl")
    assert ROLLOUT_BACKENDS["hf"].worker == "rl_div.rollout.hf:HFRolloutWorker"


def test_unknown_backend_names_the_field_and_the_closest_name() -> None:
    message = config_error("rollout.backend=vlm")
    assert message.startswith("rollout.backend: unknown rollout backend 'vlm'; did you mean 'vllm'?")


def test_a_plugin_backend_is_accepted_by_the_config() -> None:
    assert load_config(None, ECHO).rollout.backend == "test_echo"


def test_the_plugin_backends_transports_are_enforced() -> None:
    # cuda_ipc passes the transport's own GPU layout rule, but test_echo does not take it
    message = config_error(*ECHO, "rollout.weight_sync=cuda_ipc", "train.num_gpus=1", "rollout.num_gpus_per_worker=1")
    assert message == ("rollout.weight_sync: the test_echo backend takes object_store, nccl only, not 'cuda_ipc' "
                       "(backends that take it: vllm)")
    # hf takes the object store only; the plugin is imported, so it is among those that take nccl
    message = config_error("run.plugins=[plugins.my_backend]", "rollout.weight_sync=nccl", "train.num_gpus=1",
                           "rollout.num_gpus_per_worker=1")
    assert message == ("rollout.weight_sync: the hf backend takes object_store only, not 'nccl' "
                       "(backends that take it: test_echo, vllm)")


def test_the_plugin_backends_gpu_rule_is_enforced() -> None:
    # nccl is a transport test_echo takes; its layout rule needs rollout GPUs, which test_echo refuses
    message = config_error(*ECHO, "rollout.weight_sync=nccl", "train.num_gpus=1", "rollout.num_gpus_per_worker=1")
    assert message == "rollout.num_gpus_per_worker=1: the echo backend runs on CPU (use 0)"


def test_a_config_built_in_python_is_checked_at_the_start_of_a_run() -> None:
    cfg = Config(run=RunConfig(plugins=["plugins.my_backend"]),
                 rollout=RolloutConfig(backend="test_echo", num_gpus_per_worker=1), train=TrainConfig(num_gpus=0))
    with pytest.raises(ConfigError, match=r"^rollout.num_gpus_per_worker=1: the echo backend runs on CPU \(use 0\)$"):
        check_inputs(cfg)
    with pytest.raises(ConfigError, match="^rollout.backend: unknown rollout backend 'nope'"):
        check_inputs(Config(rollout=RolloutConfig(backend="nope")))


def test_the_cluster_check_applies_the_backends_rule() -> None:
    cfg = load_config(None, ECHO)
    plan = plan_placement(cfg)
    assert cluster_problems(plan, cfg, {"CPU": 4.0}, [{"CPU": 4.0}]) == [
        "the echo backend needs a cluster with an 'echo' resource"]
    assert cluster_problems(plan, cfg, {"CPU": 4.0, "echo": 1.0}, [{"CPU": 4.0, "echo": 1.0}]) == []


def test_worker_args_are_the_common_ones_and_the_declarations() -> None:
    cfg = load_config(None, [*ECHO, "run.seed=3", "rollout.max_new_tokens=9", "data.prompt_template=Q {prompt}"])
    assert rollout_worker_args(cfg, "some/model", 0.0) == {
        "model_path": "some/model", "dtype": "float32", "trust_remote_code": False, "use_chat_template": None,
        "prompt_template": "Q {prompt}", "answer_ids": (3, 9)}
    hf = load_config(None, ["rollout.max_batch_rows=7"])
    on_cpu, on_gpu = rollout_worker_args(hf, "m", 0.0), rollout_worker_args(hf, "m", 1.0)
    assert (on_cpu["device"], on_gpu["device"], on_cpu["max_batch_rows"]) == ("cpu", "cuda", 7)
    vllm = load_config(None, ["rollout.backend=vllm", "run.seed=5", "rollout.gpu_memory_utilization=0.3",
                              "rollout.weight_sync_chunk_mb=8", "rollout.weight_sync_timeout_s=30",
                              "rollout.sleep_level=2"])
    assert rollout_worker_args(vllm, "m", 0.0) == {  # what tests/vllm_lane's workers are built with
        "model_path": "m", "dtype": "float32", "trust_remote_code": False, "use_chat_template": None,
        "prompt_template": "{prompt}", "tensor_parallel_size": 1, "gpu_memory_utilization": 0.3, "seed": 5,
        "weight_sync": "object_store", "sync_chunk_mb": 8.0, "sync_timeout_s": 30.0, "sleep_level": 2,
        "seed_mode": "per_row", "lora": None}


def test_make_rollout_worker_builds_the_plugins_worker() -> None:
    cfg = load_config(None, [*ECHO, "run.seed=3", "rollout.max_new_tokens=9"])
    worker = make_rollout_worker("test_echo", **rollout_worker_args(cfg, "unused", 0.0))
    assert type(worker).__name__ == "EchoRolloutWorker" and worker.model_path == "unused"
    batch = worker.generate([PromptRecord("a", "1"), PromptRecord("b", "2")], SamplingSpec(n=2))
    # prompt ids PROMPT_IDS, response ids (run.seed, rollout.max_new_tokens) on every row
    assert batch.prompt_ids.tolist() == [[5, 6]] * 4 and batch.response_ids.tolist() == [[3, 9]] * 4
    assert batch.group_index.tolist() == [0, 0, 1, 1]


def test_registering_needs_module_colon_class_and_overwrite_for_a_taken_name() -> None:
    with pytest.raises(ValueError, match="worker must be 'module:Class'"):
        register_rollout_backend(RolloutBackend("test_bad", "plugins.my_backend.EchoRolloutWorker"))
    with pytest.raises(ValueError, match="'hf' is already registered"):
        register_rollout_backend(RolloutBackend("hf", "plugins.my_backend:EchoRolloutWorker"))
