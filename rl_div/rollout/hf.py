"""The ``hf`` rollout backend: transformers ``generate`` on the policy, one process per actor (or, with
``rollout.colocate``, inside the learner actor on its own module: rl_div.cluster.colocated)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from rl_div.data import PromptRecord, RolloutBatch
from rl_div.models.loading import DTYPES, load_policy
from rl_div.models.lora import LoraSpec, adapter_tensors, injected_model, wrap_lora
from rl_div.rollout.base import SamplingSpec, build_rollout_batch, templated_prompt_ids
from rl_div.sync.buckets import BucketPayload, WeightSyncError, copy_into, distinct_state, load_buckets


class HFSampler:
    """Samples from a transformers causal LM it is handed, without loading or owning its weights: the
    hf rollout worker's own copy (HFRolloutWorker, below) or, with ``rollout.colocate``, the learner's
    policy module itself (rl_div.cluster.colocated). One sampling code path for both, so a colocated
    run draws the very tokens a separate hf worker with the same weights draws."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, device: str, use_chat_template: bool | None,
                 prompt_template: str, max_batch_rows: int) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.use_chat_template = use_chat_template
        self.prompt_template = prompt_template
        self.max_batch_rows = max_batch_rows

    def prompt_token_ids(self, record: PromptRecord) -> list[int]:
        """Token ids of a prompt as the policy sees it (template and chat template applied)."""
        return templated_prompt_ids(self.tokenizer, record, self.prompt_template, self.use_chat_template)

    def sample(self, prompts: list[PromptRecord], spec: SamplingSpec, version: int) -> RolloutBatch:
        """Sample spec.n responses for each prompt, at most max_batch_rows sequences per generate()
        call (chunk c samples with seed spec.seed + c), so a large evaluation fits in memory. Rows carry
        ``version`` as their behaviour version."""
        per_chunk = max(1, self.max_batch_rows // spec.n)
        parts = [self._sample_chunk(prompts[i : i + per_chunk], dataclasses.replace(spec, seed=spec.seed + c), version)
                 for c, i in enumerate(range(0, len(prompts), per_chunk))]
        return parts[0] if len(parts) == 1 else RolloutBatch.concat(parts)

    @torch.no_grad()
    def _sample_chunk(self, prompts: list[PromptRecord], spec: SamplingSpec, version: int) -> RolloutBatch:
        """Sample spec.n responses for each prompt. Rows g*n..g*n+n-1 answer prompt g.

        behavior_logprobs are the log-softmax of the logits divided by the temperature at each
        sampled token (top-p / top-k truncation not applied), the same quantity the learner
        computes, so the two compare directly. The process's torch RNG is put back afterwards: a
        colocated learner's own random stream (dropout, its checkpointed RNG state) is the one it
        would have without sampling.
        """
        tok = self.tokenizer
        prompt_ids = [self.prompt_token_ids(r) for r in prompts]
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, ids in enumerate(prompt_ids):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            attention[i, width - len(ids):] = 1
        recorder = SampledLogprobs(spec.temperature)
        cuda = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(spec.seed)
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=sampling_config(spec, tok.pad_token_id, tok.eos_token_id),
                tokenizer=tok if spec.stop else None,
                logits_processor=LogitsProcessorList([recorder]),  # log-probs one step at a time: [rows, V] held
            )
        new_tokens = out.sequences[:, width:].cpu()
        step_logprobs = recorder.finish(new_tokens)
        responses, logprobs, texts, truncated = [], [], [], []
        for row in range(new_tokens.shape[0]):
            ids = new_tokens[row].tolist()
            length, stopped = _response_length(ids, tok.eos_token_id)
            ids = ids[:length]
            text = tok.decode(ids, skip_special_tokens=True)
            hit_stop = any(text.endswith(s) for s in spec.stop)
            responses.append(ids)
            logprobs.append(step_logprobs[row, :length].tolist())
            texts.append(text)
            truncated.append(not (stopped or hit_stop))
        return build_rollout_batch(prompts, prompt_ids, responses, logprobs, texts, truncated, spec.n, version)


