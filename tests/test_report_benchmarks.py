"""The comparison report's benchmark part (rl_div/report/benchmarks.py) on hand-written evaluation files:
the appendix table across benchmarks, one table per benchmark with the paired differences and their
mark, the base model row, and the pass@k panel figure. Values worked by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import STEPS, markdown_table, write_compare_dir

from rl_div.report import build_report

# 30 problems, n = 4: ten copies of three. c per seed (seed 0, seed 1) for each variant.
C = {"grpo": ([0, 2, 4], [2, 2, 4]), "arm": ([4, 4, 4], [4, 4, 4])}


def maj(c: int) -> dict[str, float]:
    return {"1": c / 4, "2": c / 4, "4": 1.0 if c >= 3 else 0.5 if c == 2 else 0.0}


def problems(cs: list[int]) -> list[dict]:
    return [{"uid": f"aime24:{10 * j + i}", "n": 4, "c": c, "answer_counts": {}, "maj": maj(c)}
            for j, c in enumerate(cs) for i in range(10)]


def write_benchmark(run: Path, step: int, cs: list[int]) -> None:
    folder = run / "eval" / "aime24"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"step_{step:06d}.json").write_text(json.dumps(
        {"step": step, "benchmark": "aime24", "sampling": {"n": 4}, "metrics": {}, "problems": problems(cs)}))


def test_benchmark_tables_and_appendix(tmp_path: Path) -> None:
    root = write_compare_dir(tmp_path / "cmp")
    for variant, per_seed in C.items():
        for seed, cs in enumerate(per_seed):
            write_benchmark(root / variant / f"seed{seed}", 0, [1, 1, 1])  # the base model: avg@n 1/4
            write_benchmark(root / variant / f"seed{seed}", STEPS[-1], cs)
    files = build_report([root])
    baseline = json.loads(files["summary_json"].read_text())["baseline"]
    assert baseline == "grpo"
    md = files["report_md"].read_text()
    appendix = {r["variant"]: r for r in markdown_table(md.split("## Benchmarks", 1)[1], "variant")}
    # grpo: per problem the seed mean of c/4 is 0.25, 0.5, 1 -> avg@n 7/12 = 0.583; pass@4 seed means
    # 0.5, 1, 1 -> 0.833; maj@4 seed means 0.25, 0.5, 1 -> 0.583. arm: 1 everywhere.
    assert appendix["grpo"]["aime24 avg@n"].startswith("0.583 [")
    assert appendix["grpo"]["aime24 pass@4"].startswith("0.833 [")
    assert appendix["grpo"]["aime24 maj@4"].startswith("0.583 [")
    assert appendix["arm"]["aime24 avg@n"] == "1.000 [1.000, 1.000]"
    # arm - grpo per seed and problem (avg@n): seed 0 (1, 0.5, 0), seed 1 (0.5, 0.5, 0), ten copies each;
    # mean +0.417. Seed means 1/2 and 1/3 -> var (1/72) / 2 = 1/144; problem means 0.75, 0.5, 0 ->
    # var 0.10057 / 30 = 0.0033525; residuals +-1/6, -+1/12, -+1/12: MSE = (5/6) / 29 -> / 60 = 0.00047893;
    # V = 0.0098180, t_1 = 12.706: [-0.842, +1.676]. Two seeds cannot support a mark (issue 28).
    diff = appendix["arm − grpo"]["aime24 avg@n"]
    assert diff == "+0.417 [-0.842, +1.676]"
    per_bench = markdown_table(md.split("## Benchmark: aime24", 1)[1], "variant")
    base = next(r for r in per_bench if r["variant"] == "base (step 0)")
    assert base["avg@n"] == "0.250 [0.250, 0.250]" and base["pass@4"] == "1.000 [1.000, 1.000]"
    assert [r["variant"] for r in per_bench] == ["grpo", "arm", "arm − grpo", "base (step 0)"]
    assert "![benchmarks passk](benchmarks_passk.png)" in md and files["benchmarks_passk"].exists()
    saved = json.loads(files["benchmarks_json"].read_text())
    assert saved[0]["variants"]["grpo"]["pass@1"][0] == pytest.approx(7 / 12, abs=1e-12)


def test_no_benchmarks_no_section(tmp_path: Path) -> None:
    files = build_report([write_compare_dir(tmp_path / "cmp")])
    assert "benchmarks_json" not in files and "## Benchmarks" not in files["report_md"].read_text()
