"""REPO (Petrenko et al. 2026; rl_div.algos.repo): no authors' code exists, so a float64 reference
written here from the paper's equation (A~_i = A_i - zeta * l_i) with plain loops, hand-worked values,
the row-local split over micro-batches, and the fused on-policy update against the separate forward."""

from __future__ import annotations

import math

import pytest
import torch

from rl_div.algos import ADVANTAGES, AdvantageInputs
from rl_div.algos.row_local import ROW_LOCAL, apply_shaping, full_params
from rl_div.config import load_config


def reference_repo(rewards: list[float], groups: list[int], logprobs: list[list[float]], lengths: list[int], *,
                   zeta: float = 0.1, logprob: str = "mean", shape_zero_signal_groups: bool = False,
                   scale: str = "group", eps: float = 1e-6) -> list[float]:
    """Loops in Python floats (float64): GRPO per group (population std), then -zeta * l_i on the rows of
    groups whose rewards differ (or every row), l_i the mean / sum of the row's first lengths[i] log-probs;
    an empty row is not shaped."""
    out = []
    all_rewards = [r for r in rewards]
    batch_mean = sum(all_rewards) / len(all_rewards)
    batch_std = math.sqrt(sum((r - batch_mean) ** 2 for r in all_rewards) / len(all_rewards))
    for i, r in enumerate(rewards):
        mine = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i]]
        mean = sum(mine) / len(mine)
        std = math.sqrt(sum((x - mean) ** 2 for x in mine) / len(mine))
        flat = all(x == mine[0] for x in mine)
        a = 0.0 if flat else (r - mean) / {"group": std + eps, "batch": batch_std + eps, "none": 1.0}[scale]
        if (shape_zero_signal_groups or not flat) and lengths[i] > 0:
            tokens = logprobs[i][:lengths[i]]
            lp = sum(tokens) / len(tokens) if logprob == "mean" else sum(tokens)
            a -= zeta * lp
        out.append(a)
    return out


def test_hand_worked_values() -> None:
    inputs = AdvantageInputs(
        rewards=torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64), group_index=torch.tensor([0, 0, 1, 1]),
        response_logprobs=torch.tensor([[-1.0, -3.0], [-0.5, -9.0], [-2.0, 0.0], [-1.0, -1.0]], dtype=torch.float64),
        response_mask=torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1]], dtype=torch.float64))
    out = ADVANTAGES["repo"](inputs)
    # group 0: A = +-0.5 / (0.5 + 1e-6); l = -2 and -0.5 (padding's -9 unread): +0.2 and +0.05
    a = 0.5 / (0.5 + 1e-6)
    assert out.advantages.tolist() == pytest.approx([a + 0.2, -a + 0.05, 0.0, 0.0], abs=1e-12)
    assert out.metrics["repo/shaped_frac"] == 0.5 and out.metrics["adv/zero_signal_frac"] == 0.5
    every = ADVANTAGES["repo"](inputs, zeta=1.0, logprob="sum", shape_zero_signal_groups=True, scale="none")
    # sums -4, -0.5, -2, -2; group 0 centred rewards +-0.5
    assert every.advantages.tolist() == pytest.approx([0.5 + 4.0, -0.5 + 0.5, 2.0, 2.0], abs=1e-12)


def random_inputs(seed: int, dtype: torch.dtype) -> tuple[AdvantageInputs, list[int]]:
    g = torch.Generator().manual_seed(seed)
    groups, size, width = 5, 4, 7
    b = groups * size
    rewards = torch.randint(0, 2, (b,), generator=g).to(dtype)
    rewards[0:4] = 1.0  # all correct
    rewards[4:8] = 0.0  # all wrong
    rewards[8:12] = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=dtype)  # a tie in rank
    rewards[12:16] = torch.tensor([0.0, 0.3, 0.0, 0.7], dtype=dtype)  # continuous rewards
    lengths = torch.randint(1, width + 1, (b,), generator=g)
    lengths[9] = 0  # an empty response: NaN log-prob, unshaped
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(dtype)
    logprobs = (-4 * torch.rand(b, width, generator=g, dtype=dtype)).masked_fill(~mask.bool(), math.nan)
    inputs = AdvantageInputs(rewards=rewards, group_index=torch.arange(groups).repeat_interleave(size),
                             response_logprobs=logprobs, response_mask=mask,
                             prompt_mask=torch.ones(b, 3, dtype=dtype))
    return inputs, lengths.tolist()


