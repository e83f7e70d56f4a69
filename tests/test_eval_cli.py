"""``rl-div eval`` on a checkpoint of a real run: it goes through the Trainer's own evaluation, so with
the run's config and seed it reproduces the run's evaluations exactly (the checkpoint's against the
final one, the reference = base model's against step 0), and its report and collapse decomposition
follow from those samples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import ray
from compare_run import compare_run
from PIL import Image

import rl_div.train.loop
from rl_div.cli import main
from rl_div.experiments.evaluate import resolve_target
from rl_div.metrics import collapse_report
from rl_div.report.summarize import answer_diversity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out, _, _ = compare_run(tmp_path_factory)
    return out / "grpo" / "seed0"


def read_eval(path: Path) -> dict:
    return json.loads(path.read_text())


def actors_of_class(name: str) -> int:
    """Actors of that class this Ray cluster has created, alive or dead (Ray's actor table in the GCS)."""
    return sum(a["ActorClassName"] == name for a in ray.state.actors().values())


def test_resolve_checkpoint_policy_run_and_model_dirs(run_dir: Path) -> None:
    ckpt = run_dir / "checkpoints" / "step_000002"
    for given in (ckpt, ckpt / "policy", run_dir):
        target = resolve_target(given)
        assert target.model_dir == (ckpt / "policy").resolve()
        assert target.run_dir == run_dir.resolve() and target.step == 2 and target.label == "grpo@step2"
    plain = resolve_target(ckpt / "policy")
    assert plain.model_dir.name == "policy"
    with pytest.raises(FileNotFoundError):
        resolve_target(run_dir / "eval")


def test_eval_checkpoint_reproduces_the_runs_evaluations(run_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture,
                                                         caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         request: pytest.FixtureRequest) -> None:
    out = tmp_path / "ev"
    ckpt = run_dir / "checkpoints" / "step_000002"
    if not ray.is_initialized():  # the actor table needs this process connected; the CLI then reuses it
        from rl_div.cluster.actors import init_ray
        from rl_div.config import load_config

        init_ray(load_config(str(run_dir / "config.yaml"), []))
        request.addfinalizer(ray.shutdown)  # later modules in this process expect no Ray
    learners_before, rollouts_before = actors_of_class("Learner"), actors_of_class("RolloutHost")
    assert main(["eval", str(ckpt), "--n", "4", "--seeds", "0", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "pass@4" in printed and "collapse of grpo@step2" in printed
    # sampling and scoring only: no learner actor started, once for the model and once for the reference
    assert actors_of_class("Learner") == learners_before
    assert actors_of_class("RolloutHost") - rollouts_before == 2  # one worker per model
    console = captured.out + captured.err + caplog.text  # the rl_div log lines go to the console too
    assert "[eval] grpo@step2 seed 0: sampling n=4 per problem" in console
    for training_line in ("separate pi_old forward", "learner: node", "step 1/", "run finished", "resumed from"):
        assert training_line not in console, training_line

    model = read_eval(out / "model" / "seed0" / "eval" / "step_000000.json")
    reference = read_eval(out / "reference" / "seed0" / "eval" / "step_000000.json")
    final, start = read_eval(run_dir / "eval" / "step_000002.json"), read_eval(run_dir / "eval" / "step_000000.json")
    for ours, theirs in ((model, final), (reference, start)):
        assert [p["uid"] for p in ours["problems"]] == [p["uid"] for p in theirs["problems"]]
        assert [p["answers"] for p in ours["problems"]] == [p["answers"] for p in theirs["problems"]]
        # every number the run's own evaluation (its learner's forward) gave: the samples' exactly, the
        # entropies (the rollout worker's copy instead of the learner's) to float32 round-off
        sampled = [k for k in theirs["metrics"] if k.startswith(("pass@", "mean@", "maj@", "div/", "reward/"))
                   or k in ("rollout/response_len", "rollout/truncation_rate", "n")]
        assert len(sampled) > 10
        for key in sampled:
            assert ours["metrics"][key] == pytest.approx(theirs["metrics"][key], rel=1e-12, nan_ok=True), key
        assert ours["metrics"]["policy/entropy"] == pytest.approx(theirs["metrics"]["policy/entropy"], rel=1e-5)
        assert ours["metrics"]["sync/logprob_gap_max"] < 1e-4  # the worker's forward = its own sampling

    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["kind"] == "eval" and summary["variants"] == ["grpo@step2"]
    bands = summary["final"]["grpo@step2"]
    assert sorted(int(k[5:]) for k in bands if k.startswith("pass@") and k[5:].isdigit()) == [1, 2, 4]
    c = np.array([p["c"] for p in model["problems"]])
    assert bands["pass@4"]["mean"] == pytest.approx(np.mean(c > 0))  # n = k = 4: solved at least once
    assert bands["pass@1"]["ci_lo"] <= bands["pass@1"]["mean"] <= bands["pass@1"]["ci_hi"]
    for key in ("mean@n", "maj@n", "policy/entropy", "div/distinct_correct_answers", "div/num_classes",
                "div/distinct_2"):
        assert key in bands, key
    groups = [[(p["answers"], p["correct"]) for p in e["problems"]] for e in (model, reference)]
    expected = collapse_report(*groups, diversity_fn=answer_diversity)
    got = summary["collapse"]["grpo@step2"]
    for key in ("total", "residual", "quality_control"):
        value = math.nan if got[key] is None else got[key]  # JSON null = NaN (undefined)
        assert value == pytest.approx(expected[key], nan_ok=True)
    with Image.open(out / "report" / "passk_vs_k.png") as img:
        assert img.size[0] > 300

    # Asked again, the finished evaluations are reused: no Trainer is built.
    def no_trainer(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluated again")

    monkeypatch.setattr(rl_div.train.loop, "Trainer", no_trainer)
    assert main(["eval", str(ckpt), "--n", "4", "--seeds", "0", "--out", str(out)]) == 0
    assert "already evaluated" in capsys.readouterr().out
