"""``rl-div compare`` end to end on the tiny model: every variant x seed trains on the same prompts and
evaluation set, the report holds the runs' numbers, and a re-run after an interruption trains only
what is missing (resuming from the last checkpoint)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from compare_run import SEEDS, VARIANTS, compare_run

import rl_div.train.loop
from rl_div.cli import main
from rl_div.config import ConfigError, load_config
from rl_div.experiments.compare import compare, plan
from rl_div.report.results import read_tidy_csv
from rl_div.run.tracking import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    return compare_run(tmp_path_factory)


def evaluation(out: Path, variant: str, step: int, seed: int = 0) -> dict:
    return json.loads((out / variant / f"seed{seed}" / "eval" / f"step_{step:06d}.json").read_text())


def test_every_variant_and_seed_trained_on_the_same_prompts(finished: tuple[Path, list[str], list[str]]) -> None:
    out, _, _ = finished
    manifest = json.loads((out / "runs.json").read_text())
    assert [(r["variant"], r["seed"], r["dir"]) for r in manifest["runs"]] == [
        (v, s, f"{v}/seed{s}") for v in VARIANTS for s in SEEDS]
    for variant, algo in VARIANTS.items():
        run = out / variant / "seed0"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["run"]["seed"] == 0 and cfg["run"]["name"] == variant and cfg["algo"]["advantage"] == algo
        assert (run / "checkpoints" / "step_000002" / "policy" / "config.json").exists()
        assert [r["step"] for r in read_metrics(run / "metrics.jsonl", kind="train")] == [1, 2]
    # Same evaluation problems at every step, and at step 0 (the shared base model, same sampling
    # seed) the very same samples: the variants differ by their training only.
    for step in (0, 2):
        uids = [[p["uid"] for p in evaluation(out, v, step)["problems"]] for v in VARIANTS]
        assert uids[0] == uids[1] and len(uids[0]) == 4
    starts = [evaluation(out, v, 0)["problems"] for v in VARIANTS]
    assert [p["answers"] for p in starts[0]] == [p["answers"] for p in starts[1]]


def test_report_holds_the_runs_numbers(finished: tuple[Path, list[str], list[str]]) -> None:
    out, _, _ = finished
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["variants"] == list(VARIANTS) and summary["final_step"] == dict.fromkeys(VARIANTS, 2)
    for variant in VARIANTS:
        problems = evaluation(out, variant, 2)["problems"]
        pass1 = sum(p["c"] / p["n"] for p in problems) / len(problems)  # independent of the library
        assert summary["final"][variant]["pass@1"]["mean"] == pytest.approx(pass1)
        assert set(summary["final"][variant]) >= {"pass@1", "pass@2", "pass@4", "maj@n", "policy/entropy"}
    base = evaluation(out, "grpo", 0)["problems"]
    assert summary["base"]["pass@1"]["mean"] == pytest.approx(sum(p["c"] / p["n"] for p in base) / len(base))
    assert set(summary["collapse"]) == set(VARIANTS)
    for name in ("report.md", "report.html", "metrics_tidy.csv", "metrics_tidy.json", "summary.csv",
                 "passk_vs_k.png", "training_curves.png"):
        assert (out / "report" / name).stat().st_size > 0, name


def test_rerun_skips_finished_runs_and_resumes_an_interrupted_one(
        finished: tuple[Path, list[str], list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    out, configs, extra = finished
    arm = out / "arm" / "seed0"
    # Interrupted after its step-1 checkpoint: the final checkpoint and evaluation are missing.
    shutil.rmtree(arm / "checkpoints" / "step_000002")
    (arm / "eval" / "step_000002.json").unlink()
    grpo_metrics = (out / "grpo" / "seed0" / "metrics.jsonl").read_bytes()
    calls = []
    real_train = rl_div.train.loop.train

    def spy(cfg, resume=False):  # noqa: ANN001, ANN202 - same signature as rl_div.train.loop.train
        calls.append((cfg.run.name, cfg.run.seed, resume))
        return real_train(cfg, resume=resume)

    monkeypatch.setattr(rl_div.train.loop, "train", spy)
    compare(configs, SEEDS, out, extra)
    assert calls == [("arm", 0, True)]
    assert (out / "grpo" / "seed0" / "metrics.jsonl").read_bytes() == grpo_metrics
    assert (arm / "eval" / "step_000002.json").exists() and (arm / "checkpoints" / "step_000002").is_dir()
    state = json.loads((arm / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["step"] == 2
    # The resume dropped the rows past its step-1 checkpoint, so step 2 is logged once.
    steps = [r["step"] for r in read_metrics(arm / "metrics.jsonl", kind="train")]
    assert steps == [1, 2]
    tidy = [r for r in read_tidy_csv(out / "report" / "metrics_tidy.csv")
            if r["variant"] == "arm" and r["kind"] == "train" and r["metric"] == "policy/entropy"]
    assert [r["step"] for r in tidy] == [1, 2]

    calls.clear()
    compare(configs, SEEDS, out, extra, report=False)  # all complete now: nothing trains
    assert calls == []


def test_a_changed_config_is_refused_not_mixed_in(finished: tuple[Path, list[str], list[str]]) -> None:
    out, configs, extra = finished
    with pytest.raises(ConfigError, match="another config.*train.lr"):
        compare(configs, SEEDS, out, [*extra, "train.lr=0.5"])


def test_variants_must_share_prompts_and_evaluation(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(yaml.safe_dump({"run": {"name": "a"}}))
    b = tmp_path / "b.yaml"
    b.write_text(yaml.safe_dump({"run": {"name": "b"}, "data": {"num_eval_prompts": 5}}))
    with pytest.raises(ConfigError, match="data.num_eval_prompts"):
        plan([str(a), str(b)], [0], tmp_path / "out", [])
    runs = plan([str(a), str(a)], [0, 3], tmp_path / "out", ["train.steps=1"])
    assert [(r.variant, r.seed, r.dir.relative_to(tmp_path).as_posix()) for r in runs] == [
        ("a", 0, "out/a/seed0"), ("a", 3, "out/a/seed3"), ("a_2", 0, "out/a_2/seed0"), ("a_2", 3, "out/a_2/seed3")]
    assert all(r.config.train.steps == 1 and r.config.run.seed == r.seed for r in runs)


def test_every_variant_is_checked_before_the_first_one_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken second variant (here a model path that does not exist) used to surface only after the
    first variant's runs had trained."""
    trained = []
    monkeypatch.setattr("rl_div.experiments.compare.run_in_process", lambda run, status: trained.append(run.variant))
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump({"run": {"name": "good"}}))
    bad.write_text(yaml.safe_dump({"run": {"name": "bad"}, "model": {"path": str(tmp_path / "missing")}}))
    with pytest.raises(ConfigError, match="model.path: .*missing.* does not exist"):
        compare([str(good), str(bad)], [0], tmp_path / "out", report=False)
    assert trained == []


