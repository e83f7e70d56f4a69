"""A stand-in for the parts of ``vllm`` the rollout worker calls, for the sleep-mode paths that only
run on a GPU (vLLM's sleep mode is CUDA-only). It honours vLLM's documented contract:

* ``LLM.sleep(level)`` (vllm docs/features/sleep_mode.md): level 1 "will offload the model weights
  and discard the KV cache ... the model weights are backed up in CPU memory"; level 2 "will discard
  both the model weights and the KV cache (while the model's buffers are kept in CPU) ... the content
  of both the model weights and KV cache is forgotten".
* ``LLM.wake_up(tags)`` re-allocates what sleep released: after level 1 the weights come back from the
  CPU copy; after level 2 the parameters are allocated again with no content (here: NaN, so that a
  sample drawn from them is recognisable).
* ``LLM.generate`` returns RequestOutputs whose ``outputs`` carry ``index``, ``token_ids``,
  ``logprobs`` (one {token: Logprob} per step) and ``finish_reason``.
* ``LLM.collective_rpc(method, timeout, args)`` runs a worker-extension method on every worker and
  returns one result per worker (one worker here); the extension methods are those of
  rl_div.rollout.vllm_extension, with CUDA IPC handles replaced by the tensors themselves.

Each generate() call is recorded in ``LLM.samples`` with whether the weights it ran on were intact.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch

__version__ = "0.32.0"


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    stop: list[str] | None = None
    include_stop_str_in_output: bool = False
    seed: int | None = None
    logprobs: int | None = None


def TokensPrompt(prompt_token_ids: list[int]) -> dict[str, Any]:  # noqa: N802 (vLLM's name: a TypedDict)
    return {"prompt_token_ids": prompt_token_ids}


inputs = types.SimpleNamespace(TokensPrompt=TokensPrompt)


class LLM:
    samples: list[bool] = []  # per generate(): were the weights intact (class-wide: the worker builds the engine)

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.weight = torch.ones(3)  # "the model": intact = finite
        self.cpu_copy: torch.Tensor | None = None
        self.sleeping_level = 0
        self._loaded = 0

    def sleep(self, level: int = 1) -> None:
        assert self.kwargs.get("enable_sleep_mode"), "vLLM refuses sleep() without enable_sleep_mode"
        self.cpu_copy = self.weight.clone() if level == 1 else None
        self.weight = torch.empty(0)
        self.sleeping_level = level

    def wake_up(self, tags: list[str] | None = None) -> None:
        if tags is None or "weights" in tags:
            self.weight = self.cpu_copy if self.cpu_copy is not None else torch.full((3,), float("nan"))
            self.cpu_copy = None

    def generate(self, prompts: list[dict[str, Any]], params: list[SamplingParams], use_tqdm: bool = False,
                 lora_request: Any = None) -> list:
        assert lora_request is None, "this fake engine serves no adapters"
        intact = self.weight.numel() == 3 and bool(torch.isfinite(self.weight).all())
        LLM.samples.append(intact)
        outs = []
        for p in params:
            completions = [types.SimpleNamespace(index=i, token_ids=[5, 6], finish_reason="length",
                                                 logprobs=[{5: types.SimpleNamespace(logprob=-1.0)},
                                                           {6: types.SimpleNamespace(logprob=-1.0)}])
                           for i in range(p.n)]
            outs.append(types.SimpleNamespace(outputs=completions))
        return outs

    def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = ()) -> list[Any]:
        if method == "rl_div_begin_update":
            self._loaded = 0
            return [None]
        if method == "rl_div_load_ipc":
            [handles] = args
            [(_, tensors)] = handles.items()
            self.weight = torch.stack([t.float().sum() for _, t in tensors][:3]).clone()
            self._loaded = len(tensors)
            return [self._loaded]
        if method == "rl_div_finish_update":
            return [self._loaded]
        if method == "rl_div_abort_update":
            return [None]
        raise AttributeError(method)

    def reset_prefix_cache(self) -> bool:
        return True
