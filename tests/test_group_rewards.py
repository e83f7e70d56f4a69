"""novelty (EVOL-RL) and partition (DARLING): pure functions on hand-made groups, then the real
packaged embedder once."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import pytest

from rewards import EQUIVALENCE_TESTS, REWARDS, novelty_rewards, novelty_scores, partition_diversity
from rewards.novelty import correctness_classes, raw_novelty
from rl_div.data import PromptRecord

# Five responses: 0-2 correct (class 1), 3-4 incorrect (class 0). S[2, 3] is negative (clipped to 0).
SIM = np.array([
    [1.0, 0.8, 0.2, 0.5, 0.1],
    [0.8, 1.0, 0.4, 0.3, 0.6],
    [0.2, 0.4, 1.0, -0.3, 0.9],
    [0.5, 0.3, -0.3, 1.0, 0.7],
    [0.1, 0.6, 0.9, 0.7, 1.0],
])
CLASSES = [1, 1, 1, 0, 0]
# By hand, u_i = 1 - (0.5 * mean over own class + 0.5 * max over all others):
#   u0 = 1 - (0.5*(0.8+0.2)/2 + 0.5*0.8) = 0.35      u3 = 1 - (0.5*0.7 + 0.5*max(0.5,0.3,0,0.7)) = 0.3
#   u1 = 1 - (0.5*(0.8+0.4)/2 + 0.5*0.8) = 0.30      u4 = 1 - (0.5*0.7 + 0.5*max(0.1,0.6,0.9,0.7)) = 0.2
#   u2 = 1 - (0.5*(0.2+0.4)/2 + 0.5*0.9) = 0.40  (its max, 0.9, is with incorrect response 4)
RAW = [0.35, 0.30, 0.40, 0.30, 0.20]
# min-max within class: correct (0.30..0.40) -> 0.5, 0, 1; incorrect (0.2..0.3) -> 1, 0
NORMALISED = [0.5, 0.0, 1.0, 1.0, 0.0]


def test_raw_novelty_by_hand() -> None:
    assert raw_novelty(SIM, CLASSES) == pytest.approx(RAW)


def test_novelty_scores_by_hand() -> None:
    assert novelty_scores(SIM, CLASSES) == pytest.approx(NORMALISED)


def test_left_out_responses_do_not_count() -> None:
    # A sixth response identical to everyone (S = 1) but without a class changes nothing.
    sim = np.ones((6, 6))
    sim[:5, :5] = SIM
    u = novelty_scores(sim, [*CLASSES, None])
    assert u[:5] == pytest.approx(NORMALISED)
    assert math.isnan(u[5])


def test_lone_member_and_flat_class_get_half() -> None:
    sim = np.array([[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0]])
    assert novelty_scores(sim, [1, 1, 0]) == pytest.approx([0.5, 0.5, 0.5])  # flat pair, lone member
    assert novelty_scores(np.ones((1, 1)), [1]) == pytest.approx([0.5])


def test_novelty_rewards_mapping() -> None:
    answers = ["a", "b", "c", "d", "e", None, "g"]
    correct = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, math.nan]
    u = [*NORMALISED, 0.7, 0.7]
    out = novelty_rewards(u, answers, correct)
    # correct 0.5 + 0.5u, incorrect -1 + 0.5u, unparseable -1, unverified NaN
    assert out[:6] == pytest.approx([0.75, 0.5, 1.0, -0.5, -1.0, -1.0])
    assert math.isnan(out[6])
    assert correctness_classes(answers, correct) == [1, 1, 1, 0, 0, None, None]


def test_correct_always_outranks_incorrect_on_random_groups() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        g = int(rng.integers(2, 9))
        x = rng.normal(size=(g, 4))
        correct = rng.integers(0, 2, size=g).astype(float).tolist()
        classes = [int(c) for c in correct]
        u = novelty_scores(np.corrcoef(x), classes)
        r = novelty_rewards(u.tolist(), ["a"] * g, correct)
        good = [v for v, c in zip(r, correct, strict=True) if c == 1.0]
        bad = [v for v, c in zip(r, correct, strict=True) if c == 0.0]
        if good and bad:
            assert min(good) > max(bad)
        assert all(0.5 <= v <= 1.0 for v in good) and all(-1.0 <= v <= -0.5 for v in bad)


# ---- partition -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("class_ids", "expected"),
    [
        ([0, 0, 1, 2, 0], [0.5, 0.5, 1.0, 1.0, 0.5]),  # (5-3)/4 and (5-1)/4
        ([0, 0, 0, 0], [0.1, 0.1, 0.1, 0.1]),  # (4-4)/3 = 0, floored at 0.1
        ([0, 1], [1.0, 1.0]),
        ([0, 0, 0, 1], [1 / 3, 1 / 3, 1 / 3, 1.0]),  # (4-3)/3
        ([0], [1.0]),  # a group of one: chosen value (the formula divides by zero)
    ],
)
def test_partition_diversity_by_hand(class_ids: list[int], expected: list[float]) -> None:
    assert partition_diversity(class_ids) == pytest.approx(expected)


def test_partition_reward_with_the_answer_test() -> None:
    answers = ["4", "4", "5", None, "4"]
    correct = [1.0, 1.0, 0.0, 0.0, math.nan]
    out = REWARDS["partition"](["x"] * 5, answers, correct, [PromptRecord("q", "4")] * 5, test="answer")
    # classes {0,1,4} {2} {3}: Div = (5-3)/4 = 0.5 for the "4"s; quality 1, 1, 0, 0, NaN
    assert out[:4] == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert math.isnan(out[4])


def test_partition_with_a_registered_equivalence_test() -> None:
    @EQUIVALENCE_TESTS.register("test_same_length", overwrite=True)
    def same_length(completions: list[str], answers: list[str | None]) -> Callable[[int, int], bool]:
        return lambda i, j: len(completions[i]) == len(completions[j])

    completions = ["aa", "bb", "ccc", "dd"]  # classes {0, 1, 3} {2}
    out = REWARDS["partition"](completions, ["1", "2", "3", "4"], [1.0, 1.0, 1.0, 0.0],
                               [PromptRecord("q", "1")] * 4, test="test_same_length")
    assert out == pytest.approx([1 / 3, 1 / 3, 1.0, 0.0])


# ---- the real embedder (packaged all-MiniLM-L6-v2, loaded offline) --------------------------------
Embed = Callable[[list[str]], np.ndarray]


@pytest.fixture(scope="module")
def embed_fn() -> Embed:
    from rewards.embedding import default_model_path, embed

    assert os.path.isdir(default_model_path())  # a local directory: nothing to download
    return embed


def test_real_embedder_paraphrases_are_closer(embed_fn: Embed) -> None:
    texts = ["The cat sat on the mat.", "A cat was sitting on the mat.", "Stock markets fell sharply today."]
    e = embed_fn(texts)
    assert e.shape == (3, 384) and e.dtype == np.float32
    assert np.linalg.norm(e, axis=1) == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.8 > 0.3 > max(sim[0, 2], sim[1, 2])
    assert embed_fn([]).shape == (0, 384)


def test_real_novelty_and_partition_on_a_group(embed_fn: Embed) -> None:
    completions = [r"\boxed{4}", r"\boxed{4.0}", r"\boxed{2+2}", r"\boxed{5}", r"\boxed{five}", "no idea", "no idea"]
    answers = ["4", "4.0", "2+2", "5", "five", None, None]
    correct = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    records = [PromptRecord("2+2?", "4")] * len(completions)
    nov = REWARDS["novelty"](completions, answers, correct, records)
    assert all(0.5 <= v <= 1.0 for v in nov[:3]) and all(-1.0 <= v <= -0.5 for v in nov[3:5])
    assert min(nov[:3]) > max(nov[3:5])
    assert nov[5:] == [-1.0, -1.0]
    part = REWARDS["partition"](completions, answers, correct, records)
    # the two identical "no idea" completions merge by embedding (cos 1 > 0.9); they are wrong -> 0
    assert part[5:] == [0.0, 0.0]
    assert all(0.1 <= v <= 1.0 for v in part[:3])


def test_correct_without_extracted_answer_still_outranks_incorrect() -> None:
    from rewards.novelty import correctness_classes, novelty_rewards

    answers, correct = [None, "3", None], [1.0, 0.0, 0.0]
    assert correctness_classes(answers, correct) == [1, 0, None]
    # lone members of their class get u = 0.5: correct 0.5 + 0.25, incorrect -1 + 0.25, unparseable -1
    assert novelty_rewards([0.5, 0.5, float("nan")], answers, correct) == [0.75, -0.75, -1.0]
