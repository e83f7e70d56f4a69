"""`rl-div eval MODEL --benchmarks aime24,math500 --limit 8 --n 4` on the tiny Qwen2 (real 151,936-entry
tokenizer, chat template) against itself as the reference: every file is written, the counts are
right, and with the same model and sampling seeds the paired difference is exactly 0 (the samples are
identical), so the crossover is k = 1. The model scores ~0: this checks plumbing, not correctness."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from rl_div.cli import main
from tests.test_benchmarks import DATA, needs_data

REPO = Path(__file__).resolve().parent.parent


def chen(n: int, c: int, k: int) -> float:
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.slow
@needs_data
def test_eval_two_benchmarks_against_a_reference(tmp_path: Path, tiny_qwen_dir: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    assert DATA is not None
    out = tmp_path / "ev"
    args = ["eval", str(tiny_qwen_dir), "--benchmarks", "aime24,math500", "--limit", "8", "--n", "4",
            "--reference", str(tiny_qwen_dir), "--config", str(REPO / "configs" / "gsm8k_tiny.yaml"), "--out", str(out),
            f"bootstrap.cache_dir={tiny_qwen_dir.parent}", f"data.path={DATA / 'gsm8k' / 'train.jsonl'}",
            f"data.eval_path={DATA / 'gsm8k' / 'test.jsonl'}", "data.num_eval_prompts=1", "rollout.max_new_tokens=8",
            "eval.embedding_metrics=false", "cluster.num_cpus=2", f"benchmarks.root={DATA / 'benchmarks'}",
            "benchmarks.sampling={aime24: {max_new_tokens: 8}, math500: {max_new_tokens: 8}}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "aime24 (8 problems, n = 4)" in printed and "crossover k: 1" in printed
    for name in ("aime24", "math500"):
        model = json.loads((out / "model" / "seed0" / "eval" / name / "step_000000.json").read_text())
        problems = model["problems"]
        assert len(problems) == 8 and all(p["n"] == 4 for p in problems)
        assert model["sampling"]["n"] == 4 and model["sampling"]["max_new_tokens"] == 8
        result = json.loads((out / "benchmarks" / f"{name}.json").read_text())
        rows = {r["metric"]: r for r in result["rows"]}
        assert sorted(rows) == sorted(["avg@n", *[f"{m}{k}" for m in ("pass@", "pass^", "maj@") for k in (1, 2, 4)]])
        for k in (1, 2, 4):
            expected = sum(chen(4, p["c"], k) for p in problems) / 8
            assert rows[f"pass@{k}"]["model"] == pytest.approx(expected, abs=1e-12)
            # the reference is the same model with the same seeds: the same samples, a zero difference
            assert rows[f"pass@{k}"]["reference"] == rows[f"pass@{k}"]["model"]
            assert rows[f"pass@{k}"]["diff"] == rows[f"pass@{k}"]["diff_lo"] == rows[f"pass@{k}"]["diff_hi"] == 0.0
        assert result["crossover"]["k"] == 1  # diff <= 0 from k = 1 on
        with open(out / "benchmarks" / f"{name}.csv") as f:
            table = list(csv.DictReader(f))
        assert len(table) == 10 and {"metric", "k", "model", "model_lo", "diff", "diff_excludes_0"} <= set(table[0])
    with Image.open(out / "benchmarks" / "passk.png") as png:
        assert png.size[0] > png.size[1] > 300  # two panels side by side, the difference below
    report = (out / "report" / "report.md").read_text()  # the report rl-div report builds, benchmarks included
    assert "## Benchmark: aime24" in report and "## Benchmark: math500" in report
    assert f"| {tiny_qwen_dir.name} − reference ({tiny_qwen_dir.name}) |" in report
