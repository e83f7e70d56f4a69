"""Rollout backends by name: each declares, in one place, everything the rest of the run asks of it.

A :class:`RolloutBackend` names its worker class (``"module:Class"``, imported only inside the
rollout actor, so declaring ``vllm`` needs no vLLM here), the weight-sync transports it takes, its
GPU rules (checked when the config loads, before any work: rl_div.config.checks), its rule against
the cluster's resources (rl_div.cluster.placement) and the keyword arguments its worker takes beyond
the ones every worker takes (rl_div.cluster.actors); rl_div.rollout.backends builds the worker.
Nothing outside this module compares backend names.

The declarations live in config/ because the config check reads them and config/ may not import
rollout/ (the learner imports config/, and must never import rollout/). They import nothing heavy.

The built-ins are declared at the bottom. A backend of your own (an SGLang engine, a remote
OpenAI-compatible server) is one module listed in ``run.plugins``: its worker class and one
:func:`register_rollout_backend` call. Every process imports the plugins before it reads this
registry, so the name then works in the config check and inside the rollout actor.

Every worker's constructor takes ``model_path`` and the keywords ``dtype``, ``trust_remote_code``,
``use_chat_template`` and ``prompt_template``, plus those of its ``worker_args``; it implements
rl_div.rollout.base.RolloutWorker.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rl_div.registry import Registry

if TYPE_CHECKING:
    from rl_div.config.schema import Config
    from rl_div.config.sections import RolloutConfig, TrainConfig
    from rl_div.rollout.base import RolloutWorker

GpuRule = Callable[["RolloutConfig", "TrainConfig"], list[str]]
ClusterRule = Callable[["RolloutConfig", Mapping[str, float]], list[str]]
WorkerArgs = Callable[["Config", float], dict[str, Any]]


def no_gpu_problems(rollout: RolloutConfig, train: TrainConfig) -> list[str]:
    """A backend without GPU rules of its own."""
    return []


def no_cluster_problems(rollout: RolloutConfig, total: Mapping[str, float]) -> list[str]:
    """A backend that runs wherever its reservation puts it."""
    return []


def no_worker_args(cfg: Config, num_gpus: float) -> dict[str, Any]:
    """A worker that takes only the keywords every worker takes."""
    return {}


@dataclass(frozen=True)
class RolloutBackend:
    """One rollout backend's declaration; calling it builds its worker (inside the actor process).

    gpu_problems(rollout, train): what this backend cannot run of the config's GPU layout, one
    message per problem naming the fields (empty: fine). cluster_problems(rollout, total): the same
    against the cluster's total resources (ray.cluster_resources()). worker_args(cfg, num_gpus): the
    worker's backend-specific keywords, num_gpus being what the actor reserved (0: run on CPU).
    """

    name: str
    worker: str  # "package.module:ClassName", imported lazily by __call__
    transports: tuple[str, ...] = ("object_store",)  # weight-sync transports (rl_div.sync.payloads.TRANSPORTS)
    gpu_problems: GpuRule = no_gpu_problems
    cluster_problems: ClusterRule = no_cluster_problems
    worker_args: WorkerArgs = no_worker_args
    description: str = ""
    lora_adapters: bool = False  # takes train.lora's adapter tensors alone (its worker serves the adapters)
    lora_auto: str = "adapter"  # what train.lora.sync='auto' ships where lora_adapters: 'adapter' or 'merged'
    lora_max_rank: int | None = None  # the largest train.lora.rank its adapter serving takes (None: any)
    # its worker keeps the policy as a torch module in ``.model`` (a transformers causal LM), so rl-div eval
    # computes the samples' log-probs and entropies there (rl_div.learner.forward) and starts no learner
    holds_policy_module: bool = False
    colocated: bool = False  # rollout.colocate: the learner samples with its own module (rl_div.cluster.colocated)
    colocate_hint: str = ""  # without one: what to use instead (the refusal's second half)

    def __call__(self, **kwargs: Any) -> RolloutWorker:
        """Import the worker class and build it from the keywords."""
        module, _, cls = self.worker.partition(":")
        return getattr(importlib.import_module(module), cls)(**kwargs)


ROLLOUT_BACKENDS: Registry[RolloutBackend] = Registry("rollout backend")


def register_rollout_backend(backend: RolloutBackend, *, overwrite: bool = False) -> RolloutBackend:
    """Add a backend under its own name (re-registering a name needs overwrite)."""
    if ":" not in backend.worker:
        raise ValueError(f"rollout backend {backend.name!r}: worker must be 'module:Class', got {backend.worker!r}")
    return ROLLOUT_BACKENDS.register(backend.name, overwrite=overwrite)(backend)


def lora_sync_mode(cfg: Config) -> str:
    """What weight sync ships under cfg.train.lora: 'adapter' or 'merged' ('auto' resolved by the
    rollout backend's declaration: lora_auto where it takes adapters, else merged)."""
    mode = cfg.train.lora.sync
    if mode == "auto":
        backend = ROLLOUT_BACKENDS[cfg.rollout.backend]
        return "adapter" if backend.lora_adapters and backend.lora_auto == "adapter" else "merged"
    return mode


def backends_taking(transport: str) -> list[str]:
    """Names of the registered backends that take a weight-sync transport."""
    return [name for name in ROLLOUT_BACKENDS.names() if transport in ROLLOUT_BACKENDS[name].transports]


# ---- hf: transformers generate on a copy of the policy ---------------------------------------------
def hf_gpu_problems(rollout: RolloutConfig, train: TrainConfig) -> list[str]:
    gpus = rollout.num_gpus_per_worker
    if gpus > 1:
        return [f"rollout.num_gpus_per_worker={gpus:g}: an hf rollout worker uses one device (use 0 or 1)"]
    return []


def hf_worker_args(cfg: Config, num_gpus: float) -> dict[str, Any]:
    # on the device the config reserved for it, never an unreserved GPU
    # with adapter sync ('auto' resolves to it here) the worker wraps its copy as the learner does, and
    # takes adapter tensors only
    lora = cfg.train.lora
    spec = lora.spec_fields() if lora.enabled and lora.sync != "merged" else None
    return {"max_batch_rows": cfg.rollout.max_batch_rows, "device": "cuda" if num_gpus > 0 else "cpu", "lora": spec}


HF = register_rollout_backend(RolloutBackend(
    "hf", "rl_div.rollout.hf:HFRolloutWorker", transports=("object_store",), gpu_problems=hf_gpu_problems,
    worker_args=hf_worker_args, description="transformers generate; one device per worker", lora_adapters=True,
    holds_policy_module=True, colocated=True))


# ---- vllm: an offline vllm.LLM engine per worker ---------------------------------------------------
def vllm_gpu_problems(rollout: RolloutConfig, train: TrainConfig) -> list[str]:
    tp, gpus = rollout.tensor_parallel_size, rollout.num_gpus_per_worker
    if (tp > 1 or gpus > 1) and gpus != tp:
        return [f"rollout.tensor_parallel_size={tp} needs rollout.num_gpus_per_worker={tp} (one GPU per "
                f"tensor-parallel rank), got {gpus:g}"]
    return []


def vllm_cluster_problems(rollout: RolloutConfig, total: Mapping[str, float]) -> list[str]:
    if rollout.num_gpus_per_worker == 0 and total.get("GPU", 0.0) > 0:
        return ["rollout.num_gpus_per_worker=0 on a cluster with GPUs: every vLLM engine would start on GPU 0 of "
                "its node without a reservation; set it to rollout.tensor_parallel_size"]
    return []


def vllm_worker_args(cfg: Config, num_gpus: float) -> dict[str, Any]:
    r, lora = cfg.rollout, cfg.train.lora
    # adapter sync: the engine serves the adapters through vLLM's LoRA support (rl_div.rollout.vllm_lora)
    spec = lora.spec_fields() if lora.enabled and lora_sync_mode(cfg) == "adapter" else None
    return {"tensor_parallel_size": r.tensor_parallel_size, "gpu_memory_utilization": r.gpu_memory_utilization,
            "seed": cfg.run.seed, "weight_sync": r.weight_sync, "sync_chunk_mb": r.weight_sync_chunk_mb,
            "sync_timeout_s": r.weight_sync_timeout_s, "sleep_level": r.sleep_level,
            "seed_mode": r.seed_mode, "lora": spec}


VLLM = register_rollout_backend(RolloutBackend(
    "vllm", "rl_div.rollout.vllm:VLLMRolloutWorker", transports=("object_store", "cuda_ipc", "nccl"),
    gpu_problems=vllm_gpu_problems, cluster_problems=vllm_cluster_problems, worker_args=vllm_worker_args,
    description="a vLLM engine; weights through the worker extension (docs/vllm.md)",
    colocate_hint="vLLM's colocated form is rollout.weight_sync=cuda_ipc with rollout.num_gpus_per_worker=1 and "
    "train.num_gpus=1 (learner and engine share one GPU, the engine sleeps while the learner trains; docs/vllm.md)",
    # vLLM's own LoRA serving (enable_lora, LoRARequest) takes adapters; 'auto' stays merged, the sync
    # every vLLM build runs as full fine-tuning does. 512: vLLM's largest max_lora_rank.
    lora_adapters=True, lora_auto="merged", lora_max_rank=512))
