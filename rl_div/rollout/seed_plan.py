"""How a vLLM rollout call is seeded (rollout.seed_mode): the per-request seeds handed to
SamplingParams and the seed the engine's own RNG is reset to before the call. Pure functions, so the
plan is tested without vLLM; rl_div.rollout.vllm applies it.

The trade-off. A SamplingParams with a seed gets its own torch.Generator inside vLLM, and vLLM's sampler
then draws that request's random numbers separately (one exponential_ per seeded row) instead of
one draw for the whole batch: the slow per-request path, 15-40% slower decode on a GPU.

- ``per_row``: prompt g's request is seeded ``seed + g*n`` (vLLM seeds its n samples seed .. seed+n-1),
  so row i of prompt g is the one sample with seed ``seed + g*n + i`` whatever else is in the batch,
  however vLLM schedules it and on how many engines (the vLLM lane tests exactly that). Slow path.
- ``per_batch``: no request seeds (the fast path); the engine's RNG (torch's, on every worker) is reset
  to ``seed`` before each call, so the same call with the same weights on the same engine build repeats
  its samples, as the hf backend does (one torch.manual_seed per generate call). A row then depends on
  the whole batch (its neighbours, the scheduling), not only on its own seed.
- ``none``: no request seeds and no reset: the engine's RNG runs on from its start-up seed (run.seed).
  A run repeats only if every call before repeats (not across a resume).
"""

from __future__ import annotations

from typing import Literal

SeedMode = Literal["per_row", "per_batch", "none"]
SEED_MODES: tuple[str, ...] = ("per_row", "per_batch", "none")


def request_seeds(mode: str, seed: int, n_prompts: int, n: int) -> list[int | None]:
    """[n_prompts] SamplingParams seeds of one call: seed + g*n for prompt g with per_row, else None
    (no per-request generator)."""
    if mode not in SEED_MODES:
        raise ValueError(f"rollout.seed_mode must be one of {', '.join(SEED_MODES)}, got {mode!r}")
    if mode == "per_row":
        return [seed + g * n for g in range(n_prompts)]
    return [None] * n_prompts


def engine_reseed(mode: str, seed: int) -> int | None:
    """The seed the engine's RNG is reset to before the call (per_batch), or None (no reset)."""
    if mode not in SEED_MODES:
        raise ValueError(f"rollout.seed_mode must be one of {', '.join(SEED_MODES)}, got {mode!r}")
    return seed if mode == "per_batch" else None
