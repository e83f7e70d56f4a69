"""Reports a reviewer can trust: one evaluation set per report, paired differences against the
baseline variant, and the provenance of every run. Expected values are computed here by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_report import VARIANTS, write_run

from rl_div.cli import main
from rl_div.report import build_report
from rl_div.report.comparison import MixedEvalSets
from rl_div.report.results import RunRef, write_manifest


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cmp")
    refs = []
    for name, p in VARIANTS.items():
        for seed in (0, 1):
            write_run(root / name / f"seed{seed}", name, seed, p)
            refs.append(RunRef(name, seed, root / name / f"seed{seed}"))
    write_manifest(root, "compare", refs)
    return root


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
