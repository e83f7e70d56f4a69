"""``rl-div bench --methods ... --interleave`` (rl_div/bench/method_steps.py): one round on the demo model runs
every method's real step (rewards, advantage, update, guard) in one process; the timings are not checked,
only that each method ran its own path and the result holds what the README's table is built from."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_one_interleaved_round_runs_every_method_step(tmp_path: Path) -> None:
    from rl_div.bench.method_steps import bench_method_steps

    methods = ("grpo", "w_reinforce", "repo", "outcome_ucb", "target_entropy", "entropy_advantage")
    r = bench_method_steps(methods, rounds=1, model="demo", work_dir=tmp_path)
    (only,) = r["rounds"]
    assert set(only["methods"]) == set(methods)
    assert all(v["cpu_s"] > only["rollout_cpu_s"] > 0 for v in only["methods"].values())
    assert set(r["cpu_ratio_to_grpo"]) == set(methods) - {"grpo"}
    assert all(s["n"] == 1 and s["min"] == s["median"] == s["max"] > 0 for s in r["cpu_ratio_to_grpo"].values())


def test_a_method_list_without_grpo_is_refused(tmp_path: Path) -> None:
    from rl_div.bench.method_steps import bench_method_steps

    with pytest.raises(ValueError, match="give grpo"):
        bench_method_steps(("w_reinforce",), rounds=1, model="demo", work_dir=tmp_path)
