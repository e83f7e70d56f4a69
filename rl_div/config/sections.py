"""The config's sections, one typed pydantic model per stage (run, model, data, rollout, reward, algo,
train, eval, checkpoint, tracking, cluster, guard), every field with help text. rl_div.config.schema
joins them into Config with the rules that span sections."""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rl_div.config.colocate import ColocateFields
from rl_div.config.lora import LoraConfig
from rl_div.config.rollout_shaping import RolloutShapingFields
from rl_div.registry import unknown_name_message


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Section):
    name: str = Field("run", description="Run name; used in logs and the comparison table.")
    output_dir: str = Field("runs/run", description="Directory for metrics, config, checkpoints.")
    seed: int = Field(0, description="Seed for data order, sampling and any randomised token weights.")
    plugins: list[str] = Field(
        default_factory=list,
        description="Python modules imported in every process (driver and all Ray actors) before "
        "registries are read; a module that registers a new advantage/loss/reward makes its name "
        "usable everywhere.",
    )
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per actor.")


class ModelConfig(Section):
    path: str = Field(
        "bootstrap",
        description="Policy: a local directory or HF hub name, 'bootstrap' to pretrain (and cache) "
        "the tiny demo model on the built-in task's demonstrations, or 'tiny_qwen' for a random-initialised "
        "small Qwen2 with Qwen's real 151k tokenizer and chat template (built offline, cached; sized by "
        "bootstrap.hidden_size/num_heads/seed/cache_dir).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Compute dtype of the learner's forwards (autocast over float32 master weights) and "
        "the rollout engines' weights. float16 is refused: without loss scaling its gradients underflow.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off: safer).")
    use_chat_template: bool | None = Field(
        None, description="Wrap prompts in the tokenizer's chat template; None = when it has one."
    )


    @field_validator("dtype")
    @classmethod
    def refuse_float16(cls, dtype: str) -> str:
        if dtype == "float16":
            raise ValueError("float16 trains under fp16 autocast with no loss scaling (small gradients underflow "
                             "to 0); use model.dtype: bfloat16 (same memory, float32's range)")
        return dtype


class BootstrapConfig(Section):
    steps: int = Field(300, ge=1, description="Supervised steps on noisy demonstrations (not tiny_qwen).")
    seed: int = Field(0, description="Seed of the bootstrap run (cached per argument set).")
    hidden_size: int = Field(64, ge=8, description="Tiny model width.")
    num_heads: int = Field(
        4, ge=1, description="Attention heads (vLLM's CPU attention needs head size 32/64/...: use 1)."
    )
    cache_dir: str = Field(
        "~/.cache/rl_div/bootstrap", description="Where bootstrapped base models are cached."
    )


