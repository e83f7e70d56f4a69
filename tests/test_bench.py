"""rl-div bench on tiny sizes: the result structure and the numerical agreement, never the timings
(speed and memory are reported as ratios by the benchmark itself, not asserted in tests)."""

from __future__ import annotations

from rl_div.bench.micro import MODES, bench_entropy, bench_passk


def test_entropy_and_passk_benchmarks_agree_with_their_baselines() -> None:
    ent = bench_entropy(rows=64, seq_len=16, vocab=300, chunk_rows=16, repeats=1)
    assert ent["shape"] == [4, 16, 300]
    # Same float32 arithmetic row by row, so chunking changes nothing beyond rounding.
    assert ent["max_abs_diff_logp"] < 1e-5 and ent["max_abs_diff_entropy"] < 1e-5
    assert ent["max_abs_diff_grad"] < 1e-2  # the gradient is bf16 (ulp ~ 4e-3 at 1)
    assert ent["analytic_ratio"] == 4.0
    for mode in MODES:
        for impl in ("naive", "chunked"):
            assert ent[mode][impl]["seconds"] > 0 and ent[mode][impl]["peak_rss_delta_bytes"] >= 0
        assert set(ent[mode]["ratio_naive_over_chunked"]) == {"time", "memory"}
    assert "RSS" in ent["memory_method"]

    pk = bench_passk(problems=50, n=64, repeats=1)
    assert pk["ks"] == [1, 2, 4, 8, 16, 32, 64] and pk["values"] == 50 * 7
    assert pk["max_abs_diff"] < 1e-12
    assert pk["ratio_loop_over_vectorised"] > 0


def test_realistic_sections_agree_with_their_baselines(tiny_qwen_dir) -> None:
    """lm_head, rewards and long_step on tiny sizes: agreement and structure only."""
    import pytest

    from rl_div.bench.run import run_bench
    from rl_div.bench.workload import GSM8K_DIR, bench_lm_head, bench_long_step, bench_rewards
    from rl_div.config import ConfigError

    head = bench_lm_head(rows=2, tokens=8, hidden=16, vocab=500, chunk_rows=4, repeats=1)
    assert head["max_abs_diff_logp"] < 1e-5 and head["max_abs_diff_entropy"] < 1e-4
    assert head["max_abs_diff_grad_hidden"] < 1e-5 and head["max_abs_diff_grad_weight"] < 1e-5
    assert set(head["seconds"]["chunked_head"]) == {"min", "median", "max"}
    with pytest.raises(ConfigError, match="unknown bench section"):
        run_bench(sections=["nope"])
    if not (GSM8K_DIR / "test.jsonl").exists():
        pytest.skip(f"GSM8K data not found at {GSM8K_DIR}")
    rewards = bench_rewards(n_items=20, workers=(1,), items_per_call=4, repeats=1)
    assert rewards["correct_fraction"] == 0.5  # even rows carry the gold, odd rows gold + 1
    assert rewards["ratio_isolated_1_per_worker_over_in_process"] > 0
    step = bench_long_step(new_tokens=8, prompts=1, group_size=2, repeats=1, cache_dir=str(tiny_qwen_dir.parent),
                           profile_ops=3)
    assert set(step["stage_share"]) == {"rollout", "reward", "learner_forward", "learner_update", "weights"}
    assert abs(sum(step["stage_share"].values()) - 1) < 1e-9 and len(step["rollout_top_ops_self_cpu_share"]) == 3


def test_every_listed_section_can_run() -> None:
    """`rl-div bench` with no --sections runs SECTIONS; 'group_embedding' was listed without an entry,
    so the default bench stopped with 'unknown bench section(s)' before measuring anything."""
    from rl_div.bench.run import SECTIONS, _sections

    for quick in (True, False):
        table = _sections(quick)
        assert set(SECTIONS) == set(table), set(SECTIONS) ^ set(table)
