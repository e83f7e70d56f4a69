"""The rollout protocol and the batch assembly shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from rl_div.data import PromptRecord, RolloutBatch
from rl_div.models.loading import format_chat, format_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class SamplingSpec:
    """What one rollout call samples; mapped onto each backend's own sampling parameters."""

    n: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 16
    stop: list[str] = field(default_factory=list)
    seed: int = 0


class RolloutWorker(Protocol):
    def generate(self, prompts: list[PromptRecord], spec: SamplingSpec) -> RolloutBatch: ...

    # weights: a state dict, or a transport's payload (object_store: an rl_div.sync.buckets.BucketPayload)
    def set_weights(self, weights: Any, version: int) -> None: ...

    def policy_version(self) -> int: ...


def templated_prompt_ids(tokenizer: PreTrainedTokenizerBase, record: PromptRecord, prompt_template: str,
                         use_chat_template: bool | None) -> list[int]:
    """Token ids of a prompt as the policy sees it (template and chat template applied).

    Every backend tokenizes prompts here and hands the engine token ids, so hf and vllm sample
    from exactly the same prompt tokens.
    """
    if record.meta.get("prompt_ready"):  # a benchmark record (rl_div.benchmarks.prompting) says how it renders
        text = record.prompt
        templated = format_prompt(tokenizer, text, record.meta.get("chat"), system=record.meta.get("system"))
    elif record.messages is not None:  # chat format: the template fills the last (user) turn
        *history, last = record.messages
        turn = {"role": last["role"], "content": prompt_template.format(prompt=last["content"])}
        templated, text = format_chat(tokenizer, [*history, turn], use_chat_template), None
    else:
        text = prompt_template.format(prompt=record.prompt)
        templated = format_prompt(tokenizer, text, use_chat_template)
    # A chat template already places BOS and role markers itself.
    return list(tokenizer(templated, add_special_tokens=templated == text)["input_ids"])


def build_rollout_batch(
    prompts: list[PromptRecord],
    prompt_token_ids: list[list[int]],
    response_token_ids: list[list[int]],
    response_logprobs: list[list[float]],
    response_texts: list[str],
    truncated: list[bool],
    n: int,
    behavior_version: int,
) -> RolloutBatch:
    """Pad per-row token lists into a RolloutBatch.

    prompts/prompt_token_ids: one entry per prompt (P_g prompt tokens); the response lists hold
    len(prompts) * n rows, the n responses of prompt g at rows g*n .. g*n+n-1.
    Prompts are left-padded, responses right-padded, pads are 0 with mask 0.
    """
    rows = len(prompts) * n
    if not (len(response_token_ids) == len(response_logprobs) == len(response_texts) == len(truncated) == rows):
        raise ValueError("response lists must hold len(prompts) * n rows")
    p_len = max((len(p) for p in prompt_token_ids), default=0)
    t_len = max(1, max((len(r) for r in response_token_ids), default=1))
    prompt_ids = torch.zeros(rows, p_len, dtype=torch.long)
    prompt_mask = torch.zeros(rows, p_len, dtype=torch.long)
    response_ids = torch.zeros(rows, t_len, dtype=torch.long)
    response_mask = torch.zeros(rows, t_len, dtype=torch.long)
    logprobs = torch.zeros(rows, t_len, dtype=torch.float32)
    for row in range(rows):
        ids = prompt_token_ids[row // n]
        if ids:
            prompt_ids[row, p_len - len(ids):] = torch.tensor(ids)
            prompt_mask[row, p_len - len(ids):] = 1
        resp = response_token_ids[row]
        if resp:
            response_ids[row, : len(resp)] = torch.tensor(resp)
            response_mask[row, : len(resp)] = 1
            logprobs[row, : len(resp)] = torch.tensor(response_logprobs[row], dtype=torch.float32)
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        behavior_logprobs=logprobs,
        group_index=torch.arange(len(prompts)).repeat_interleave(n),
        truncated=torch.tensor(truncated, dtype=torch.bool),
        prompts=[p for p in prompts for _ in range(n)],
        response_texts=list(response_texts),
        behavior_version=torch.full((rows,), behavior_version, dtype=torch.long),
    )