class DataConfig(Section):
    source: Literal["task", "jsonl", "parquet", "hf"] = Field(
        "task", description="'task' = a built-in synthetic task; else a file or HF dataset."
    )
    task: str = Field("prime_gap", description="Built-in task name (rl_div.tasks.TASKS).")
    path: str | None = Field(None, description="File path (jsonl/parquet) or HF dataset name.")
    eval_path: str | None = Field(
        None, description="Held-out prompts (same format as path); None = the first num_eval_prompts rows of "
        "path are held out of training (hf: eval_split, or the first rows when the dataset has one split)."
    )
    hf_config: str | None = Field(None, description="HF dataset config name (e.g. 'main' for gsm8k).")
    split: str = Field("train", description="HF split for training prompts.")
    eval_split: str = Field("test", description="HF split for evaluation prompts.")
    prompt_field: str = Field("question", description="Field holding the prompt text.")
    answer_field: str = Field("answer", description="Field holding the gold answer.")
    answer_regex: str | None = Field(
        None, description="Regex whose group 1 extracts the gold from the answer field (GSM8K: '#### (.+)')."
    )
    prompt_template: str = Field(
        "{prompt}", description="Format string applied to each prompt ({prompt} is replaced; it is the only "
        "placeholder, with no format spec or conversion; write a literal brace as {{ or }})."
    )
    num_train_prompts: int = Field(512, ge=1, description="Training prompts (task source) / max rows.")
    num_eval_prompts: int = Field(32, ge=1, description="Held-out evaluation prompts.")
    eval_seed: int = Field(
        0, description="Seed choosing the evaluation prompts; fixed (not run.seed) so every seed and "
        "variant of a comparison is evaluated on the same problems."
    )
    allow_eval_overlap: bool = Field(
        False, description="Accept evaluation prompts that are also training prompts (compared by text). "
        "Off: such a config is refused before training, since its held-out numbers would be inflated."
    )

    @field_validator("prompt_template")
    @classmethod
    def check_template(cls, template: str) -> str:
        """Only ``{prompt}`` may be used (the rollout workers format with ``prompt=`` alone)."""
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
        except ValueError as err:
            raise ValueError(f"not a valid format string ({err}); write a literal brace as {{{{ or }}}}") from None
        for name, spec, conversion in fields:
            if name == "prompt" and (spec or conversion):  # {prompt:>99999999999} would pad every prompt
                raise ValueError(f"{{prompt{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}: "
                                 "only the plain placeholder {prompt} is allowed (no format spec or conversion)")
            if name != "prompt":
                raise ValueError(f"unknown placeholder {{{name}}}: the only placeholder is {{prompt}} "
                                 "(write a literal brace as {{ or }})")
        return template

    @model_validator(mode="after")
    def check_path(self) -> DataConfig:
        if self.source != "task" and not self.path:
            raise ValueError(f"data.source={self.source!r} needs data.path")
        return self


class RolloutConfig(Section, RolloutShapingFields, ColocateFields):  # + rl_div.config.rollout_shaping, .colocate
    backend: str = Field(
        "hf", description="A backend of rl_div.config.rollout_backends.ROLLOUT_BACKENDS: 'hf' = transformers "
        "generate; 'vllm'; a run.plugins module may register more. Its transports and GPU rules are checked at load.",
    )
    num_workers: int = Field(1, ge=1, description="Rollout actors; prompts are sharded across them.")
    num_cpus_per_worker: float = Field(1.0, ge=0, description="Ray CPUs reserved per rollout actor.")
    num_gpus_per_worker: float = Field(0.0, ge=0, description="Ray GPUs per rollout actor.")
    group_size: int = Field(8, ge=2, description="G: responses sampled per prompt.")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per training step.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 = off.")
    max_new_tokens: int = Field(16, ge=1, description="Response length cap (truncation is logged).")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings besides EOS.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel size.")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM GPU memory fraction.")
    max_batch_rows: int = Field(4096, ge=1, description="hf backend: sequences per generate() call.")
    generate_timeout_s: float = Field(600.0, gt=0, description="Max seconds for one rollout call.")
    weight_sync: Literal["object_store", "cuda_ipc", "nccl"] = Field(
        "object_store",
        description="How new weights reach vLLM rollout workers: 'object_store' (CPU tensors through Ray, "
        "any machine), 'cuda_ipc' (learner and vLLM share a GPU; vLLM sleeps between rollouts) or 'nccl' "
        "(broadcast to vLLM on other GPUs/nodes). See docs/vllm.md.",
    )
    weight_sync_chunk_mb: float = Field(
        64.0, gt=0, description="object_store: MB per weight bucket. The learner (rank 0 of a sharded one) puts "
        "one bucket at a time into the Ray object store and rollout workers load one at a time, so this bounds "
        "the host memory a sync adds on both sides; also the MB per load call into vLLM.",
    )
    weight_sync_timeout_s: float = Field(
        300.0, gt=0, description="Max seconds for one weight sync; past it the sync fails loudly."
    )
    max_off_policy_steps: int = Field(
        0, ge=0, le=2, description="Batches generated ahead of the learner: 0 = synchronous (rollout, then "
        "update, then sync); 1 = batch t+1 is sampled with weights of version t while the learner trains on "
        "batch t (one step off-policy, corrected by the loss's truncated importance sampling); 2 = two ahead.",
    )
    sleep_level: Literal[1, 2] = Field(
        1, description="vLLM sleep level between rollouts when colocated (weight_sync=cuda_ipc): 1 offloads the "
        "weights to CPU memory and frees the KV cache; 2 discards both (no CPU copy of the weights), so every "
        "rollout needs a sync before it: training rollouts already follow one, and the trainer syncs again after "
        "each evaluation; an engine asked to sample without one refuses.",
    )
    seed_mode: Literal["per_row", "per_batch", "none"] = Field(
        "per_row", description="vLLM sampling seeds (rl_div.rollout.seed_plan): 'per_row' seeds each request, so "
        "row i of prompt g is the sample with seed seed+g*n+i whatever the batch or engine count, on vLLM's slower "
        "per-request sampler (15-40% slower decode on a GPU); 'per_batch' resets the engine's RNG to the call's seed "
        "and seeds no request (the fast path; the same call on the same engine repeats, a row depends on its batch, "
        "as with the hf backend); 'none' seeds nothing per call. The hf backend always seeds per call.",
    )

    @model_validator(mode="after")
    def check_weight_sync(self) -> RolloutConfig:
        if self.max_off_policy_steps and self.weight_sync == "cuda_ipc":
            raise ValueError("rollout.max_off_policy_steps > 0 needs weight_sync 'object_store' or 'nccl': with "
                             "'cuda_ipc' the colocated engine sleeps while the learner trains, so nothing overlaps")
        return self


