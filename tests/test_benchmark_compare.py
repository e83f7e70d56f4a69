"""`rl-div compare` of two configs with eval.benchmarks on the tiny Qwen2: the report carries one table
per benchmark, the appendix table and the pass@k panels, built from the runs' own benchmark files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rl_div.experiments.compare import compare
from tests.test_benchmarks import DATA, needs_data

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@needs_data
def test_compare_two_configs_with_a_benchmark(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    assert DATA is not None
    configs = []
    for name, algo in (("grpo", "grpo"), ("arm", "arm")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"inherit": str(REPO / "configs" / "gsm8k_tiny.yaml"), "run": {"name": name},
                                        "algo": algo}))
        configs.append(str(path))
    extra = [f"bootstrap.cache_dir={tiny_qwen_dir.parent}", f"data.path={DATA / 'gsm8k' / 'train.jsonl'}",
             f"data.eval_path={DATA / 'gsm8k' / 'test.jsonl'}", "train.steps=1", "rollout.prompts_per_step=2",
             "rollout.group_size=2", "rollout.max_new_tokens=8", "eval.n=2", "data.num_eval_prompts=1",
             "eval.every=0", "eval.at_start=true", "eval.embedding_metrics=false", "checkpoint.every=0",
             "tracking.progress=false", "tracking.tensorboard=false", "cluster.num_cpus=2",
             "train.skip_zero_signal_steps=false", "eval.benchmarks=[aime24]", "eval.benchmark_limit=3",
             f"benchmarks.root={DATA / 'benchmarks'}", "benchmarks.sampling={aime24: {n: 2, max_new_tokens: 8}}"]
    out = compare(configs, [0], tmp_path / "out", extra)
    report = out / "report"
    md = (report / "report.md").read_text()
    appendix = md.split("## Benchmarks", 1)[1]
    assert "| variant | aime24 avg@n | aime24 pass@2 | aime24 maj@2 |" in appendix
    assert "| arm − grpo |" in appendix and "## Benchmark: aime24" in md and "| base (step 0) |" in md
    saved = json.loads((report / "benchmarks.json").read_text())
    assert saved[0]["benchmark"] == "aime24" and set(saved[0]["variants"]) == {"grpo", "arm"}
    for variant in ("grpo", "arm"):  # the table's number is the run's own file's
        saved_file = out / variant / "seed0" / "eval" / "aime24" / "step_000001.json"
        problems = json.loads(saved_file.read_text())["problems"]
        assert len(problems) == 3
        avg = sum(p["c"] / p["n"] for p in problems) / 3
        assert saved[0]["variants"][variant]["avg@n"][0] == pytest.approx(avg, abs=1e-12)
    assert (report / "benchmarks_passk.png").exists()
