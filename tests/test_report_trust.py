"""Reports a reviewer can trust: one evaluation set per report, paired differences against the
baseline variant, and the provenance of every run. Expected values are computed here by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import VARIANTS, markdown_table, write_compare_dir
from scipy import stats

import rl_div
from rl_div.cli import main
from rl_div.report import build_report
from rl_div.report.comparison import MixedEvalSets
from rl_div.report.plots import Curve, passk_figure
from rl_div.report.summarize import moving_average


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_compare_dir(tmp_path_factory.mktemp("cmp"))


def shrink_eval_set(run_dir: Path, n: int, problems: int) -> None:
    """Rewrite a run as if evaluated with fewer problems and samples (config and eval files)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["eval"]["n"] = n
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    for path in (run_dir / "eval").glob("step_*.json"):
        data = json.loads(path.read_text())
        data["problems"] = [{**p, "n": n, "answers": p["answers"][:n], "correct": p["correct"][:n],
                             "c": sum(p["correct"][:n])} for p in data["problems"][:problems]]
        data["metrics"]["n"] = n
        path.write_text(json.dumps(data))


def test_runs_with_different_evaluation_sets_are_refused(compare_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "small" / "seed0"
    shutil.copytree(compare_dir / "arm" / "seed0", other)
    shrink_eval_set(other, n=4, problems=3)
    with pytest.raises(MixedEvalSets) as err:
        build_report([compare_dir / "grpo", tmp_path / "small"], tmp_path / "report")
    message = str(err.value)
    assert "6 problems (q0, q1, q2, ...) x n = 8" in message and "3 problems (q0, q1, q2, ...) x n = 4" in message
    assert "grpo/seed0, grpo/seed1" in message and "arm/seed0" in message
    assert main(["report", str(compare_dir / "grpo"), str(tmp_path / "small"), "--out", str(tmp_path / "r")]) == 2
    assert "different evaluation sets" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.md").exists()
    # The same problems at another temperature are another evaluation set too.
    hot = tmp_path / "hot" / "seed0"
    shutil.copytree(compare_dir / "arm" / "seed0", hot)
    cfg = yaml.safe_load((hot / "config.yaml").read_text())
    cfg["eval"]["temperature"] = 0.6
    (hot / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(MixedEvalSets, match="temperature 0.6"):
        build_report([compare_dir / "grpo", tmp_path / "hot"], tmp_path / "report2")


def two_way_by_hand(table: list[list[float]]) -> tuple[float, float]:
    """The seeds x problems t interval (rl_div.report.intervals), written out here from its formula."""
    d = np.array(table)
    s, p = d.shape
    v_seed, v_prob = d.mean(axis=1).var(ddof=1) / s, d.mean(axis=0).var(ddof=1) / p
    mse = sum((d[i, j] - d[i].mean() - d[:, j].mean() + d.mean()) ** 2 for i in range(s) for j in range(p)) / (
        (s - 1) * (p - 1))
    v = max(v_seed + v_prob - mse / (s * p), v_seed, v_prob, mse / (s * p))
    half = stats.t.ppf(0.975, s - 1) * np.sqrt(v)
    return d.mean() - half, d.mean() + half


def test_paired_differences_in_tables_and_plot(compare_dir: Path, tmp_path: Path) -> None:
    files = build_report([compare_dir], tmp_path)
    summary = json.loads(files["summary_json"].read_text())
    assert summary["baseline"] == "grpo" and set(summary["differences"]) == {"grpo", "base (step 0)"}
    # By hand from the eval files: arm - grpo per seed and problem at the final step, for pass@1 (c / n)
    # and distinct correct answers; pairs are (seed, problem uid).
    diffs = {"pass@1": [], "div/distinct_correct_answers": []}
    for seed in (0, 1):
        arm, grpo = (json.loads((compare_dir / v / f"seed{seed}" / "eval" / "step_000004.json").read_text())["problems"]
                     for v in ("arm", "grpo"))
        assert [p["uid"] for p in arm] == [p["uid"] for p in grpo]
        diffs["pass@1"].append([a["c"] / a["n"] - g["c"] / g["n"] for a, g in zip(arm, grpo, strict=True)])
        distinct = [[len({x for x, ok in zip(p["answers"], p["correct"], strict=True) if ok}) for p in probs]
                    for probs in (arm, grpo)]
        diffs["div/distinct_correct_answers"].append(np.subtract(*distinct).tolist())
    for metric, table in diffs.items():
        got = summary["differences"]["grpo"]["arm"][metric]
        assert got["mean"] == pytest.approx(np.mean(table))
        assert (got["ci_lo"], got["ci_hi"]) == pytest.approx(two_way_by_hand(table))
        assert got["seed_min"] == pytest.approx(min(np.mean(table, axis=1)))
    page = files["report_md"].read_text()
    assert "## Paired differences against grpo" in page and "## Paired differences against base (step 0)" in page
    section = page[page.index("## Paired differences against grpo"):]
    rows = {r["variant"]: r for r in markdown_table(section, "variant")}
    cell = rows["arm − grpo"]["Δ pass@1"]
    mean = np.mean(diffs["pass@1"])
    assert cell.startswith(f"{mean:+.3f} [")
    fig = passk_figure({"grpo": Curve([1, 2], [0.1, 0.2], [0.0, 0.1], [0.2, 0.3])},
                       diffs=("grpo", {"arm": Curve([1, 2], [0.05, 0.0], [0.0, -0.1], [0.1, 0.1])}))
    assert len(fig.axes) == 2 and [ln.get_label() for ln in fig.axes[1].get_lines()][-1] == "arm − grpo"


def test_moving_average_by_hand() -> None:
    assert moving_average(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 3).tolist() == [1.5, 2.0, 3.0, 4.0, 4.5]
    assert moving_average(np.array([1.0, np.nan, 3.0]), 3).tolist() == [1.0, 2.0, 3.0]


def test_one_seed_report_claims_no_seed_range(compare_dir: Path, tmp_path: Path) -> None:
    files = build_report([compare_dir / "grpo" / "seed0", compare_dir / "arm" / "seed0"], tmp_path)
    page = files["report_md"].read_text()
    assert "min–max over seeds" not in page and "min-max over seeds" not in page
    assert "95% bootstrap CI over problems" in page


def test_provenance_names_code_config_differences_cost_and_links(compare_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "cmp"
    shutil.copytree(compare_dir, root)
    for name in VARIANTS:
        for seed in (0, 1):
            run = root / name / f"seed{seed}"
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            cfg["rollout"]["prompts_per_step"] = 2
            if name == "arm":
                cfg["algo"] = {"advantage": "arm"}
            (run / "config.yaml").write_text(yaml.safe_dump(cfg))
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for i, row in enumerate(rows):  # rows 30 s apart: wall time (len - 1) * 30 s
                row["time"] = 1000.0 + 30.0 * i
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n_rows = len((root / "grpo" / "seed0" / "metrics.jsonl").read_text().splitlines())
    files = build_report([root], root / "report")
    page = files["report_md"].read_text()
    section = page[page.index("## Provenance"):]
    assert f"rl_div {rl_div.__version__}" in section
    rows = {r["variant"]: r for r in markdown_table(section, "variant")}
    assert rows["grpo"]["config difference from grpo"] == "(baseline)"
    assert rows["arm"]["config difference from grpo"] == "algo.advantage: 'grpo' → 'arm'"
    assert rows["arm"]["wall time / run"] == f"{(n_rows - 1) * 30 / 60:.1f} min"
    assert rows["arm"]["samples / run"] == str(4 * 2 * 4)  # last train step 4 x 2 prompts x group of 4
    assert "[seed 1](../arm/seed1) ([config](../arm/seed1/config.yaml))" in rows["arm"]["runs"]
    assert '<a href="../arm/seed1/config.yaml">config</a>' in files["report_html"].read_text()
