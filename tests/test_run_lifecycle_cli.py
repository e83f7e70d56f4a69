"""Issue 30 items 3, 4, 6, 7 and 9 through `rl-div train` as a user runs it, on one short demo run:
the run ends with a results table and its report; --resume of the finished run is a one-line no-op
before Ray; --resume with a changed method is refused naming the fields, or, with
--allow-config-change, continues and records the change; --overwrite says what it deleted; the
console shows stage lines, 3-significant-digit evaluations and the run's name and method."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SHORT = ["train.steps=2", "checkpoint.every=0", "eval.every=0", "eval.n=4", "data.num_eval_prompts=4",
         "rollout.prompts_per_step=2", "rollout.group_size=2", "eval.embedding_metrics=false",
         "tracking.tensorboard=false", "cluster.num_cpus=2"]


def rl_div(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rl_div.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, bootstrapped_prime_gap: Path) -> tuple[Path, list[str],
                                                                                             subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("lifecycle") / "run"
    args = ["train", "configs/demo.yaml", f"model.path={bootstrapped_prime_gap}", f"run.output_dir={out}", *SHORT]
    done = rl_div(*args, "algo.token_weight=steer")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, [*args, "algo.token_weight=steer"], done


def evaluation(out: Path, step: int) -> dict:
    return json.loads((out / "eval" / f"step_{step:06d}.json").read_text())["metrics"]


def test_a_run_ends_with_its_results_table_and_report(finished) -> None:
    out, _, done = finished
    start, final = evaluation(out, 0), evaluation(out, 2)
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("metric"))
    assert lines[header].split() == ["metric", "step", "0", "step", "2", "change"]
    table = {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line)[1:] for line in lines[header + 2:header + 6]}
    assert set(table) == {"pass@1", "pass@4", "entropy (nats/token)", "distinct correct answers / problem"}
    for label, key in (("pass@1", "pass@1"), ("pass@4", "pass@4"), ("entropy (nats/token)", "policy/entropy"),
                       ("distinct correct answers / problem", "div/distinct_correct_answers")):
        a, b = start[key], final[key]
        assert table[label] == [f"{a:.3g}", f"{b:.3g}", f"{b - a:+.3g}"], label
    report = out / "report"
    for name in ("report.md", "report.html", "passk_vs_k.png", "summary.csv"):
        assert (report / name).is_file(), name
    md = (report / "report.md").read_text()
    assert md.startswith("# demo: single run\n")
    assert f"report: {report / 'report.md'} and {report / 'report.html'}" in done.stdout
    # the exact command line and the package versions that trained it, in the provenance
    assert "rl-div train configs/demo.yaml" in md and "algo.token_weight=steer" in md and "torch " in md


def test_the_console_shows_stages_rounded_evaluations_and_the_run(finished) -> None:
    _, _, done = finished
    err = done.stderr
    assert "step 1/2: rollout ..." in err and "step 1/2: learner_update ..." in err  # the first step's stages
    assert "evaluation at step 0: eval_rollout ..." in err
    evals = [line for line in err.splitlines() if "eval step" in line]
    assert len(evals) == 2
    for line in evals:
        numbers = re.findall(r"pass@\d+ ([0-9.e+-]+)", line)
        assert numbers and all(len(n.replace("0.", "").lstrip("0")) <= 3 for n in numbers), line
    assert "demo (grpo+steer)" in err  # the progress bar's label: the run and its method


def test_resume_of_a_finished_run_is_an_immediate_no_op(finished) -> None:
    out, args, _ = finished
    before = (out / "metrics.jsonl").read_text()
    done = rl_div(*args, "--resume", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"{out} already finished (2 of train.steps=2 steps): nothing to resume "
                                   "(raise train.steps to train further)")
    assert done.stderr == ""  # no Ray, no trainer
    assert (out / "metrics.jsonl").read_text() == before
    assert len((out / "commands.jsonl").read_text().splitlines()) == 1  # the trainer did not start again


def test_resume_with_another_method_is_refused_naming_the_fields(finished) -> None:
    out, args, _ = finished
    done = rl_div(*[a for a in args if a != "algo.token_weight=steer"], "algo=arm", "train.steps=3", "--resume",
                  timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rl-div: --resume: the config differs from the run's saved "
                                                   "config in algo.advantage ('grpo' -> 'arm')"), lines
    assert "train.steps" not in lines[0].split("; only")[0]  # an allowed change is not named as a difference
    assert "--allow-config-change" in lines[0]
    assert yaml.safe_load((out / "config.yaml").read_text())["algo"]["advantage"] == "grpo"


def test_an_allowed_change_continues_and_is_recorded(finished) -> None:
    out, args, _ = finished
    done = rl_div(*args, "algo.token_weight=none", "train.steps=3", "--resume", "--allow-config-change")
    assert done.returncode == 0, done.stderr[-3000:]
    history = [json.loads(line) for line in (out / "config_history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["resumed_from_step"] == 2
    assert history[0]["changed"]["algo.token_weight"] == {"old": "steer", "new": "none"}
    assert history[0]["changed"]["train.steps"] == {"old": 2, "new": 3}
    assert "--allow-config-change" in history[0]["command"]
    assert yaml.safe_load((out / "config.yaml").read_text())["algo"]["token_weight"] == "none"
    assert max(json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()) == 3


def test_overwrite_says_what_it_deleted(finished) -> None:
    out, args, _ = finished
    done = rl_div(*args, "train.steps=1", "eval.at_start=false", "eval.at_end=false", "--overwrite")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == (f"--overwrite: deleted metrics.jsonl, eval/, checkpoints/, train.log, "
                                           f"report/, commands.jsonl, config_history.jsonl in {out}")
    assert not (out / "eval").exists()
    assert "no results table" in done.stdout
