"""Report exports from synthetic run directories (no training): tidy CSV/JSON, summary bands, plots,
Markdown/HTML, and the answer-level collapse decomposition. Expected values are computed here
independently (math.comb pass@k, plain loops), not with the library's helpers."""

from __future__ import annotations

import csv
import json
import math
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import STEPS, VARIANTS, fake_problems, logged_metrics, markdown_table, write_compare_dir
from PIL import Image

from rl_div.cli import main
from rl_div.metrics import collapse_report, embedding_diversity
from rl_div.report import build_comparison, build_report
from rl_div.report.build import passk_curve, step_series
from rl_div.report.plots import PALETTE, curves_figure, passk_figure
from rl_div.report.results import RunRef, discover_runs, load_run, read_tidy_csv, write_manifest
from rl_div.report.summarize import answer_diversity, bootstrap_ci


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_compare_dir(tmp_path_factory.mktemp("cmp"), duplicate_step_in=("grpo", 0))


@pytest.fixture(scope="module")
def report(compare_dir: Path) -> dict[str, Path]:
    return build_report([compare_dir], compare_dir / "report")


def eval_json(root: Path, variant: str, seed: int, step: int) -> dict:
    return json.loads((root / variant / f"seed{seed}" / "eval" / f"step_{step:06d}.json").read_text())


def test_tidy_csv_holds_every_logged_value(compare_dir: Path, report: dict[str, Path]) -> None:
    rows = read_tidy_csv(report["metrics_tidy_csv"])
    index = {(r["variant"], r["seed"], r["step"], r["kind"], r["metric"], r["k"]): r["value"] for r in rows}
    expected = 0
    for variant in VARIANTS:
        for seed in (0, 1):
            for step in STEPS:
                for key, value in eval_json(compare_dir, variant, seed, step)["metrics"].items():
                    metric, k = ("pass@k", int(key[5:])) if key.startswith("pass@") else (key, None)
                    got = index[(variant, seed, step, "eval", metric, k)]
                    assert math.isnan(got) if value is None else got == value
                    expected += 1
            expected += 4 * 2  # train rows: steps 1..4, two metrics each (the duplicate is collapsed)
    assert len(rows) == expected
    assert index[("grpo", 0, 2, "train", "policy/entropy", None)] == pytest.approx(1.8)  # not the stale 99
    as_json = json.loads(report["metrics_tidy_json"].read_text())
    assert len(as_json) == len(rows) and {"variant", "seed", "step", "kind", "metric", "k", "value"} <= set(as_json[0])


def parse_cell(text: str) -> tuple[float, float | None, float | None]:
    m = re.fullmatch(r"(-?[\d.]+)(?: \[(-?[\d.]+), (-?[\d.]+)\])?( †)?", text.strip())
    assert m, text
    return float(m.group(1)), *(float(g) if g else None for g in m.group(2, 3))


def test_report_table_matches_the_csv(compare_dir: Path, report: dict[str, Path]) -> None:
    tidy = read_tidy_csv(report["metrics_tidy_csv"])

    def csv_values(variant: str, step: int, metric: str, k: int | None = None) -> list[float]:
        return [r["value"] for r in tidy if r["variant"] == variant and r["step"] == step and r["kind"] == "eval"
                and r["metric"] == metric and r["k"] == k]

    table = {row["variant"]: row for row in markdown_table(report["report_md"].read_text(), "variant")}
    assert set(table) == {"base (step 0)", *VARIANTS}
    columns = {"pass@1": ("pass@k", 1), "pass@8": ("pass@k", 8), "maj@n": ("maj@n", None),
               "entropy": ("policy/entropy", None), "distinct correct answers": ("div/distinct_correct_answers", None)}
    with open(report["summary_csv"]) as f:
        summary = {(r["variant"], r["metric"], r["k"]): r for r in csv.DictReader(f)
                   if r["role"] in ("variant", "base")}  # not the paired differences
    for variant, step in [("grpo", 4), ("arm", 4), ("base (step 0)", 0)]:
        source = "grpo" if variant.startswith("base") else variant
        assert table[variant]["step"] == str(step)
        for column, (metric, k) in columns.items():
            values = csv_values(source, step, metric, k)
            assert len(values) == 2  # one per seed
            mean, lo, hi = parse_cell(table[variant][column])
            assert f"{mean:.3f}" == f"{np.mean(values):.3f}", (variant, column)
            row = summary[(variant, metric, "" if k is None else str(k))]
            assert float(row["seed_min"]) == min(values) and float(row["seed_max"]) == max(values)
            if metric == "policy/entropy":  # no per-problem values: the band is the seed range
                assert (f"{lo:.3f}", f"{hi:.3f}") == (f"{min(values):.3f}", f"{max(values):.3f}")
                assert table[variant][column].endswith("†")
            elif lo is None:  # a band too narrow to show at 3 decimals (e.g. every problem solved)
                assert f"{float(row['ci_lo']):.3f}" == f"{float(row['ci_hi']):.3f}" == f"{mean:.3f}"
            else:  # bootstrap over problems: brackets the mean
                assert lo <= mean <= hi
                assert f"{float(row['ci_lo']):.3f}" == f"{lo:.3f}"