class RewardItem(Section):
    name: str = Field(description="Reward name in rewards.REWARDS.")
    weight: float = Field(1.0, description="Weight in the summed reward.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")


class RewardConfig(Section):
    rewards: list[RewardItem] = Field(
        default_factory=lambda: [RewardItem(name="task_verifier")],
        description="Rewards summed with weights; the first verifier defines correctness.",
    )
    timeout_s: float = Field(5.0, gt=0, description="Per-sample timeout; a hung reward is killed.")
    isolated: bool = Field(True, description="Run rewards in killable worker processes.")
    call_timeout_s: float = Field(
        900.0, gt=0, description="Max seconds for scoring one whole batch (every response, every reward, group "
        "rewards included); past it the reward worker is restarted and the batch's rewards are NaN, counted as "
        "reward timeouts. Raise it for large evaluations with slow verifiers."
    )
    group_timeout_s: float = Field(
        120.0, gt=0, description="Per-group timeout for group rewards; a hung one is killed and its group "
        "scored NaN. A reward with a batch hook (novelty, partition) runs the whole batch in one call under it."
    )
    num_workers: int | None = Field(
        None, ge=1, description="Reward worker processes scoring in parallel; None = the CPUs the reward "
        "actor may use (at most 16)."
    )
    items_per_call: int = Field(
        16, ge=1, description="Responses per round trip to a reward worker (each keeps its own timeout)."
    )


class AlgoConfig(Section):
    advantage: str = Field("grpo", description="Advantage estimator (rl_div.algos.ADVANTAGES).")
    advantage_params: dict[str, Any] = Field(default_factory=dict, description="Its keyword args.")
    token_weight: str = Field("none", description="Token re-weighting (TOKEN_WEIGHTS).")
    token_weight_params: dict[str, Any] = Field(default_factory=dict, description="Its keyword args.")
    loss: str = Field("ppo_clip", description="Policy loss (LOSSES).")
    loss_params: dict[str, Any] = Field(default_factory=dict, description="Its keyword args.")

    @model_validator(mode="before")
    @classmethod
    def expand_preset(cls, value: Any) -> Any:
        """``algo: arm`` (or ``algo=arm``) is shorthand for a named preset."""
        if isinstance(value, str):
            if value not in ALGO_PRESETS:
                raise ValueError(unknown_name_message("algo preset", value, ALGO_PRESETS))
            return dict(ALGO_PRESETS[value])
        return value


