"""Issue 28 item 2: per-problem entropy and diversity at evaluation, and intervals for paired
differences that keep their 5% false-positive rate with 2, 3 and 5 seeds.

The false-positive rates are measured on simulated no-effect comparisons pushed through the report's
own path (EvalPoints -> paired_differences -> the * rule) and printed (pytest -s shows them)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from rl_div.data import PromptRecord, RolloutBatch
from rl_div.report.intervals import marked, t_interval, two_way_interval
from rl_div.report.page import fmt_diff
from rl_div.report.summarize import EvalPoint, paired_differences, per_problem_values, summarize_evals
from rl_div.train.step_stats import eval_summary


def tiny_batch() -> RolloutBatch:
    """2 problems x 2 samples; padding entropies are NaN (they must not leak in)."""
    nan = math.nan
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    entropy = torch.tensor([[1.0, 0.5, nan], [2.0, nan, nan], [0.2, 0.4, 0.6], [1.0, 1.0, nan]])
    prompts = [PromptRecord("p0", "1", uid="u0")] * 2 + [PromptRecord("p1", "2", uid="u1")] * 2
    return RolloutBatch(
        prompt_ids=torch.zeros(4, 1, dtype=torch.long), prompt_mask=torch.ones(4, 1, dtype=torch.long),
        response_ids=torch.zeros(4, 3, dtype=torch.long), response_mask=mask, behavior_logprobs=torch.zeros(4, 3),
        group_index=torch.tensor([0, 0, 1, 1]), truncated=torch.zeros(4, dtype=torch.bool), prompts=prompts,
        response_texts=["1", "3", "2", "2"], rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]),
        correct=torch.tensor([1.0, 0.0, 1.0, 1.0]), answers=["1", "3", "2", "2"], old_entropy=entropy)


def test_per_problem_entropy_and_diversity_by_hand() -> None:
    # problem 0: orthogonal embeddings -> 1 - cos = 1, Vendi = exp(ln 2) = 2; problem 1: identical -> 0 and 1
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    metrics, problems = eval_summary(tiny_batch(), embeddings)
    # entropy: problem 0 has tokens 1.0, 0.5 | 2.0 (3 tokens, mean 3.5 / 3); problem 1 has 0.2, 0.4, 0.6 | 1.0, 1.0
    assert problems[0]["entropy"] == pytest.approx(3.5 / 3) and problems[0]["tokens"] == 3
    assert problems[1]["entropy"] == pytest.approx(3.2 / 5) and problems[1]["tokens"] == 5
    assert problems[0]["diversity"]["emb_diversity"] == pytest.approx(1.0)
    assert problems[0]["diversity"]["vendi"] == pytest.approx(2.0)
    assert problems[1]["diversity"]["emb_diversity"] == pytest.approx(0.0, abs=1e-12)
    assert problems[1]["diversity"]["vendi"] == pytest.approx(1.0)
    # the report's per-problem values average to the logged values: entropy is token-weighted, 6.7 / 8
    values = per_problem_values(problems, [1, 2])
    assert metrics["policy/entropy"] == pytest.approx(6.7 / 8)
    assert values["policy/entropy"] == pytest.approx([3.5 / 4, 3.2 / 4])
    assert values["policy/entropy"].mean() == pytest.approx(metrics["policy/entropy"])
    assert values["div/vendi"] == pytest.approx([2.0, 1.0]) and metrics["div/vendi"] == pytest.approx(1.5)
    assert values["div/emb_diversity"].mean() == pytest.approx(metrics["div/emb_diversity"])


def test_old_eval_files_still_report_without_the_new_columns() -> None:
    _, problems = eval_summary(tiny_batch(), np.eye(2)[[0, 1, 0, 0]])
    old = [{k: v for k, v in p.items() if k not in ("entropy", "tokens", "diversity")} for p in problems]
    assert "policy/entropy" not in per_problem_values(old, [1]) and "div/vendi" not in per_problem_values(old, [1])
    points = [EvalPoint(s, {"pass@1": 0.75, "policy/entropy": 0.8 + 0.1 * s, "n": 2}, old) for s in range(3)]
    bands = summarize_evals(points)
    assert bands["pass@1"].has_ci and not bands["policy/entropy"].has_ci  # seed range only, as before
    base = [EvalPoint(s, {"pass@1": 0.5, "policy/entropy": 0.5 + 0.05 * s * s, "n": 2}, old) for s in range(3)]
    diff = paired_differences(points, base)["policy/entropy"]
    per_seed = np.array([0.3 + 0.1 * s - 0.05 * s * s for s in range(3)])  # one value per run: the t interval
    half = stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / math.sqrt(3)
    assert (diff.ci_lo, diff.ci_hi) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))


def test_intervals_by_hand() -> None:
    # two seeds: mean 1, sd sqrt(2), t_{0.975, 1} = 12.706
    lo, hi = t_interval(np.array([0.0, 2.0]))
    assert (lo, hi) == pytest.approx((1 - 12.7062047 * 1.0, 1 + 12.7062047 * 1.0))
    assert all(math.isnan(x) for x in t_interval(np.array([0.3])))
    assert all(math.isnan(x) for x in two_way_interval(np.array([[0.1, 0.2, 0.3]])))  # one seed: no interval
    assert two_way_interval(np.full((3, 20), 0.25)) == pytest.approx((0.25, 0.25))  # no variation at all
    # [2, 3] table: seed means (0.5, 1.5) -> var 0.5 / 2; problem means (0.5, 1.5, 1) -> var 0.25 / 3;
    # additive, so no residual; V = 1 / 3, t with 2 - 1 = 1 degree of freedom: 12.706
    lo, hi = two_way_interval(np.array([[0.0, 1.0, 0.5], [1.0, 2.0, 1.5]]))
    half = 12.7062047 * math.sqrt(1 / 3)
    assert (lo, hi) == pytest.approx((1 - half, 1 + half))
    # [3, 2] table [[0, 2], [1, 2], [2, 2]]: seed means (1, 1.5, 2) -> var 0.25 / 3; problem means (1, 2)
    # -> var 0.5 / 2; residuals (-.5, .5), (0, 0), (.5, -.5): MSE = 1 / (2 * 1) -> 0.5 / 6;
    # V = 1/12 + 1/4 - 1/12 = 1/4; t_2 = 4.303
    lo, hi = two_way_interval(np.array([[0.0, 2.0], [1.0, 2.0], [2.0, 2.0]]))
    half = 4.30265273 * 0.5
    assert (lo, hi) == pytest.approx((1.5 - half, 1.5 + half))
    # interaction only (no seed or problem main effect): V floors at MSE / (S P) = 1 / 4, not 0
    lo, hi = two_way_interval(np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert (lo, hi) == pytest.approx((0.5 - 12.7062047 * 0.5, 0.5 + 12.7062047 * 0.5))


def test_one_seed_prints_no_mark() -> None:
    _, problems = eval_summary(tiny_batch(), np.eye(2)[[0, 1, 0, 0]])
    one = paired_differences([EvalPoint(0, {"pass@1": 1.0, "policy/entropy": 0.9, "n": 2}, problems)],
                             [EvalPoint(0, {"pass@1": 0.5, "policy/entropy": 0.1, "n": 2}, None)])
    assert one["policy/entropy"].mean == pytest.approx(0.8)
    assert fmt_diff(one["policy/entropy"]) == "+0.800"  # no [x, x]* from one seed
    assert not marked(0.1, 0.2, 1) and marked(0.1, 0.2, 2) and not marked(-0.1, 0.2, 5)


# ---- the false-positive rate on simulated comparisons ---------------------------------------------------
N_SAMPLES, N_PROBLEMS = 8, 24
CORRECT, WRONG = ["r0", "r1", "r2", "r3"], ["w0", "w1", "w2", "w3", "w4", "w5"]


def simulated_run(rng: np.random.Generator, seed: int, difficulty: np.ndarray, shift: float,
                  seed_sd: float, noise_sd: float, per_problem: bool) -> EvalPoint:
    """One trained run: a seed effect on correctness (logit), entropy and Vendi, problem x run noise,
    binomial sampling; per_problem=False writes an eval file from before issue 28 (no entropy/diversity)."""
    run_effect, ent_effect, vendi_effect = rng.normal(0, seed_sd, 3)
    logits = difficulty + shift + run_effect + rng.normal(0, noise_sd, difficulty.size)
    c = rng.binomial(N_SAMPLES, 1 / (1 + np.exp(-logits)))
    problems = []
    right, wrong = rng.integers(0, len(CORRECT), (c.size, N_SAMPLES)), rng.integers(0, len(WRONG), (c.size, N_SAMPLES))
    for p, cp in enumerate(c):
        answers = [CORRECT[i] for i in right[p, :cp]] + [WRONG[i] for i in wrong[p, cp:]]
        row = {"uid": f"u{p}", "n": N_SAMPLES, "c": int(cp), "answers": answers,
               "correct": [True] * cp + [False] * (N_SAMPLES - cp)}
        if per_problem:
            row.update(entropy=1.0 + shift + ent_effect + rng.normal(0, noise_sd), tokens=float(rng.integers(32, 48)),
                       diversity={"vendi": 3.0 + shift + vendi_effect + rng.normal(0, noise_sd)})
        problems.append(row)
    metrics = {"pass@1": float(c.mean() / N_SAMPLES), "mean@n": 0.0, "maj@n": 0.0, "n": N_SAMPLES,
               "policy/entropy": 1.0 + shift + ent_effect, "div/vendi": 3.0 + shift + vendi_effect}
    metrics.update({f"pass@{k}": 0.0 for k in (2, 4, 8)})
    return EvalPoint(seed, metrics, problems)


def mark_rates(n_seeds: int, trials: int, shift: float, seed_sd: float, noise_sd: float, per_problem: bool,
               rng_seed: int) -> dict[str, float]:
    """Share of simulated comparisons (variant shifted by ``shift``) in which each printed difference is marked."""
    rng = np.random.default_rng(rng_seed)
    counts: dict[str, int] = {}
    for _ in range(trials):
        difficulty = rng.normal(0.0, 1.5, N_PROBLEMS)
        variant = [simulated_run(rng, s, difficulty, shift, seed_sd, noise_sd, per_problem) for s in range(n_seeds)]
        baseline = [simulated_run(rng, s, difficulty, 0.0, seed_sd, noise_sd, per_problem) for s in range(n_seeds)]
        for key, band in paired_differences(variant, baseline).items():
            if key in ("pass@1", "pass@8", "maj@n", "div/distinct_correct_answers", "policy/entropy", "div/vendi"):
                counts[key] = counts.get(key, 0) + marked(band.ci_lo, band.ci_hi, band.n_seeds)
    return {k: v / trials for k, v in counts.items()}


TRIALS = 400
# binomial Monte Carlo error of a 5% rate over TRIALS comparisons: 2.5 standard errors allowed
LIMIT = 0.05 + 2.5 * math.sqrt(0.05 * 0.95 / TRIALS)


@pytest.mark.parametrize("n_seeds", [2, 3, 5])
@pytest.mark.parametrize(("regime", "seed_sd", "noise_sd", "per_problem"), [
    ("seed effects dominate", 0.6, 0.3, True),
    ("problems dominate", 0.05, 0.6, True),
    ("eval files from before issue 28", 0.6, 0.3, False),
])
def test_false_positive_rate_of_every_printed_difference(n_seeds: int, regime: str, seed_sd: float,
                                                         noise_sd: float, per_problem: bool) -> None:
    rates = mark_rates(n_seeds, TRIALS, 0.0, seed_sd, noise_sd, per_problem, rng_seed=100 + n_seeds)
    print(f"\n[no effect, {n_seeds} seeds, {regime}] * rate per metric over {TRIALS} comparisons: "
          + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()) + f" (limit {LIMIT:.3f})")
    assert set(rates) >= {"pass@1", "pass@8", "maj@n", "policy/entropy", "div/vendi"}
    assert max(rates.values()) <= LIMIT, rates


def test_a_real_effect_is_still_marked() -> None:
    # a shift of 1.5 (logit of correctness, nats of entropy, Vendi) against seed effects of sd 0.3
    rates = mark_rates(5, 100, 1.5, 0.3, 0.3, True, rng_seed=7)
    print("\n[shift 1.5, 5 seeds] * rate: " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()))
    assert rates["pass@1"] >= 0.9 and rates["policy/entropy"] >= 0.9 and rates["div/vendi"] >= 0.9
    rates = mark_rates(3, 100, 1.5, 0.3, 0.3, False, rng_seed=8)  # one value per run, 3 seeds: t_2
    print("[shift 1.5, 3 seeds, per-run entropy and Vendi] * rate: "
          + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()))
    assert rates["policy/entropy"] >= 0.8 and rates["div/vendi"] >= 0.8
