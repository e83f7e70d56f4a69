"""eval.benchmarks inside a 3-step training run of the tiny Qwen2 (real tokenizer and chat template,
Ray actors, benchmark_verify in the isolated worker): each benchmark logged as eval/<benchmark>/...,
its per-problem file small and consistent with the logged numbers. The model answers nonsense: this
checks plumbing, prompts, extraction and counts (verifier correctness: tests/test_benchmark_verify.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import ray

from rl_div.config import load_config
from rl_div.run.tracking import read_metrics
from rl_div.train.loop import Trainer
from tests.test_benchmarks import DATA, needs_data

REPO = Path(__file__).resolve().parent.parent


def chen(n: int, c: int, k: int) -> float:
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.slow
@needs_data
def test_three_steps_with_benchmarks(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    assert DATA is not None
    cfg = load_config(REPO / "configs" / "gsm8k_tiny.yaml", [
        f"bootstrap.cache_dir={tiny_qwen_dir.parent}", f"data.path={DATA / 'gsm8k' / 'train.jsonl'}",
        f"data.eval_path={DATA / 'gsm8k' / 'test.jsonl'}", f"run.output_dir={tmp_path / 'run'}", "train.steps=3",
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8", "eval.n=2",
        "data.num_eval_prompts=1", "eval.every=0", "eval.at_start=false", "eval.embedding_metrics=false",
        "checkpoint.every=0", "tracking.progress=false", "tracking.tensorboard=false", "cluster.num_cpus=2",
        "train.skip_zero_signal_steps=false", "eval.benchmarks=[aime24, math500]", "eval.benchmark_limit=2",
        f"benchmarks.root={DATA / 'benchmarks'}",
        "benchmarks.sampling={aime24: {n: 4, max_new_tokens: 8}, math500: {n: 2, max_new_tokens: 8}}",
    ])
    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.close()
        ray.shutdown()
    out = Path(cfg.run.output_dir)
    [logged] = read_metrics(out / "metrics.jsonl", kind="eval")
    assert logged["step"] == 3
    for name, n in (("aime24", 4), ("math500", 2)):
        saved = json.loads((out / "eval" / name / "step_000003.json").read_text())
        problems = saved["problems"]
        assert [p["uid"] for p in problems] == [f"{name}:1", f"{name}:2"] and saved["sampling"]["n"] == n
        assert all(p["n"] == n and sum(count for count, _ in p["answer_counts"].values()) == n for p in problems)
        assert all("responses" not in p and "prompt" not in p for p in problems)  # the file stays small
        for k in (1, 2, n):
            expected = sum(chen(p["n"], p["c"], k) for p in problems) / 2
            assert logged[f"eval/{name}/pass@{k}"] == pytest.approx(expected, abs=1e-12)
        assert logged[f"eval/{name}/avg@n"] == pytest.approx(sum(p["c"] / n for p in problems) / 2, abs=1e-12)
        assert f"eval/{name}/maj@{n}" in logged and f"eval/{name}/pass^{n}" in logged
        assert logged[f"eval/{name}/skipped_rows"] == 0
        assert 0 < logged[f"eval/{name}/policy/entropy"] <= 12.0
    assert "pass@1" in logged and logged["eval/reward_errors"] == 0  # the held-out split is still evaluated
