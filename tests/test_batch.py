"""RolloutBatch: shape checks, selection, micro-batches and concatenation of worker shards."""

from __future__ import annotations

import pytest
import torch

from rl_div.data import PromptRecord, RolloutBatch
from rl_div.rollout.base import build_rollout_batch


def small_batch(n: int = 2) -> RolloutBatch:
    prompts = [PromptRecord("p0", "a0"), PromptRecord("prompt1", "a1")]
    return build_rollout_batch(
        prompts, [[1, 2], [3, 4, 5]],
        [[7], [8, 9], [10, 11, 12], []][: 2 * n],
        [[-0.1], [-0.2, -0.3], [-0.4, -0.5, -0.6], []][: 2 * n],
        ["a", "bc", "def", ""][: 2 * n], [False, False, True, True][: 2 * n], n, behavior_version=3)


def test_build_pads_prompts_left_and_responses_right() -> None:
    b = small_batch()
    assert b.prompt_ids.tolist() == [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]]
    assert b.prompt_mask.tolist() == [[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]]
    assert b.response_ids.tolist() == [[7, 0, 0], [8, 9, 0], [10, 11, 12], [0, 0, 0]]
    assert b.response_mask.sum(1).tolist() == [1, 2, 3, 0]
    assert b.behavior_logprobs[2].tolist() == pytest.approx([-0.4, -0.5, -0.6])
    assert b.group_index.tolist() == [0, 0, 1, 1]
    assert [p.prompt for p in b.prompts] == ["p0", "p0", "prompt1", "prompt1"]


def test_rows_must_agree() -> None:
    b = small_batch()
    with pytest.raises(ValueError, match="disagree"):
        RolloutBatch(**{**b.__dict__, "response_texts": ["x"]})


def test_select_and_micro_batches_cover_all_rows() -> None:
    b = small_batch()
    b.rewards = torch.tensor([1.0, 0.0, 0.5, 0.25])
    b.reward_components = {"r": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    picked = b.select([3, 1])
    assert picked.rewards.tolist() == [0.25, 0.0]
    assert picked.response_texts == ["", "bc"]
    assert picked.reward_components["r"].tolist() == [4.0, 2.0]
    micros = b.micro_batches(3)
    assert [m.size for m in micros] == [3, 1]
    assert sum((m.response_texts for m in micros), []) == b.response_texts


def test_concat_renumbers_groups_and_repads() -> None:
    a, b = small_batch(1), small_batch(2)
    both = RolloutBatch.concat([a, b])
    assert both.size == a.size + b.size
    assert both.group_index.tolist() == [0, 1, 2, 2, 3, 3]
    assert both.response_ids.shape[1] == 3 and both.prompt_ids.shape[1] == 3
    assert both.response_ids[0].tolist() == [7, 0, 0]


def test_a_batch_in_flight_survives_a_checkpoint_round_trip(tmp_path) -> None:
    """The in-flight batch is saved as plain tensors/strings/dicts and loads with weights_only=True."""
    from rl_div.train.rollout_pipeline import batch_from_state, batch_state

    b = small_batch()
    b.prompts[0] = PromptRecord("p0", "a0", uid="u", meta={"level": 3})
    torch.save(batch_state(b), tmp_path / "b.pt")
    back = batch_from_state(torch.load(tmp_path / "b.pt", weights_only=True))
    assert back.behavior_version.tolist() == [3, 3, 3, 3]
    assert back.prompts[0] == PromptRecord("p0", "a0", uid="u", meta={"level": 3}) and back.prompts[2] == b.prompts[2]
    assert back.response_texts == b.response_texts
    for name in ("prompt_ids", "response_ids", "response_mask", "behavior_logprobs", "group_index", "truncated"):
        assert torch.equal(getattr(back, name), getattr(b, name)), name
