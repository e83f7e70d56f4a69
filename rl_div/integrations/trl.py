"""rl_div inside TRL's GRPOTrainer: our rewards as TRL reward functions, and our advantage
estimators and token weights in a small GRPOTrainer subclass.

Rewards::

    from rl_div.integrations.trl import trl_reward
    GRPOTrainer(model=..., reward_funcs=[trl_reward("math_verify")], ...)
    # a group reward needs the verifier's verdicts: one function for the list, verifier first
    GRPOTrainer(model=..., reward_funcs=[trl_reward(["math_verify", "novelty"])], ...)

TRL calls a reward function as ``f(prompts=..., completions=..., completion_ids=..., **columns)``
with the G completions of each prompt next to each other. The adapter turns each row into a
PromptRecord (gold from the ``answer_column`` dataset column), scores the batch with one
:class:`rewards.RewardScorer` over all the listed rewards (verifiers in the killable worker, group
rewards per prompt group, seeing the first verifier's verdicts) and returns the weighted total,
None where it failed (TRL treats None as "no reward", never 0).

Methods::

    from rl_div.integrations.trl import RLDivGRPOTrainer
    RLDivGRPOTrainer(model=..., reward_funcs=[...], args=GRPOConfig(...), train_dataset=...,
                     advantage="arm", advantage_params={"alpha": 1.0}, token_weight="steer")

:class:`RLDivGRPOTrainer` replaces TRL's advantages by ``rl_div.algos.ADVANTAGES[advantage]`` and
multiplies them per token by ``TOKEN_WEIGHTS[token_weight]`` (the ``(B, T)`` advantages TRL's loss
accepts); what TRL logs as advantages is what the loss gets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from trl import GRPOTrainer

from rewards import RewardScorer, RewardSpec
from rewards.registry import REWARDS, is_verifier, reward_scope
from rl_div.algos import ADVANTAGES, TOKEN_WEIGHTS
from rl_div.algos.advantage_base import AdvantageInputs, signal_rows, unscored_verdicts
from rl_div.algos.token_weights import TokenWeightInputs
from rl_div.config.checks import check_params
from rl_div.data import PromptRecord
from rl_div.learner.forward import prompt_logprob_mask
from rl_div.train.prompts import message_list_problem, prompt_fields


def completion_text(completion: Any) -> str:
    """TRL completions are strings, or (conversational) lists of messages: take the last content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


def consecutive_groups(prompts: list[Any]) -> list[int]:
    """Group id per row: rows with the same prompt next to each other share one (TRL's layout)."""
    ids: list[int] = []
    for i, prompt in enumerate(prompts):
        ids.append(ids[-1] if i and prompt == prompts[i - 1] else (ids[-1] + 1 if ids else 0))
    return ids


def _specs(rewards: str | RewardSpec | Sequence[str | RewardSpec], params: dict[str, Any]) -> list[RewardSpec]:
    """RewardSpecs for ``rewards``; a group reward must come after a verifier (it reads its verdicts)."""
    if isinstance(rewards, str | RewardSpec):
        rewards = [rewards]
    if params and len(rewards) != 1:
        raise ValueError("keyword params apply to a single reward; give a list of RewardSpec(name, weight, params)")
    specs = [r if isinstance(r, RewardSpec) else RewardSpec(r, 1.0, dict(params)) for r in rewards]
    if not specs:
        raise ValueError("trl_reward needs at least one reward name")
    seen_verifier = False
    for spec in specs:
        fn = REWARDS.get(spec.name)  # an unknown name fails here, listing the valid ones
        if reward_scope(fn) == "group" and not seen_verifier:
            raise ValueError(
                f"{spec.name!r} is a group reward: it needs a verifier's verdicts, which a separate TRL reward "
                f"function cannot see. List the verifier first in one adapter, e.g. "
                f"trl_reward(['math_verify', {spec.name!r}])")
        seen_verifier = seen_verifier or is_verifier(fn)
    return specs


def _record(prompt: Any, answer: Any, uid: str, meta: dict[str, Any]) -> PromptRecord:
    """One TRL row as a PromptRecord: a conversational prompt (a list of {role, content} messages) keeps
    its turns in ``messages`` as rl-div train's datasets do, instead of becoming the list's repr."""
    if isinstance(prompt, (list, tuple)):
        problem = message_list_problem(prompt)
        if problem is not None:
            raise ValueError(f"a TRL prompt is a string or a list of {{role, content}} messages: {problem}")
    text, messages = prompt_fields(prompt if isinstance(prompt, (list, tuple)) else str(prompt))
    return PromptRecord(prompt=text, answer=str(answer), uid=uid, meta=meta, messages=messages)