def test_bootstrap_ci_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(1)
    seeds = [rng.binomial(1, 0.3, size=400).astype(float) for _ in range(3)]
    lo, hi = bootstrap_ci(seeds, n_boot=4000)
    mean = np.mean([s.mean() for s in seeds])
    se = math.sqrt(sum(s.var(ddof=1) / len(s) for s in seeds)) / len(seeds)
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.006) and hi == pytest.approx(mean + 1.96 * se, abs=0.006)
    assert bootstrap_ci([np.full(5, 0.25)]) == (0.25, 0.25)


def test_plots_hold_every_series_and_render(compare_dir: Path, report: dict[str, Path]) -> None:
    runs = [load_run(r) for r in discover_runs([compare_dir])[1]]
    comp = build_comparison(runs)
    fig = passk_figure({v: passk_curve(comp.final[v]) for v in comp.variants},
                       (comp.base_label, passk_curve(comp.base)))
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["base (step 0)", "grpo", "arm"]
    assert ax.get_xscale() == "log"
    grpo_line = ax.get_lines()[1]
    assert list(grpo_line.get_xdata()) == [1, 2, 4, 8]
    assert grpo_line.get_ydata()[0] == pytest.approx(comp.final["grpo"]["pass@1"].mean)
    assert len(ax.collections) == 3  # a band per series

    panel = step_series([r for r in runs if r.ref.variant == "arm"], "train", "policy/entropy")
    assert list(panel.x) == [1, 2, 3, 4]
    assert panel.y[0] == pytest.approx(np.mean([1.9, 1.91]))
    fig = curves_figure([("entropy", {"arm": panel})], ["grpo", "arm"])
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["arm"]

    for name in ("passk_vs_k", "training_curves", "diversity_curves"):
        with Image.open(report[name]) as img:
            img.verify()
        pixels = np.asarray(Image.open(report[name]).convert("RGB")).reshape(-1, 3).astype(int)
        assert len(pixels) > 300 * 300
        assert (pixels.sum(axis=1) < 600).mean() > 0.01, f"{name} looks blank"
        for colour in PALETTE[:2]:  # each variant's line colour is drawn
            rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
            assert (np.abs(pixels - rgb).sum(axis=1) < 30).sum() > 50, (name, colour)


def test_html_is_self_contained_and_has_the_same_table(report: dict[str, Path]) -> None:
    page = report["report_html"].read_text()
    assert page.count("data:image/png;base64,") == 4  # pass@k, training curves, pass@k over steps, diversity
    for row in markdown_table(report["report_md"].read_text(), "variant"):
        # a number or one-word cell is kept on one line (class "n" / "w", issue 30 item 8)
        assert all(any(f"<td{c}>{cell}</td>" in page for c in ("", ' class="n"', ' class="w"'))
                   for cell in row.values() if cell and "†" not in cell)


def test_answer_diversity_is_one_hot_embedding_diversity() -> None:
    answers = ["a", "b", "a", None, "c", None, "a"]
    classes = {a: i for i, a in enumerate(["a", "b", "c"])}
    onehot = np.zeros((len(answers), len(answers) + 3))
    for i, a in enumerate(answers):
        onehot[i, classes[a] if a is not None else 3 + i] = 1.0  # every None is its own direction
    assert answer_diversity(answers) == pytest.approx(embedding_diversity(onehot))
    assert math.isnan(answer_diversity(["a"]))


def test_collapse_table_against_step_zero(compare_dir: Path, report: dict[str, Path]) -> None:
    summary = json.loads(report["summary_json"].read_text())
    for variant in VARIANTS:
        expected = []
        for seed in (0, 1):
            groups = [[(p["answers"], p["correct"]) for p in eval_json(compare_dir, variant, seed, s)["problems"]]
                      for s in (4, 0)]
            expected.append(collapse_report(*groups, diversity_fn=answer_diversity))
        got = summary["collapse"][variant]
        for key in ("total", "residual", "quality_control", "d_all_model", "d_all_ref"):
            assert got[key] == pytest.approx(np.nanmean([e[key] for e in expected]))
        assert got["total"] == pytest.approx(got["residual"] + got["quality_control"])
    assert "| variant | D_all ref → model |" in report["report_md"].read_text()


