"""What every advantage estimator shares: its inputs and output, the ADVANTAGES registry, and the
pieces several estimators (and their row-local splits in rl_div.algos.row_local) build on."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rl_div.algos.grouping import (
    group_all_equal,
    group_mean_std,
)
from rl_div.registry import Registry

# Slack when rounding fraction * length up, so that 0.14 * 50 = 7.000000000000001 keeps 7 tokens,
# not 8.
_ROUND_SLACK = 1e-9


@dataclass
class AdvantageInputs:
    """What an advantage estimator may read. B responses, T response tokens, P prompt tokens."""

    rewards: torch.Tensor  # [B] float, finite
    group_index: torch.Tensor  # [B] long, group id per response
    correct: torch.Tensor | None = None  # [B] float 1/0 (NaN = unscored, counted as not correct)
    response_logprobs: torch.Tensor | None = None  # [B, T] log p under pi_theta (no grad)
    behavior_logprobs: torch.Tensor | None = None  # [B, T] log p under pi_behavior (the sampler)
    response_mask: torch.Tensor | None = None  # [B, T] 1 = real token
    prompt_logprobs: torch.Tensor | None = None  # [B, P] log p of prompt tokens under pi_theta
    prompt_mask: torch.Tensor | None = None  # [B, P] 1 = prompt token that has a log-prob
    step: int = 0  # training steps done before this batch (for an estimator's schedule, e.g. pkpo's k)


@dataclass
class AdvantageOutput:
    advantages: torch.Tensor  # [B]
    metrics: dict[str, float]


@dataclass(frozen=True)
class AdvantageNeeds:
    """What an estimator reads of the policy, declared at registration
    (``@ADVANTAGES.register(name, needs=AdvantageNeeds(...))``) and read with ``ADVANTAGES.needs(name)``.

    response_logprobs: reads ``response_logprobs``, pi_old's log-probs before the update (the learner
    then keeps its separate no-grad forward, rl_div.learner.onpolicy). prompt_logprobs: reads
    ``prompt_logprobs`` (computed only then). behavior_logprobs: reads the sampler's log-probs (TRL,
    which has none, gives it pi_old's from its own forward). row_local: apart from reward-only parts
    it is row-local, with a split in rl_div.algos.row_local.ROW_LOCAL under the same name, so the
    fused update can finish it from each micro-batch's forward. verdicts: reads the verifier's verdict
    (``correct``); a row whose verdict is NaN (the verifier failed or was not run) while its reward is
    finite carries no signal for it, so :func:`signal_rows` leaves that row out like a failed reward.
    """

    response_logprobs: bool = True
    prompt_logprobs: bool = False
    behavior_logprobs: bool = False
    row_local: bool = False
    verdicts: bool = False

    @property
    def policy_logprobs(self) -> bool:
        """Whether it reads the policy's (pi_old's) log-probs at all, response or prompt."""
        return self.response_logprobs or self.prompt_logprobs


def undeclared_advantage_needs(fn: Callable[..., object]) -> AdvantageNeeds:
    """An estimator registered without ``needs``: assumed to read the policy's response log-probs
    (the safe default: the separate forward runs). The function attributes older plugins set,
    ``needs_response_logprobs`` / ``needs_prompt_logprobs``, still count."""
    return AdvantageNeeds(response_logprobs=bool(getattr(fn, "needs_response_logprobs", True)),
                          prompt_logprobs=bool(getattr(fn, "needs_prompt_logprobs", False)))


def signal_rows(rewards: torch.Tensor, correct: torch.Tensor | None, needs: AdvantageNeeds) -> torch.Tensor:
    """[B] bool: the rows an estimator declaring ``needs`` learns from: a finite reward and, when it reads
    verdicts, a finite verdict. The rest are left out of its groups and get advantage 0 (and no loss).

    Why not count an unscored verdict as incorrect: a verifier error or timeout is not evidence that
    the answer is wrong; as a 0 it would lower the group's pass rate (passk), push the row down
    (w_reinforce, nsr) or mark a group as having no correct answer (arm).

    Args:
        rewards: [B] float, NaN = the reward failed.
        correct: [B] float 1/0, NaN = unscored; None = no verdicts at all (every row kept here: the
            estimator itself then says it needs them).
    """
    keep = torch.isfinite(rewards)
    if needs.verdicts and correct is not None:
        keep = keep & torch.isfinite(correct.to(rewards.device))
    return keep


def unscored_verdicts(rewards: torch.Tensor, correct: torch.Tensor | None, needs: AdvantageNeeds) -> int:
    """How many rows :func:`signal_rows` leaves out for their verdict alone (finite reward, NaN verdict)."""
    if not needs.verdicts or correct is None:
        return 0
    return int((torch.isfinite(rewards) & ~torch.isfinite(correct.to(rewards.device))).sum().item())


AdvantageFn = Callable[..., AdvantageOutput]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage", needs_type=AdvantageNeeds,
                                             undeclared=undeclared_advantage_needs)


def _require(inputs: AdvantageInputs, fields: list[str], who: str) -> None:
    missing = [f for f in fields if getattr(inputs, f) is None]
    if missing:
        names = ", ".join(f"AdvantageInputs.{f}" for f in missing)
        raise ValueError(f"advantage {who!r} needs {names}, which is None")


def _is_correct(correct: torch.Tensor) -> torch.Tensor:
    """[B] float -> [B] bool; NaN (unscored) compares False, so it is not correct."""
    return correct > 0.5


def _summary(adv: torch.Tensor) -> dict[str, float]:
    return {
        "adv/mean": float(adv.mean().item()) if adv.numel() else 0.0,
        "adv/abs_mean": float(adv.abs().mean().item()) if adv.numel() else 0.0,
        "adv/max": float(adv.max().item()) if adv.numel() else 0.0,
        "adv/min": float(adv.min().item()) if adv.numel() else 0.0,
    }


def _nan_stats(x: torch.Tensor) -> tuple[float, float]:
    """Mean and population std of the finite entries of x [B] (NaN when there are none)."""
    finite = x[torch.isfinite(x)]
    if finite.numel() == 0:
        return math.nan, math.nan
    return float(finite.mean().item()), float(finite.std(unbiased=False).item())


def grpo_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    *,
    scale: str = "group",
    eps: float = 1e-6,
    unbiased_std: bool = False,
) -> torch.Tensor:
    """GRPO advantage A_i = (r_i - mean_g(r)) / (std + eps), pure tensor version.

    ``scale``: "group" divides by the group's std, "batch" by the std of all rewards in the batch
    (group-centred, batch-scaled), "none" does not divide (Dr. GRPO). A group whose rewards are all
    equal gets exactly A = 0 under every scale (floating-point residue of the mean is not signal).
    ``unbiased_std`` is the OPEN population-vs-unbiased choice of :func:`group_mean_std`.

    Args:
        rewards: [B] float, finite.
        group_index: [B] long.
    Returns:
        [B] advantages in the dtype of rewards.
    """
    mean, std = group_mean_std(rewards, group_index, unbiased=unbiased_std)
    centred = rewards - mean
    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        batch_std = rewards.std(unbiased=unbiased_std) if rewards.numel() > 1 else rewards.new_zeros(())
        adv = centred / (batch_std + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"grpo scale must be 'group', 'batch' or 'none', got {scale!r}")
    return torch.where(group_all_equal(rewards, group_index), torch.zeros_like(adv), adv)


def answer_confidence(logprobs: torch.Tensor, mask: torch.Tensor, fraction: float = 0.2) -> torch.Tensor:
    """c(o|q) = exp(mean log p over the lowest-probability fraction of a response's tokens).

    The number of tokens kept is n = max(1, ceil(fraction * L)) for a response of L > 0 tokens
    (rounded up so a short response still keeps its least likely token; a tiny slack keeps float
    noise such as 0.14 * 50 = 7.000000000000001 from adding a token). A zero-length response has
    no tokens to average: its confidence is NaN, which :func:`arm` treats as "no shaping".

    Args:
        logprobs: [B, T] log p of each sampled token.
        mask: [B, T] 1 = real token.
        fraction: in (0, 1].
    Returns:
        [B] confidence in (0, 1], NaN for empty rows.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    valid = mask.bool()
    lengths = valid.sum(dim=1)
    n = torch.ceil(lengths.double() * fraction - _ROUND_SLACK).long().clamp(min=1)
    n = torch.where(lengths > 0, n, torch.zeros_like(n))
    # padding sorts last (+inf), so the first n sorted entries are the n least likely real tokens
    ascending = logprobs.double().masked_fill(~valid, math.inf).sort(dim=1).values
    take = torch.arange(logprobs.shape[1], device=logprobs.device)[None, :] < n[:, None]
    total = ascending.masked_fill(~take, 0.0).sum(dim=1)
    return torch.exp(total / n).to(logprobs.dtype)  # 0 / 0 = NaN for empty rows


def prompt_confidence(prompt_logprobs: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
    """c(q) = exp(mean log p of the prompt tokens) = 1 / perplexity.

    Args:
        prompt_logprobs: [B, P]; entries where prompt_mask is 0 are ignored (even if NaN).
        prompt_mask: [B, P] 1 = prompt token with a log-prob (the first real token has none).
    Returns:
        [B] confidence in (0, 1], NaN for a row without any masked-in token.
    """
    valid = prompt_mask.bool()
    total = prompt_logprobs.double().masked_fill(~valid, 0.0).sum(dim=1)
    return torch.exp(total / valid.sum(dim=1)).to(prompt_logprobs.dtype)