def trl_reward(rewards: str | RewardSpec | Sequence[str | RewardSpec], *, answer_column: str = "answer",
               meta_column: str = "meta", record_meta: dict[str, Any] | None = None,
               timeout_s: float = 5.0, isolated: bool = True, plugins: list[str] | None = None,
               **params: Any) -> Callable[..., list[float | None]]:
    """A TRL reward function for one rl_div reward or a weighted list of them (``rewards.REWARDS``).

    rewards: a name (``params`` are its keyword parameters), or a list of names / RewardSpec(name,
    weight, params) scored together and summed with their weights, as ``rl-div train`` does. Group
    rewards (novelty, partition) must follow a verifier in the same list. record_meta: meta given to
    every PromptRecord (default: math answers, math extractor); a dataset column ``meta_column``
    holding a dict per row (e.g. a built-in task's record.meta) is merged over it. When TRL passes
    ``log_metric``, each component's mean is logged as ``rl_div/<reward>``.
    """
    specs = _specs(rewards, params)
    scorer = RewardScorer(specs, timeout_s=timeout_s, isolated=isolated, plugins=list(plugins or []))
    meta = dict(record_meta or {})
    # stateful rewards' tables (outcome_ucb's answer counts): kept for the adapter's lifetime, not in TRL's
    # checkpoints
    state: dict[str, dict[str, Any]] = {}

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        if answer_column not in columns:
            raise KeyError(f"reward {reward.__name__!r} needs the dataset column {answer_column!r}; "
                           f"columns: {sorted(columns)}")
        golds = columns[answer_column]
        row_meta = columns.get(meta_column) or [{}] * len(prompts)
        records = [_record(p, a, str(i), {**meta, **(m or {})})
                   for i, (p, a, m) in enumerate(zip(prompts, golds, row_meta, strict=True))]
        texts = [completion_text(c) for c in completions]
        result = scorer.score(texts, records, consecutive_groups([str(p) for p in prompts]), state)
        log_metric = columns.get("log_metric")
        if callable(log_metric) and len(specs) > 1:
            for key, values in result.components.items():
                finite = [v for v in values if not math.isnan(v)]
                if finite:
                    log_metric(f"rl_div/{key}", sum(finite) / len(finite))
        reward.last_correct = list(result.correct)  # type: ignore[attr-defined]
        return [None if math.isnan(v) else float(v) for v in result.total]

    reward.__name__ = "rl_div_" + "+".join(s.name for s in specs)
    reward.close = scorer.close  # type: ignore[attr-defined]
    # RLDivGRPOTrainer reads the verdicts of the last batch from here (the total is not a verdict)
    reward.has_verifier = scorer.verifier_key is not None  # type: ignore[attr-defined]
    reward.last_correct = []  # type: ignore[attr-defined]
    return reward


# ---- rl_div's estimators inside GRPOTrainer --------------------------------------------------------
# TRL losses whose per-token term is linear in the advantage, so that a (B, T) advantage A * w equals
# rl_div's loss with token weights w >= 0.
_LINEAR_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo")


class RLDivGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with rl_div's advantage estimator and token weights.

    advantage: a name in ``rl_div.algos.ADVANTAGES`` (grpo, arm, passk, unlikeliness, repo, w_reinforce, nsr,
    psr, maxrl, qae, best_of_group, pkpo, or your own); advantage_params: its keyword params (a schedule
    reads TRL's ``state.global_step`` as ``AdvantageInputs.step``). token_weight: a name in
    ``TOKEN_WEIGHTS`` (none, steer, high_entropy_mask, clip_cov, entropy_advantage; not kl_cov, whose KL
    term TRL's loss has no place for).
    correct_reward: where arm, passk and w_reinforce / nsr / psr read correctness: the reward function (index into
    ``reward_funcs`` or its name) whose value > 0.5 means correct, or, for a :func:`trl_reward`
    adapter with a verifier, that verifier's verdicts. None (default): the first such adapter, else
    reward function 0.

    Per generation batch, after TRL scored it: the reward is TRL's weighted sum over reward
    functions; rows without one (every function returned None) are left out and get advantage 0,
    as in ``rl-div train``. Groups are TRL's ``num_generations`` consecutive rows. Methods that
    read the policy (arm: answer and prompt confidence; unlikeliness: pi_old's log-probs; steer:
    p and H_old) get them from one no-grad forward at the sampling temperature, which is exact on
    TRL's on-policy path (num_iterations = 1: pi_old is the policy being updated). Token weights
    are computed over the whole generation batch (rl_div's micro_batch_size = batch size) and
    multiplied into the advantages, giving TRL's loss a (B, T) advantage. TRL's logged
    advantages (the completions table) are replaced by the per-response ones the loss uses, and
    the estimator's metrics (``adv/...``, ``arm/...``, ``steer/...``) go to TRL's metrics.
    Supports one process (no multi-GPU gather of per-token statistics).
    """

    def __init__(self, *args: Any, advantage: str = "grpo", advantage_params: dict[str, Any] | None = None,
                 token_weight: str = "none", token_weight_params: dict[str, Any] | None = None,
                 correct_reward: int | str | None = None, **kwargs: Any) -> None:
        ADVANTAGES.get(advantage)  # unknown names, parameters and parameter types fail before the model loads
        TOKEN_WEIGHTS.get(token_weight)
        check_params("advantage_params", f"advantage {advantage!r}", ADVANTAGES[advantage],
                     dict(advantage_params or {}), 1)
        check_params("token_weight_params", f"token weight {token_weight!r}", TOKEN_WEIGHTS[token_weight],
                     dict(token_weight_params or {}), 1)
        super().__init__(*args, **kwargs)
        self.rl_div_advantage, self.rl_div_advantage_params = advantage, dict(advantage_params or {})
        self.rl_div_token_weight, self.rl_div_token_weight_params = token_weight, dict(token_weight_params or {})
        names = list(self.reward_func_names)
        if correct_reward is None:
            correct_reward = next((i for i, f in enumerate(self.reward_funcs) if getattr(f, "has_verifier", False)), 0)
        if isinstance(correct_reward, str):
            if correct_reward not in names:
                raise ValueError(f"correct_reward {correct_reward!r} is not a reward function; have {names}")
            correct_reward = names.index(correct_reward)
        if not 0 <= correct_reward < len(names):
            raise ValueError(f"correct_reward index {correct_reward} out of range for {len(names)} reward functions")
        self.rl_div_correct_index = correct_reward
        if self.accelerator.num_processes != 1:
            raise NotImplementedError("RLDivGRPOTrainer runs in one process (per-token statistics are not gathered)")
        if self.args.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError("RLDivGRPOTrainer sums the rewards (multi_objective_aggregation='sum_then_normalize')")
        if TOKEN_WEIGHTS.needs(token_weight).reweights:
            if self.num_iterations != 1:
                raise ValueError(f"token_weight {token_weight!r} needs num_iterations=1 (weights use pi_old = pi)")
            if self.loss_type not in _LINEAR_LOSSES:
                raise ValueError(f"token_weight {token_weight!r} needs loss_type in {_LINEAR_LOSSES}, "
                                 f"got {self.loss_type!r}")
        self._rl_div_rewards_per_func: torch.Tensor | None = None

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> torch.Tensor:
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rl_div_rewards_per_func = rewards  # [B, n_funcs]; read right after TRL's own advantages
        return rewards

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        assert self._rl_div_rewards_per_func is not None
        advantages, weights, metrics = self.rl_div_advantages(out, self._rl_div_rewards_per_func, mode)
        out["advantages"] = advantages if weights is None else advantages[:, None] * weights
        logged = self._logs["advantages"]  # TRL appended its own B values last: replace them
        for _ in range(min(advantages.numel(), len(logged))):
            logged.pop()
        logged.extend(advantages.tolist())
        for name, value in metrics.items():
            self._metrics[mode][name].append(float(value))
        return out

    def rl_div_advantages(self, out: dict[str, Any], rewards_per_func: torch.Tensor, mode: str
                          ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
        """Advantages [B], token weights [B, T] or None, metrics, for one scored generation batch."""
        device = out["completion_ids"].device
        per_func = rewards_per_func.to(device)
        weights = self.reward_weights.to(device)
        total = (per_func * weights[None, :]).nansum(dim=1)
        total[torch.isnan(per_func).all(dim=1)] = torch.nan
        b = total.numel()
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        group_index = torch.arange(b, device=device) // group_size
        mask = out["completion_mask"].float()
        if "tool_mask" in out:
            mask = mask * out["tool_mask"].float()
        stats = self._policy_stats(out) if self._needs_policy_stats() else {}
        correct = self._correct(per_func)
        needs = ADVANTAGES.needs(self.rl_div_advantage)  # a NaN verdict leaves the row out for passk, arm, nsr...
        rows = signal_rows(total, correct, needs).nonzero().squeeze(1)
        advantages = torch.zeros(b, device=device)
        metrics: dict[str, float] = {"adv/zero_signal_frac": 1.0}
        if rows.numel():
            pick = {k: v[rows] for k, v in stats.items()}
            adv_out = ADVANTAGES[self.rl_div_advantage](AdvantageInputs(
                rewards=total[rows], group_index=group_index[rows], correct=correct[rows],
                response_logprobs=pick.get("logprobs"), behavior_logprobs=pick.get("logprobs"),
                response_mask=mask[rows], prompt_logprobs=pick.get("prompt_logprobs"),
                prompt_mask=prompt_logprob_mask(out["prompt_mask"][rows]).float(), step=self.state.global_step),
                **self.rl_div_advantage_params)
            advantages[rows] = adv_out.advantages.to(advantages.dtype)
            metrics = dict(adv_out.metrics)
        metrics["adv/unscored_verdicts"] = float(unscored_verdicts(total, correct, needs))
        if not TOKEN_WEIGHTS.needs(self.rl_div_token_weight).reweights:
            return advantages, None, metrics
        tw = TOKEN_WEIGHTS[self.rl_div_token_weight](TokenWeightInputs(
            advantages=advantages[:, None].expand_as(mask), logprobs=stats["logprobs"], old_logprobs=stats["logprobs"],
            mask=mask, old_entropy=stats.get("entropy"), entropy=stats.get("entropy")),
            **self.rl_div_token_weight_params)
        if tw.kl_penalty_coef is not None:
            raise ValueError(f"token_weight {self.rl_div_token_weight!r} adds a KL term TRL's loss cannot take")
        if bool((tw.weights[mask.bool()] < 0).any()):
            raise ValueError(f"token_weight {self.rl_div_token_weight!r} gave negative weights; TRL's clipped "
                             "loss equals rl_div's only for weights >= 0")
        return advantages, tw.weights, {**metrics, **tw.metrics}

    def _correct(self, per_func: torch.Tensor) -> torch.Tensor:
        """[B] 1/0 (NaN unscored) from the chosen reward function or its adapter's verifier."""
        fn = self.reward_funcs[self.rl_div_correct_index]
        if getattr(fn, "has_verifier", False):
            return torch.tensor(fn.last_correct, dtype=per_func.dtype, device=per_func.device)
        return per_func[:, self.rl_div_correct_index]

    def _needs_policy_stats(self) -> bool:
        """Whether the estimator or the token weight reads the policy, as their declarations say (an
        estimator declaring nothing is assumed to: rl_div.algos.advantage_base.undeclared_advantage_needs)."""
        adv = ADVANTAGES.needs(self.rl_div_advantage)
        return adv.policy_logprobs or adv.behavior_logprobs or TOKEN_WEIGHTS.needs(self.rl_div_token_weight).reweights

    @torch.no_grad()
    def _policy_stats(self, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One no-grad forward of the generation batch at the sampling temperature (TRL's fused head):
        logprobs of the completion tokens [B, T], their entropy when the token weight declares it reads
        it; prompt_logprobs [B, P] aligned with prompt_ids (first position 0, masked by
        prompt_logprob_mask) when the estimator declares it reads them."""
        prompt_ids, completion_ids = out["prompt_ids"], out["completion_ids"]
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        with_prompt = ADVANTAGES.needs(self.rl_div_advantage).prompt_logprobs
        keep = ids.shape[1] - 1 if with_prompt else completion_ids.shape[1]
        logps, entropy, _ = self._get_per_token_logps_and_entropies(
            self.model, ids, attention, keep, batch_size=self.args.per_device_train_batch_size,
            compute_entropy=TOKEN_WEIGHTS.needs(self.rl_div_token_weight).entropy)
        t = completion_ids.shape[1]
        stats = {"logprobs": logps[:, -t:].float()}
        if entropy is not None:
            stats["entropy"] = entropy[:, -t:].float()
        if with_prompt:
            stats["prompt_logprobs"] = torch.cat([torch.zeros_like(logps[:, :1]), logps[:, :-t]], dim=1).float()
        return stats
