"""REPO (Petrenko et al. 2026, "Entropy-Preserving Reinforcement Learning", ICLR 2026): the advantage
de-correlated from the sample's log-probability (docs/algorithms.md section 1).

The paper's analysis: to first order, a policy-gradient step changes the entropy by about
-Cov(log pi(o), A(o)) under the policy, so a policy already "calibrated" to its reward (likely samples
are the correct ones) loses entropy at every step. REPO modifies the advantage by subtracting a term
proportional to the sample's log-probability, which removes that correlation:

    A~_i = A_i - zeta * l_i,        l_i = the log-probability of response i under pi_old

No code has been published (checked: no repository of the authors' in the stored indexes), so this is
a float64 reference from the equation (tests/test_repo.py). rl_div's choices on the open points, all
params:

* ``logprob``: l_i is the mean token log-prob ("mean", default: length-normalised, so zeta means the
  same for short and long answers) or the sum ("sum": log pi(o|q) itself).
* row-local: l_i is not centred on its group (the group mean would read the other rows' log-probs).
  Un-centred, E[-l grad log pi] = grad H (sequence entropy), so the term is an entropy-preserving
  push in expectation, and the estimator is row-local: it fuses into the update's forward like ARM
  (rl_div.algos.row_local).
* ``shape_zero_signal_groups``: False (default) shapes only groups whose rewards differ (where A acts
  and the correlation is formed); True shapes every row, a zero-signal group then trains on -zeta l
  alone (pure sequence-entropy ascent).
* zeta = 0.1 (``zeta``): unknown in the paper's public text; sweep it.
"""

from __future__ import annotations

from typing import Any

import torch

from rl_div.algos.advantage_base import (
    ADVANTAGES,
    AdvantageInputs,
    AdvantageNeeds,
    AdvantageOutput,
    _nan_stats,
    _require,
    _summary,
    grpo_advantages,
)
from rl_div.algos.grouping import fraction_of_groups, group_all_equal
from rl_div.algos.row_local import ROW_LOCAL, RewardPart, RowLocalSplit


def sample_logprob(logprobs: torch.Tensor, mask: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """A response's log-probability: the masked mean (``reduce="mean"``) or sum of its token log-probs,
    in float64. An empty response has no log-probability: NaN (the estimator then leaves it unshaped).

    Args:
        logprobs: [B, T]; mask: [B, T] 1 = real token.
    Returns:
        [B] float64.
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"repo logprob must be 'mean' or 'sum', got {reduce!r}")
    valid = mask.bool()
    total = logprobs.double().masked_fill(~valid, 0.0).sum(dim=1)
    count = valid.sum(dim=1)
    value = total / count if reduce == "mean" else total
    return torch.where(count > 0, value, torch.full_like(value, float("nan")))


def repo_reward_part(inputs: AdvantageInputs, *, shape_zero_signal_groups: bool, scale: str, eps: float,
                     unbiased_std: bool, **_: Any) -> RewardPart:
    """GRPO's A_i and the rows REPO shapes (groups with signal, or all). rewards/group_index [B]."""
    base = grpo_advantages(inputs.rewards, inputs.group_index, scale=scale, eps=eps, unbiased_std=unbiased_std)
    flat = group_all_equal(inputs.rewards, inputs.group_index)
    shaped = torch.ones_like(flat) if shape_zero_signal_groups else ~flat
    return RewardPart(base, shaped, {"adv/zero_signal_frac": fraction_of_groups(flat, inputs.group_index)})


def repo_row_values(response_logprobs: torch.Tensor, response_mask: torch.Tensor,
                    prompt_logprobs: torch.Tensor | None, prompt_mask: torch.Tensor, *, dtype: torch.dtype,
                    zeta: float, logprob: str, **_: Any) -> dict[str, torch.Tensor]:
    """Per row: its log-probability l and the shaping -zeta * l in dtype. response_* [b, T] -> [b]."""
    lp = sample_logprob(response_logprobs, response_mask, logprob)
    return {"sample_logprob": lp, "shaping": (-zeta * lp).to(dtype)}


def repo_metrics(part: RewardPart, values: dict[str, torch.Tensor], shaping: torch.Tensor, adv: torch.Tensor,
                 **_: Any) -> dict[str, float]:
    """repo()'s metrics from the per-row values [B], the applied shaping and advantages [B]."""
    lp_mean, lp_std = _nan_stats(values["sample_logprob"])
    return {
        **part.metrics,
        "repo/sample_logprob_mean": lp_mean,
        "repo/sample_logprob_std": lp_std,
        "repo/shaped_frac": float(part.shaped.double().mean().item()) if part.shaped.numel() else 0.0,
        "repo/shaping_mean": float(shaping.mean().item()) if shaping.numel() else 0.0,
        **_summary(adv),
    }


ROW_LOCAL.register("repo")(RowLocalSplit(repo_reward_part, repo_row_values, repo_metrics))


@ADVANTAGES.register("repo", needs=AdvantageNeeds(response_logprobs=True, row_local=True))
def repo(inputs: AdvantageInputs, *, zeta: float = 0.1, logprob: str = "mean",
         shape_zero_signal_groups: bool = False, scale: str = "group", eps: float = 1e-6,
         unbiased_std: bool = False) -> AdvantageOutput:
    """REPO: A~_i = A_i - zeta * l_i, l_i = response i's mean (or summed) log-prob under pi_old.

    A_i is :func:`grpo_advantages` with ``scale``/``eps``/``unbiased_std``; which rows are shaped and
    the other choices are in this module's docstring. An empty response (l = NaN) is not shaped.
    Needs response_logprobs and response_mask.

    Shapes: rewards/group_index [B]; response_logprobs/response_mask [B, T] -> [B].
    """
    _require(inputs, ["response_logprobs", "response_mask"], "repo")
    if inputs.prompt_mask is None:  # the row-local split's signature carries it; REPO reads no prompt
        inputs = AdvantageInputs(**{**inputs.__dict__, "prompt_mask": torch.zeros(inputs.rewards.shape[0], 0)})
    return ROW_LOCAL["repo"](inputs, zeta=zeta, logprob=logprob, shape_zero_signal_groups=shape_zero_signal_groups,
                             scale=scale, eps=eps, unbiased_std=unbiased_std)
