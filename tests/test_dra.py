"""DRA-GRPO's redundancy-weighted reward (rewards/dra.py) against the authors' code transcribed here, by
hand, with NaN verdicts, and with the real packaged embedder (each distinct text embedded once)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rewards import REWARDS, RewardScorer, RewardSpec, redundancy_weights
from rewards.embedding import embed
from rl_div.data import PromptRecord


def authors_smi_reweighting(embeddings: np.ndarray, rewards: torch.Tensor) -> torch.Tensor:
    """Transcribed from xiwenc1/DRA-GRPO at 088266167eb844482be2f0b98b5a60f7951b7050,
    src/open_r1/trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions
    (``if self.SMI_reweighting:``; one process, so gather is the identity):

        embeddings = torch.from_numpy(embeddings).to(device)
        embeddings = F.normalize(embeddings, p=2, dim=1)
        similarity_matrix = embeddings @ embeddings.T
        similarity_sums = similarity_matrix.sum(dim=1)
        diversity_weights = 1.0 / (similarity_sums + 1e-6)
        rewards = rewards * diversity_weights
    """
    e = F.normalize(torch.from_numpy(embeddings), p=2, dim=1)
    similarity_matrix = e @ e.T
    similarity_sums = similarity_matrix.sum(dim=1)
    diversity_weights = 1.0 / (similarity_sums + 1e-6)
    return rewards * diversity_weights


def test_weights_by_hand() -> None:
    # e0 = e1 (duplicates), e2 orthogonal to both, e3 at 60 degrees from e2 (unnormalised: scaled by 3)
    e = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.5, 1.5 * math.sqrt(3)]])
    # sums: e0: 1 + 1 + 0 + 0 = 2; e2: 0 + 0 + 1 + 0.5 = 1.5; e3: 0.5 + 1 = 1.5
    assert redundancy_weights(e) == pytest.approx([1 / (2 + 1e-6), 1 / (2 + 1e-6), 1 / 1.500001, 1 / 1.500001])


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_authors_code_on_random_embeddings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = int(rng.integers(2, 9))
    e = rng.normal(size=(g, 16))
    e[-1] = e[0] * 3.0  # a duplicate direction (a tie)
    rewards = rng.integers(0, 2, size=g).astype(np.float64)
    expected = authors_smi_reweighting(e, torch.from_numpy(rewards)).numpy()
    np.testing.assert_allclose(rewards * redundancy_weights(e), expected, rtol=1e-12, atol=1e-15)


def test_reward_on_a_group_with_the_real_embedder() -> None:
    completions = [r"The answer is \boxed{4}", r"The answer is \boxed{4}", r"So 2+2 gives \boxed{4}",
                   r"I think \boxed{5}", "no idea"]
    answers = ["4", "4", "4", "5", None]
    correct = [1.0, 1.0, 1.0, 0.0, math.nan]
    records = [PromptRecord("2+2?", "4")] * 5
    got = REWARDS["dra"](completions, answers, correct, records)
    want = authors_smi_reweighting(embed(completions), torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])).tolist()
    assert got[:4] == pytest.approx(want[:4], rel=1e-5)
    assert math.isnan(got[4])  # the verifier failed: NaN, never 0
    assert got[0] == got[1] < got[2]  # the duplicates are more redundant than the paraphrase
    on_answers = REWARDS["dra"](completions, answers, correct, records, text="answer")
    assert on_answers[0] == on_answers[1] == on_answers[2]  # the same answer text: the same weight
    with pytest.raises(ValueError, match="'completion' or 'answer'"):
        REWARDS["dra"](completions, answers, correct, records, text="prompt")


def test_scored_per_group_in_a_batch() -> None:
    completions = [r"so \boxed{4}", r"so \boxed{4}", r"hence \boxed{5}", r"\boxed{9}", r"so \boxed{9}", r"\boxed{8}"]
    records = [PromptRecord("q0", "4")] * 3 + [PromptRecord("q1", "9")] * 3
    groups = [0, 0, 0, 1, 1, 1]
    with RewardScorer([RewardSpec("math_verify", 0.0), RewardSpec("dra", 1.0)], isolated=False) as scorer:
        result = scorer.score(completions, records, groups)
    assert result.correct == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    for rows in ([0, 1, 2], [3, 4, 5]):
        e = embed([completions[i] for i in rows])
        quality = torch.tensor([result.correct[i] for i in rows], dtype=torch.float64)
        want = authors_smi_reweighting(e.astype(np.float64), quality).tolist()
        assert [result.components["dra"][i] for i in rows] == pytest.approx(want, rel=1e-5)
