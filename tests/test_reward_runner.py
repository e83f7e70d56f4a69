"""RewardScorer / score_batch: weighted totals, correctness, order of work, NaN + counts on failure."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import pytest

from rewards import IsolatedWorker, RewardScorer, RewardSpec, score_batch, score_group
from rl_div.data import PromptRecord
from rl_div.registry import UnknownNameError

PLUGINS = ["plugins.my_rewards"]
GOLD4 = PromptRecord(prompt="2+2?", answer="4", uid="p0")
GOLD5 = PromptRecord(prompt="2+3?", answer="5", uid="p1")
BAD_GOLD = PromptRecord(prompt="?", answer=r"\frac{", uid="p2")
nan = math.nan


def same(xs: list[float], ys: list[float]) -> bool:
    """Elementwise equality where NaN equals NaN."""
    return len(xs) == len(ys) and all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y)
                                      for x, y in zip(xs, ys, strict=True))


@pytest.fixture(scope="module")
def worker() -> Iterator[IsolatedWorker]:
    w = IsolatedWorker(PLUGINS)  # one warm child shared by every isolated scorer below
    w.start()
    yield w
    w.close()


def scorer(worker: IsolatedWorker, *specs: RewardSpec, timeout_s: float = 30.0) -> RewardScorer:
    return RewardScorer(list(specs), timeout_s=timeout_s, plugins=PLUGINS, worker=worker)


def test_weighted_total_components_correct_and_answers(worker: IsolatedWorker) -> None:
    completions = [r"so \boxed{4}", "so 4", r"so \boxed{5}", "no idea"]
    with scorer(worker, RewardSpec("math_verify"), RewardSpec("format", weight=0.5)) as s:
        result = s.score(completions, [GOLD4] * 4, [0, 0, 0, 0])
    # math_verify: right, right (a bare 4), wrong, no answer; format: box, no box, box, no box
    assert result.components == {"math_verify": [1.0, 1.0, 0.0, 0.0], "format": [1.0, 0.0, 1.0, 0.0]}
    assert result.total == [1.5, 1.0, 0.5, 0.0]
    assert result.correct == [1.0, 1.0, 0.0, 0.0]
    assert result.answers == ["4", "4", "5", None]
    assert all(v == 0 for v in result.errors.values()) and result.error_messages == []


def test_timeout_gives_nan_and_a_count_and_scoring_goes_on(worker: IsolatedWorker) -> None:
    completions = [r"\boxed{5}", r"\boxed{9^{9^{9^{9}}}}", r"\boxed{5}", r"\boxed{6}"]
    with scorer(worker, RewardSpec("math_verify"), RewardSpec("format"), timeout_s=2.0) as s:
        result = s.score(completions, [GOLD5] * 4, [0, 0, 0, 0])
    assert same(result.components["math_verify"], [1.0, nan, 1.0, 0.0])
    assert same(result.correct, [1.0, nan, 1.0, 0.0])
    assert same(result.total, [2.0, nan, 2.0, 1.0])  # a NaN component makes the total NaN
    assert result.errors["math_verify/timeouts"] == 1
    assert result.errors["math_verify/errors"] == 0
    assert "Timeout" in result.error_messages[0] and "row 1" in result.error_messages[0]


def test_gold_that_does_not_parse_is_an_error_not_a_zero(worker: IsolatedWorker) -> None:
    with scorer(worker, RewardSpec("math_verify")) as s:
        result = s.score([r"\boxed{1}", r"\boxed{5}"], [BAD_GOLD, GOLD5], [0, 1])
    assert same(result.components["math_verify"], [nan, 1.0])
    assert result.errors["math_verify/errors"] == 1
    assert "GoldParseError" in result.error_messages[0]


@pytest.mark.parametrize("isolated", [True, False])
def test_a_bad_gold_is_checked_and_counted_once_for_the_run(worker: IsolatedWorker, isolated: bool) -> None:
    """Issue 29 item 10: every sample of a bad gold cost one verifier call (a timeout, for a gold that
    hangs) per step. Three samples of it in each of two steps: one count, in the first step."""
    completions = [r"\boxed{1}", r"\boxed{5}", r"\boxed{1}", r"\boxed{2}"]
    records = [BAD_GOLD, GOLD5, BAD_GOLD, BAD_GOLD]
    s = scorer(worker, RewardSpec("math_verify")) if isolated else RewardScorer([RewardSpec("math_verify")],
                                                                                 isolated=False)
    with s:
        first = s.score(completions, records, [0, 1, 0, 0])
        second = s.score(completions, records, [0, 1, 0, 0])
    for result in (first, second):
        assert same(result.components["math_verify"], [nan, 1.0, nan, nan])
    assert (first.errors["math_verify/errors"], second.errors["math_verify/errors"]) == (1, 0)
    assert first.error_messages == [
        r"math_verify (row 0): GoldParseError: gold answer '\\frac{' does not parse as math"]


def test_raising_and_non_numeric_rewards_give_nan_and_counts(worker: IsolatedWorker) -> None:
    specs = [RewardSpec("test_raises"), RewardSpec("test_text", weight=0.0)]
    with scorer(worker, *specs) as s:
        result = s.score(["ok", "boom", "fine"], [GOLD4] * 3, [0, 0, 0])
    assert same(result.components["test_raises"], [1.0, nan, 1.0])
    assert same(result.components["test_text"], [nan, nan, nan])  # "yes" is not a score
    assert result.errors["test_raises/errors"] == 1 and result.errors["test_text/errors"] == 3
    assert same(result.total, [nan, nan, nan])
    assert any("RuntimeError: exploded on 'boom'" in m for m in result.error_messages)
    assert math.isnan(result.correct[0])  # no verifier among the specs


def test_plugin_reward_runs_in_the_worker_with_params(worker: IsolatedWorker) -> None:
    pid_record = PromptRecord(prompt="q", answer="1", meta={"want_pid": True})
    with scorer(worker, RewardSpec("test_length", params={"per_char": 0.25})) as s:
        result = s.score(["abcd", "abcdefgh", "x"], [GOLD4, GOLD4, pid_record], [0, 0, 1])
    assert result.components["test_length"][:2] == [1.0, 2.0]
    assert result.components["test_length"][2] not in (0.0, float(os.getpid()))  # the worker's pid


def test_group_rewards_run_after_the_verifier_whatever_the_order(worker: IsolatedWorker) -> None:
    specs = [RewardSpec("test_sees_correct", weight=0.1), RewardSpec("math_verify")]
    with scorer(worker, *specs) as s:
        result = s.score([r"\boxed{4}", r"\boxed{3}", r"\boxed{5}", r"\boxed{4}"],
                         [GOLD4, GOLD4, GOLD5, GOLD5], [0, 0, 1, 1])
    assert list(result.components) == ["test_sees_correct", "math_verify"]  # keys keep spec order
    assert result.components["test_sees_correct"] == [10.0, 0.0, 10.0, 0.0]
    assert result.total == pytest.approx([2.0, 0.0, 2.0, 0.0])


def test_a_failing_group_reward_blanks_only_its_group() -> None:
    specs = [RewardSpec("test_group_raises")]
    result = score_batch(specs, ["a", "b", "boom", "c", "d"], [GOLD4] * 5, [0, 0, 1, 1, 2],
                         timeout_s=5, plugins=PLUGINS)
    assert same(result.components["test_group_raises"], [0.0, 0.0, nan, nan, 0.0])
    assert result.errors["test_group_raises/errors"] == 1  # one failed call (one group)


def test_in_process_mode_and_score_group() -> None:
    specs = [RewardSpec("math_verify"), RewardSpec("format", weight=2.0), RewardSpec("format", weight=-1.0,
                                                                                      params={"pattern": "so"})]
    result = score_group(specs, [r"so \boxed{4}", r"\boxed{3}"], [GOLD4, GOLD4], timeout_s=5, isolated=False)
    # keys: a repeated name gets "#2"; format (box) 1, 1; pattern "so" 1, 0
    assert result.components == {"math_verify": [1.0, 0.0], "format": [1.0, 1.0], "format#2": [1.0, 0.0]}
    assert result.total == [2.0, 2.0]
    bad = score_batch([RewardSpec("math_verify")], [r"\boxed{1}"], [BAD_GOLD], [0], timeout_s=5, isolated=False)
    assert math.isnan(bad.total[0]) and bad.errors["math_verify/errors"] == 1


def test_configuration_errors_fail_loudly() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'math_verify'"):
        RewardScorer([RewardSpec("math_verfy")], isolated=False)
    with pytest.raises(ValueError, match="3 completions"):
        RewardScorer([RewardSpec("format")], isolated=False).score(["a", "b", "c"], [GOLD4], [0])
    with pytest.raises(UnknownNameError, match="answer extractor"):
        score_batch([RewardSpec("format")], ["a"], [PromptRecord("q", "1", meta={"extractor": "nope"})], [0],
                    timeout_s=5, isolated=False)


@pytest.mark.parametrize("isolated", [True, False])
def test_non_finite_reward_values_are_errors_not_rewards(worker: IsolatedWorker, isolated: bool) -> None:
    """Issue 8 item 9: NaN/inf from a reward was not counted and inf entered the total."""
    completions = ["ok", "nan", "inf", "-inf"]
    specs = [RewardSpec("test_nonfinite"), RewardSpec("test_group_nonfinite", weight=0.5)]
    s = scorer(worker, *specs) if isolated else RewardScorer(specs, isolated=False, plugins=PLUGINS)
    with s:
        result = s.score(completions, [GOLD4] * 4, [0, 0, 0, 0])
    assert same(result.components["test_nonfinite"], [1.0, nan, nan, nan])
    assert same(result.components["test_group_nonfinite"], [2.0, 2.0, nan, 2.0])
    assert same(result.total, [2.0, nan, nan, nan])  # never inf
    assert result.errors["test_nonfinite/errors"] == 3
    assert result.errors["test_group_nonfinite/errors"] == 1
    assert any("inf" in m for m in result.error_messages)


def test_a_hung_group_reward_times_out_and_only_its_group_is_nan() -> None:
    specs = [RewardSpec("math_verify"), RewardSpec("test_group_sleep", params={"seconds": 60})]
    with RewardScorer(specs, timeout_s=30, group_timeout_s=2.0, plugins=PLUGINS, workers=2) as s:
        result = s.score([r"\boxed{4}", "hang", r"\boxed{5}", r"\boxed{3}"], [GOLD4, GOLD4, GOLD5, GOLD5],
                         [0, 0, 1, 1])
    assert same(result.components["test_group_sleep"], [nan, nan, 1.0, 1.0])
    assert result.errors["test_group_sleep/timeouts"] == 1
    assert same(result.components["math_verify"], [1.0, 0.0, 1.0, 0.0])


def test_pooled_scores_equal_in_process_scores() -> None:
    completions = [rf"so \boxed{{{n % 7}}}" for n in range(30)] + ["no answer", r"\boxed{\frac{8}{2}}"]
    records = [GOLD4, GOLD5] * 16
    groups = [i // 4 for i in range(32)]
    specs = [RewardSpec("math_verify"), RewardSpec("format", weight=0.5), RewardSpec("test_sees_correct")]
    with RewardScorer(specs, timeout_s=30, plugins=PLUGINS, workers=2, items_per_call=5) as s:
        pooled = s.score(completions, records, groups)
    local = score_batch(specs, completions, records, groups, timeout_s=30, isolated=False, plugins=PLUGINS)
    assert pooled.components == local.components and pooled.total == local.total
    assert pooled.components["math_verify"][:5] == [0.0, 0.0, 0.0, 0.0, 1.0]  # 0,1,2,3 vs 4/5; 4 vs 4
