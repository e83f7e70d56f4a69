"""The update planner (rl_div.learner.plan): hand-checked plans, pure functions, no processes."""

from __future__ import annotations

import pytest

from rl_div.learner.plan import balance_rows, cut_micro_batches, pad_micro_counts, plan_update


def test_balance_rows_by_tokens_hand_checked() -> None:
    # longest first: 9 -> r0; 5 -> r1; 4 -> r1 (5 < 9); 3 -> r0 (tie 9 = 9: lower rank); 1 -> r1 (10 < 12)
    cost = [9, 1, 5, 4, 3]
    assert balance_rows([0, 1, 2, 3, 4], cost, 2) == [[0, 4], [1, 2, 3]]
    assert balance_rows([2, 0], cost, 3) == [[0], [2], []]


def test_cut_micro_batches_by_budget_and_rows() -> None:
    cost = [3, 3, 3, 10, 2, 2]
    assert cut_micro_batches([0, 1, 2, 3, 4, 5], cost, 8, 6) == [[0, 1], [2], [3], [4, 5]]
    assert cut_micro_batches([0, 1, 2, 3, 4, 5], cost, 2, None) == [[0, 1], [2, 3], [4, 5]]
    assert cut_micro_batches([], cost, 2, 6) == []


def test_pad_micro_counts() -> None:
    assert pad_micro_counts([[[1], [2]], []]) == [[[1], [2]], [[], []]]
    assert pad_micro_counts([[], []]) == [[[]], [[]]]


def _plan(world: int, seed: int = 0, **kw):  # noqa: ANN202
    cost = [5, 9, 2, 7, 7, 1, 3, 8]
    resp = [2, 6, 0, 4, 4, 1, 3, 5]
    args = dict(world_size=world, epochs=2, mini_batch_size=4, micro_batch_size=2,
                max_tokens_per_micro_batch=10, seed=seed, skip_zero_signal=True, other_terms=False)
    args.update(kw)
    return plan_update(cost, resp, [c % 2 == 1 for c in cost], **args), cost, resp


@pytest.mark.parametrize("world", [1, 2, 3])
def test_plan_uses_every_row_once_per_epoch_with_equal_micro_counts(world: int) -> None:
    plans, cost, resp = _plan(world)
    assert len(plans) == 4  # 2 epochs x 2 mini-batches of 4
    for epoch in (plans[:2], plans[2:]):
        assert sorted(r for p in epoch for r in p.rows) == list(range(8))
    for p in plans:
        placed = sorted(r for rank in p.micro for m in rank for r in m)
        assert placed == sorted(p.rows)
        assert len(p.micro) == world and len({len(rank) for rank in p.micro}) == 1
        for rank in p.micro:
            for m in rank:
                assert len(m) <= 2 and (len(m) <= 1 or sum(cost[r] for r in m) <= 10)
        assert p.token_total == sum(resp[r] for r in p.rows)
        assert p.seq_total == sum(resp[r] > 0 for r in p.rows)


def test_plan_is_a_function_of_the_seed() -> None:
    assert _plan(2, seed=4)[0] == _plan(2, seed=4)[0]
    assert [p.rows for p in _plan(2, seed=4)[0]] != [p.rows for p in _plan(2, seed=5)[0]]
    # the permutation does not depend on the world size
    assert [p.rows for p in _plan(1, seed=4)[0]] == [p.rows for p in _plan(3, seed=4)[0]]


def test_skip_is_decided_on_the_global_mini_batch() -> None:
    cost, resp = [1, 1, 1, 1], [1, 1, 1, 1]
    common = dict(world_size=2, epochs=1, mini_batch_size=None, micro_batch_size=1,
                  max_tokens_per_micro_batch=None, seed=0, skip_zero_signal=True)
    # only row 3 has a signal: the rank without it must step as well
    [p] = plan_update(cost, resp, [False, False, False, True], other_terms=False, **common)
    assert not p.skip and p.rows == [0, 1, 2, 3]
    [p] = plan_update(cost, resp, [False] * 4, other_terms=False, **common)
    assert p.skip
    [p] = plan_update(cost, resp, [False] * 4, other_terms=True, **common)
    assert not p.skip


def test_more_ranks_than_rows_pads_empty_micro_batches() -> None:
    [p] = plan_update([4], [2], [True], world_size=3, epochs=1, mini_batch_size=None, micro_batch_size=4,
                      max_tokens_per_micro_batch=None, seed=0, skip_zero_signal=True, other_terms=False)
    assert p.micro == [[[0]], [[]], [[]]]


def test_fsdp2_config_and_placement() -> None:
    from rl_div.cluster.placement import plan_placement
    from rl_div.config import ConfigError, load_config

    cfg = load_config(None, ["train.strategy=fsdp2", "train.num_learners=3", "train.num_cpus=2"])
    plan = plan_placement(cfg)
    assert [s.bundle for s in plan.learners] == [0, 1, 2] and plan.learner == plan.learners[0]
    assert plan.bundles[:3] == [{"CPU": 2.0}] * 3 and plan.bundle_owners[:3] == ["learner 0", "learner 1", "learner 2"]
    assert [s.bundle for s in plan_placement(load_config(None, [])).learners] == [0]
    with pytest.raises(ConfigError, match="train.num_learners=2 needs train.strategy='fsdp2'"):
        load_config(None, ["train.num_learners=2"])
    with pytest.raises(ConfigError, match="token_weight_scope='mini'"):
        load_config(None, ["train.strategy=fsdp2", "algo.token_weight=steer"])


def test_row_chunk_plan_is_the_single_learners_split() -> None:
    from rl_div.learner.plan import row_chunk_plan

    resp = [2, 0, 5, 1, 3]
    p = row_chunk_plan([4, 0, 2, 1, 3], False, resp, 2)
    assert p.micro == [[[4, 0], [2, 1], [3]]]
    assert (p.token_total, p.seq_total, p.skip) == (11.0, 4.0, False)