def test_report_cli_regenerates_from_files(compare_dir: Path, report: dict[str, Path], tmp_path: Path) -> None:
    assert main(["report", str(compare_dir), "--out", str(tmp_path)]) == 0
    def without_links(page: str) -> str:  # provenance links are relative to the report's folder
        return page[:page.index("## Provenance")]

    assert without_links((tmp_path / "report.md").read_text()) == without_links(report["report_md"].read_text())
    assert (tmp_path / "metrics_tidy.csv").read_text() == report["metrics_tidy_csv"].read_text()


def test_plain_run_dirs_without_manifest(compare_dir: Path, tmp_path: Path) -> None:
    runs = [compare_dir / "grpo" / "seed0", compare_dir / "arm" / "seed1"]
    kind, refs = discover_runs(runs)
    assert kind == "compare" and [(r.variant, r.seed) for r in refs] == [("grpo", 0), ("arm", 1)]
    files = build_report(runs, tmp_path)
    table = markdown_table(files["report_md"].read_text(), "variant")
    assert [row["variant"] for row in table] == ["base (step 0)", "grpo", "arm"]
    # Two runs with one run.name and seed (two copies of a config) are told apart by their directories.
    shutil.copytree(compare_dir / "grpo" / "seed0", tmp_path / "copy" / "seed0")
    _, refs = discover_runs([compare_dir / "grpo" / "seed0", tmp_path / "copy" / "seed0"])
    assert [r.variant for r in refs] == ["grpo:grpo/seed0", "grpo:copy/seed0"]


def write_single_eval(run_dir: Path, name: str, seed: int, p_correct: float) -> None:
    """What rl-div eval writes per model and seed: one step-0 evaluation."""
    rng = random.Random(f"{name}-{seed}")
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"run": {"name": name, "seed": seed},
                                                         "model": {"path": f"/models/{name}"}}))
    problems = fake_problems(random.Random(f"probs-{seed}-{name}"), p_correct)
    for i, p in enumerate(problems):  # same problems for model and reference (uids)
        p["uid"] = f"q{i}"
    (run_dir / "eval" / "step_000000.json").write_text(
        json.dumps({"step": 0, "metrics": logged_metrics(problems, rng), "problems": problems}))


def test_eval_report_compares_the_model_with_its_reference(tmp_path: Path) -> None:
    refs = []
    for seed in (0, 1):
        for role, name, p in (("variant", "tuned@step9", 0.6), ("reference", "reference (base)", 0.2)):
            run_dir = tmp_path / role / f"seed{seed}"
            write_single_eval(run_dir, name, seed, p)
            refs.append(RunRef(name, seed, run_dir, role))
    write_manifest(tmp_path, "eval", refs)
    files = build_report([tmp_path])
    summary = json.loads(files["summary_json"].read_text())
    assert summary["kind"] == "eval" and summary["base_label"] == "reference (base)"
    assert "training_curves" not in files  # one evaluation per run: nothing over steps
    expected = []
    for seed in (0, 1):
        groups = [[(p["answers"], p["correct"]) for p in
                   json.loads((tmp_path / role / f"seed{seed}" / "eval" / "step_000000.json").read_text())["problems"]]
                  for role in ("variant", "reference")]
        expected.append(collapse_report(*groups, diversity_fn=answer_diversity))
    got = summary["collapse"]["tuned@step9"]
    assert got["residual"] == pytest.approx(np.mean([e["residual"] for e in expected]))
    ref_pass1 = np.mean([json.loads((tmp_path / "reference" / f"seed{s}" / "eval" / "step_000000.json").read_text())
                         ["metrics"]["pass@1"] for s in (0, 1)])
    assert summary["base"]["pass@1"]["mean"] == pytest.approx(ref_pass1)
    rows = markdown_table(files["report_md"].read_text(), "variant")
    assert [(r["variant"], r["step"]) for r in rows] == [("reference (base)", ""), ("tuned@step9", "")]


def test_paired_bootstrap_does_not_shrink_with_identical_seeds() -> None:
    import numpy as np

    from rl_div.report.summarize import bootstrap_ci

    values = np.random.default_rng(3).random(40)
    lo1, hi1 = bootstrap_ci([values], paired=True)
    lo4, hi4 = bootstrap_ci([values] * 4, paired=True)
    # four copies of the same evaluation carry no more information than one
    assert (lo4, hi4) == pytest.approx((lo1, hi1))
    lo_ind, hi_ind = bootstrap_ci([values] * 4, paired=False)
    assert hi_ind - lo_ind < 0.75 * (hi1 - lo1)  # the unpaired reading would claim ~sqrt(4)x narrower
