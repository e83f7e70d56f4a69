"""rl-div bench on tiny sizes: the result structure and the numerical agreement, never the timings
(speed and memory are reported as ratios by the benchmark itself, not asserted in tests)."""

from __future__ import annotations

from rl_div.bench import MODES, bench_entropy, bench_passk


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