def test_cli_splits_configs_seeds_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = {}

    def fake_compare(configs, seeds, out, overrides, jobs=1, report=True, baseline=None):  # noqa: ANN001, ANN202
        got.update(configs=configs, seeds=seeds, out=out, overrides=overrides, jobs=jobs, report=report)
        return Path(out)

    monkeypatch.setattr("rl_div.experiments.compare.compare", fake_compare)
    assert main(["compare", "a.yaml", "b.yaml", "train.steps=2", "--seeds", "0", "1", "eval.n=8",
                 "--out", str(tmp_path), "--no-report", "bootstrap.steps=20"]) == 0
    assert got == {"configs": ["a.yaml", "b.yaml"], "seeds": [0, 1], "out": str(tmp_path),
                   "overrides": ["train.steps=2", "eval.n=8", "bootstrap.steps=20"], "jobs": 1, "report": False}


def test_compare_restarts_its_local_ray_only_for_a_run_of_another_size() -> None:
    """A variant with cluster.num_cpus=4 (2 FSDP2 learners) after one with all cores could not be
    placed in the 2-CPU Ray the first run started: compare restarts Ray for it, and only then."""
    import os

    from rl_div.experiments.compare import local_ray_mismatch

    four = load_config(None, ["cluster.num_cpus=4"])
    default = load_config(None, [])
    assert local_ray_mismatch(four, running_cpus=2.0)
    assert not local_ray_mismatch(four, running_cpus=4.0)
    assert not local_ray_mismatch(four, running_cpus=None)  # nothing running: the run starts its own
    assert not local_ray_mismatch(default, running_cpus=float(os.cpu_count() or 1))
    assert local_ray_mismatch(default, running_cpus=float((os.cpu_count() or 1) + 2))
    on_cluster = load_config(None, ["cluster.num_cpus=4", "cluster.address=10.0.0.1:6379"])
    assert not local_ray_mismatch(on_cluster, running_cpus=2.0)  # a cluster is never restarted
