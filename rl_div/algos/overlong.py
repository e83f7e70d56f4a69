"""Overlong responses (rollout.overlong): truncated responses are a documented cause of entropy
blow-ups, so they are either kept out of the loss or penalised by length.

* ``mask`` (TRL's ``mask_truncated_completions``): a response that hit max_new_tokens without a stop
  keeps its reward (it still counts in its group's statistics) but none of its tokens reaches the
  loss: :func:`loss_token_mask`.
* ``penalty`` (DAPO's soft overlong punishment, as verl's DAPO reward manager and OpenRLHF's
  ``--overlong_buffer_len`` / ``--overlong_penalty_factor``): with L_max = max_new_tokens and buffer
  L_cache, R_length(L) = 0 for L <= L_max - L_cache, ((L_max - L_cache) - L) / L_cache * factor up to
  L_max (-factor at L_max), added to the reward: :func:`overlong_penalty`.
"""

from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment per response.

    lengths [B] response tokens; max_len L_max; buffer L_cache (1 <= buffer <= max_len); factor >= 0.
    Returns [B] float32: min(-(L - (L_max - L_cache)) / L_cache * factor, 0).
    """
    if not 1 <= buffer <= max_len:
        raise ValueError(f"overlong buffer must be in [1, max_len={max_len}], got {buffer}")
    exceed = lengths.double() - (max_len - buffer)
    return torch.clamp(-exceed / buffer * factor, max=0.0).float()


def loss_token_mask(response_mask: torch.Tensor, truncated: torch.Tensor, mask_truncated: bool) -> torch.Tensor:
    """The response tokens the loss reads: response_mask [B, T], with the rows of truncated [B] (bool)
    zeroed when mask_truncated. Same dtype as response_mask."""
    if not mask_truncated:
        return response_mask
    return response_mask * (~truncated.bool()).to(response_mask.dtype)[:, None]