@pytest.mark.parametrize("params", [{}, {"zeta": 0.5, "logprob": "sum"}, {"shape_zero_signal_groups": True},
                                    {"scale": "none", "zeta": 0.0}, {"scale": "batch"}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("micro", [1, 3, 20])
def test_matches_the_reference_whole_and_over_micro_batches(params: dict, dtype: torch.dtype, micro: int) -> None:
    inputs, lengths = random_inputs(micro, dtype)
    assert inputs.response_logprobs is not None and inputs.response_mask is not None
    expected = reference_repo(inputs.rewards.double().tolist(), inputs.group_index.tolist(),
                              inputs.response_logprobs.double().tolist(), lengths, **params)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    whole = ADVANTAGES["repo"](inputs, **params)
    assert whole.advantages.dtype == dtype
    assert whole.advantages.double().tolist() == pytest.approx(expected, abs=tol, rel=tol)
    split, full = ROW_LOCAL["repo"], full_params("repo", params)
    part = split.reward_part(AdvantageInputs(rewards=inputs.rewards, group_index=inputs.group_index), **full)
    pieces = []
    for s in range(0, inputs.rewards.numel(), micro):
        rows = slice(s, s + micro)
        values = split.row_values(inputs.response_logprobs[rows], inputs.response_mask[rows], None,
                                  inputs.prompt_mask[rows], dtype=part.base.dtype, **full)  # type: ignore[index]
        pieces.append(apply_shaping(part.base[rows], part.shaped[rows], values["shaping"])[1])
    torch.testing.assert_close(torch.cat(pieces), whole.advantages, rtol=0, atol=0)
    assert math.isfinite(whole.metrics["repo/sample_logprob_mean"])


def test_declaration_and_preset() -> None:
    needs = ADVANTAGES.needs("repo")
    assert needs.row_local and needs.response_logprobs and not needs.prompt_logprobs
    assert load_config(None, ["algo=repo"]).algo.advantage == "repo"
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        ADVANTAGES["repo"](random_inputs(0, torch.float64)[0], logprob="max")


# ---- the fused update: REPO finished from each micro-batch's own forward, as ARM is -----------------
from test_onpolicy import (  # noqa: E402  (the on-policy tests' real learner, tiny model and sampled batch)
    ARM_REWARDS,
    assert_same_steps,
    cfg_of,
    model_path,  # noqa: F401  (fixture)
    sampled,  # noqa: F401  (fixture)
    sampled_params,
    steps,
    with_rewards,
)

from rl_div.data import RolloutBatch  # noqa: E402
from rl_div.learner.onpolicy import fuses_policy_forward  # noqa: E402


@pytest.mark.parametrize("overrides", [
    [],
    ["train.micro_batch_size=5", "algo.advantage_params.zeta=1.0", "algo.advantage_params.logprob=sum"],
    ["train.micro_batch_size=3", "algo.advantage_params.shape_zero_signal_groups=true",
     "algo.token_weight=entropy_advantage"],
], ids=["micro8", "micro5_sum", "micro3_all_groups_entropy_adv"])
def test_fused_repo_logs_and_trains_as_the_separate_forward_does(model_path: str, sampled: RolloutBatch,  # noqa: F811
                                                                overrides: list[str]) -> None:
    cfg = cfg_of(f"model.path={model_path}", "algo=repo", *overrides)
    assert fuses_policy_forward(cfg, [])[0] and cfg.train.micro_batch_size < sampled.size
    batch = with_rewards(sampled, ARM_REWARDS)
    old_metrics, old_params, old_adv = steps(cfg, model_path, batch, fused=False, n=2)
    new_metrics, new_params, new_adv = steps(cfg, model_path, batch, fused=True, n=2)
    assert all(m["train/optimizer_steps"] == 1 for m in old_metrics)
    shaped = 1.0 if "algo.advantage_params.shape_zero_signal_groups=true" in overrides else 0.75
    assert old_metrics[0]["repo/shaped_frac"] == shaped and old_metrics[0]["repo/shaping_mean"] > 0
    assert old_metrics[0]["repo/sample_logprob_mean"] != old_metrics[1]["repo/sample_logprob_mean"]
    assert_same_steps(old_metrics, new_metrics, old_adv, new_adv)
    # the all-correct group (A = 0) is shaped only when asked
    assert bool((new_adv[0][4:8] != 0).all()) is (shaped == 1.0)
    moved = 0
    for k, v in old_params.items():
        torch.testing.assert_close(new_params[k], v, rtol=1e-6, atol=1e-6, msg=k)
        moved += int(not torch.equal(v, sampled_params(model_path)[k]))
    assert moved > 0