class HFRolloutWorker(HFSampler):
    """Holds a copy of the policy; samples with transformers (HFSampler) and takes new weights by state dict."""

    def __init__(self, model_path: str, *, dtype: str = "float32", trust_remote_code: bool = False,
                 use_chat_template: bool | None = None, prompt_template: str = "{prompt}",
                 device: str | None = None, max_batch_rows: int = 4096, lora: dict[str, Any] | None = None) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_policy(model_path, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
        # lora (rl_div.models.lora.LoraSpec's fields): the learner's adapters on this copy, as the learner
        # wraps its own (same tensor names); weight sync then ships the adapter tensors alone
        self.lora = lora is not None
        if lora is not None:
            model = injected_model(wrap_lora(model, LoraSpec(**lora), DTYPES[dtype]))
        model.eval()
        # generate() would take unset sampling fields from the checkpoint (plain_generation_config says
        # which): only the token ids survive on this copy, so sampling follows the SamplingSpec alone.
        model.generation_config = plain_generation_config(model.generation_config)
        super().__init__(model, tokenizer, device=device, use_chat_template=use_chat_template,
                         prompt_template=prompt_template, max_batch_rows=max_batch_rows)
        self.version = 0

    def generate(self, prompts: list[PromptRecord], spec: SamplingSpec) -> RolloutBatch:
        """HFSampler.sample with the version of the weights this copy holds."""
        return self.sample(prompts, spec, self.version)

    def set_weights(self, weights: dict[str, torch.Tensor] | BucketPayload, version: int) -> None:
        """Load the learner's weights: a state dict (strict: a missing or extra tensor is an error)
        or a BucketPayload, fetched and copied in one bucket at a time after checking that it names
        every tensor of this model exactly once (tied weights once, as the learner sends them). With
        LoRA, every adapter tensor exactly once (and nothing else)."""
        targets = dict(adapter_tensors(self.model) if self.lora else distinct_state(self.model))
        if isinstance(weights, BucketPayload):
            with torch.no_grad():
                load_buckets(weights, lambda bucket: copy_into(targets, bucket), expected=targets)
        elif self.lora:
            if weights.keys() != targets.keys():
                raise WeightSyncError(f"adapter weights do not match this worker's adapters: "
                                      f"{sorted(weights.keys() ^ targets.keys())[:3]}")
            with torch.no_grad():
                copy_into(targets, weights)
        else:
            self.model.load_state_dict(weights, strict=True)
        self.version = version

    def policy_version(self) -> int:
        return self.version


@contextlib.contextmanager
def plain_generation(model: torch.nn.Module) -> Iterator[None]:
    """Inside this block the model's generation_config holds only the checkpoint's token ids
    (plain_generation_config), and its own is put back afterwards: the colocated learner samples with its
    policy module, whose config its checkpoints save unchanged."""
    saved = model.generation_config
    model.generation_config = plain_generation_config(saved)
    try:
        yield
    finally:
        model.generation_config = saved


def plain_generation_config(checkpoint: GenerationConfig) -> GenerationConfig:
    """A generation config that keeps only the checkpoint's special token ids. generate() fills every
    field left unset from the model's generation_config (Qwen's checkpoint: repetition_penalty 1.1,
    top_k 20, top_p 0.8) and then from transformers' defaults (top_k 50): with the checkpoint's there,
    the samples would not come from the distribution whose log-probs we report."""
    ids = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    kept = {k: getattr(checkpoint, k, None) for k in ids}
    return GenerationConfig(**{k: v for k, v in kept.items() if v is not None})


def sampling_config(spec: SamplingSpec, pad_token_id: int, eos_token_id: int) -> GenerationConfig:
    """Every field that shapes the sampled distribution set from spec or to its neutral value, so
    generate() takes nothing from the model's generation_config or transformers' defaults."""
    return GenerationConfig(
        do_sample=True, num_beams=1, temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k,
        min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
        encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0,
        bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None,
        forced_eos_token_id=None, exponential_decay_length_penalty=None, sequence_bias=None,
        renormalize_logits=False, remove_invalid_values=False,
        max_new_tokens=spec.max_new_tokens, num_return_sequences=spec.n, stop_strings=spec.stop or None,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, return_dict_in_generate=True,
    )


class SampledLogprobs(LogitsProcessor):
    """Records log softmax(logits / temperature) of each sampled token while generate() runs.

    generate(output_logits=True) would keep every step's [rows, V] logits until the end: 10 GB for
    64 rows x 256 tokens at V = 151,936. Here one step's [rows, V] log-softmax is held until the next
    call, which sees the token sampled from it as input_ids[:, -1]. Custom processors run before
    generate()'s temperature / top-k / top-p warpers, so the scores are the model's logits.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.previous: torch.Tensor | None = None  # [rows, V] log-probs of the last step
        self.steps: list[torch.Tensor] = []  # [rows] per sampled token, on CPU

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1).cpu())
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """[rows, T] sampled tokens -> [rows, T] float32 log-probs (the last one from the last step)."""
        if self.previous is not None:
            last = new_tokens[:, -1:].to(self.previous.device)
            self.steps.append(self.previous.gather(1, last).squeeze(1).cpu())
            self.previous = None
        if len(self.steps) != new_tokens.shape[1]:
            raise RuntimeError(f"recorded {len(self.steps)} steps for {new_tokens.shape[1]} new tokens")
        return torch.stack(self.steps, dim=1) if self.steps else torch.zeros(new_tokens.shape)


def _response_length(ids: list[int], eos_id: int) -> tuple[int, bool]:
    """Length up to and including the first EOS, and whether EOS was produced."""
    try:
        return ids.index(eos_id) + 1, True
    except ValueError:
        return len(ids), False