ALGO_PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {"advantage": "grpo"},
    "dr_grpo": {
        "advantage": "grpo",
        "advantage_params": {"scale": "none"},
        "loss_params": {"agg": "seq-mean-token-sum-norm"},
    },
    "arm": {"advantage": "arm"},
    "steer": {"advantage": "grpo", "token_weight": "steer"},
    "passk": {"advantage": "passk"},
    "unlikeliness": {"advantage": "unlikeliness"},
    "clip_cov": {"advantage": "grpo", "token_weight": "clip_cov"},
    "kl_cov": {"advantage": "grpo", "token_weight": "kl_cov"},
    "high_entropy": {"advantage": "grpo", "token_weight": "high_entropy_mask"},
    # issue 23: entropy-shaped advantage (Cheng et al. 2025) and REPO (Petrenko et al. 2026)
    "entropy_advantage": {"advantage": "grpo", "token_weight": "entropy_advantage"},
    "repo": {"advantage": "repo"},
    # issue 23's advantages (rl_div/algos/advantages_outcome.py, advantages_passk.py)
    **{name: {"advantage": name} for name in ("w_reinforce", "nsr", "psr", "maxrl", "qae", "best_of_group", "pkpo")},
}


class TrainConfig(Section):
    steps: int = Field(40, ge=0, description="Training steps (one rollout batch each).")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(0, ge=0, description="Linear LR warmup, in optimizer steps.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch.")
    mini_batch_size: int | None = Field(
        None, ge=1, description="Responses per optimizer step; None = the whole batch."
    )
    micro_batch_size: int = Field(64, ge=1, description="Responses per forward (grad accumulation).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    skip_zero_signal_steps: bool = Field(
        True,
        description="Skip the optimizer step when every advantage is 0 (Adam momentum on an empty "
        "signal can wreck the answer format).",
    )
    use_ref_model: bool = Field(False, description="Keep a frozen reference policy for the KL term.")
    logit_chunk_rows: int = Field(
        256, ge=1, description="Rows per chunk for log-prob/entropy (bounded float32 memory; "
        "rl-div bench: 256 rows at V=32k was 4-7x faster than one float32 pass on CPU)."
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute decoder-layer activations in backward (less memory, ~1 extra "
        "forward of compute); for long responses or large micro-batches."
    )
    num_cpus: float = Field(1.0, ge=0, description="Ray CPUs reserved for the learner actor.")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs for the learner actor.")
    offload_optimizer: bool = Field(
        False, description="Keep AdamW's state in CPU memory between updates (frees accelerator memory for a "
        "colocated vLLM engine; costs one copy each way per update).",
    )
    strategy: Literal["single", "fsdp2"] = Field(
        "single", description="'single': one learner actor holds the whole model (the fast default); 'fsdp2': "
        "train.num_learners actors shard parameters, gradients and AdamW state with FSDP2 (exact: same "
        "result as one process at any world size).",
    )
    num_learners: int = Field(
        1, ge=1, description="Learner actors (ranks) for strategy 'fsdp2', each with train.num_cpus / "
        "train.num_gpus; 'single' needs 1.",
    )
    max_tokens_per_micro_batch: int | None = Field(
        None, ge=1, description="fsdp2: token budget (prompt + response tokens) per micro-batch, on top of "
        "train.micro_batch_size rows; None = rows only.",
    )
    token_weight_scope: Literal["micro", "mini"] = Field(
        "micro", description="Batch over which token weights read their statistics (STEER's max|Omega|, "
        "Clip-Cov/KL-Cov covariance and picks, the 80/20 entropy threshold): 'micro' = each micro-batch "
        "(STEER's definition; today's behaviour), 'mini' = the whole mini-batch across all ranks (one "
        "extra no-grad forward; required by fsdp2 for any token weight but 'none').",
    )
    dist_init_timeout_s: float = Field(
        300.0, gt=0, description="fsdp2: max seconds for torch.distributed to connect the learner ranks, "
        "and for any one collective (a dead rank fails the run within it).",
    )
    packing: bool = Field(
        False, description="Padding-free learner forwards: each micro-batch's real tokens packed end to end into "
        "token-budget sequences, every row with its own position ids and attention that never crosses rows "
        "(rl_div/learner/packing.py; varlen flash-attention on a GPU with flash-attn, a block-diagonal SDPA mask "
        "on CPU). Same log-probs, entropies, loss and gradients as the padded forward; less compute on uneven rows.")
    packing_tokens: int | None = Field(
        None, ge=1, description="train.packing: tokens per packed sequence (a longer row gets one of its own); "
        "None = the micro-batch's longest row (dense-mask attention costs the square of the sequence), or one "
        "sequence of all its tokens under varlen flash-attention.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters on a frozen base "
                             "(rl_div/config/lora.py); off by default.")


class EvalConfig(Section):
    every: int = Field(20, ge=0, description="Evaluate every N steps (0 = only at_start / at_end).")
    at_start: bool = Field(True, description="Evaluate the base policy before training.")
    at_end: bool = Field(True, description="Evaluate the final policy.")
    n: int = Field(64, ge=1, description="Samples per held-out prompt (pass@k up to k = n).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature at evaluation.")
    embedding_metrics: bool = Field(
        True, description="Embedding diversity / Vendi (loads all-MiniLM-L6-v2 locally)."
    )
    benchmarks: list[str] = Field(
        default_factory=list, description="Standard benchmarks evaluated too, by name (aime24, math500, ...; "
        "the benchmarks section says where and how), logged as eval/<benchmark>/<metric>.",
    )
    benchmark_limit: int | None = Field(None, ge=1, description="First N problems of each benchmark (None = all).")


class CheckpointConfig(Section):
    every: int = Field(20, ge=0, description="Checkpoint every N steps (0 = only at the end).")
    keep: int = Field(2, ge=1, description="Checkpoints kept (oldest deleted first).")
    export_policy: bool = Field(
        True, description="fsdp2: rank 0 also writes policy/ (the full weights in model.dtype, loadable with "
        "from_pretrained; what `rl-div eval` reads). The run resumes from the sharded dcp/ folder either way; "
        "false skips the single-rank write of the whole model (minutes for a 7B model). The single learner's "
        "policy/ is its checkpoint (float32) and is always written.",
    )


class TrackingConfig(Section):
    tensorboard: bool | Literal["auto"] = Field(
        "auto", description="TensorBoard: true, false, or 'auto' (on when installed)."
    )
    wandb: bool = Field(False, description="Log to Weights & Biases (needs the wandb extra).")
    wandb_project: str = Field("rl_div", description="W&B project.")
    wandb_group: str | None = Field(
        None, description="W&B group; rl-div compare sets it to its output folder's name, so the seeds and "
        "variants of one comparison are one group."
    )
    wandb_tags: list[str] = Field(
        default_factory=list, description="Extra W&B tags (the run name and the algorithm's names are added)."
    )
    mlflow: bool = Field(False, description="Log to MLflow (needs the mlflow extra).")
    progress: bool = Field(True, description="Console progress bar.")


class ClusterConfig(Section):
    address: str | None = Field(
        None, description="Ray address of an existing cluster; None = RAY_ADDRESS or start locally."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (None = all).")
    placement_timeout_s: float = Field(
        60.0, gt=0, description="Max seconds to reserve the run's resources (placement group) when the cluster "
        "has them but other jobs hold them; a cluster that lacks them fails at once.",
    )
    startup_timeout_s: float = Field(
        1800.0, gt=0, description="Max seconds for the learner and rollout actors to start (model load or "
        "download, vLLM compile and CUDA graphs), before the first weight sync.",
    )
    learner_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources the learner actor asks for, e.g. {node_b: 1} with a node started "
        "by `ray start --resources='{\"node_b\": 1}'`: places it on that node.",
    )
    rollout_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each rollout actor asks for (as learner_resources)."
    )

    @model_validator(mode="after")
    def check_custom_resources(self) -> ClusterConfig:
        for field in ("learner_resources", "rollout_resources"):
            for name, amount in getattr(self, field).items():
                if name in ("CPU", "GPU"):
                    raise ValueError(f"cluster.{field}: use train.num_cpus/num_gpus or rollout.num_cpus_per_worker/"
                                     f"num_gpus_per_worker for {name}, not a custom resource")
                if amount <= 0:
                    raise ValueError(f"cluster.{field}.{name} must be > 0, got {amount}")
        return self
