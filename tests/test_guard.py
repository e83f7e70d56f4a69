"""The collapse guard (rl_div/train/guard.py): each rule on hand-written metric sequences, the controller's
bounds and decay, config validation, checkpointed state, and an end-to-end Ray run."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import guard_run_config

from rl_div.algos.losses import LOSSES, LossInputs, LossOutput
from rl_div.config import ConfigError, load_config
from rl_div.train.guard import CollapseGuard

REPO = Path(__file__).parent.parent


def guard_for(*overrides: str) -> CollapseGuard:
    return CollapseGuard(load_config(str(REPO / "configs/demo_grpo.yaml"), ["guard.enabled=true", *overrides]))


def fired_steps(guard: CollapseGuard, rule: str, entropies: list[float]) -> list[int]:
    steps = []
    for step, h in enumerate(entropies, start=1):
        if guard.observe_train(step, {"policy/entropy": h})[f"guard/fired_{rule}"]:
            steps.append(step)
    return steps


def test_entropy_rate_fires_on_a_smoothed_drop_not_on_one_noisy_step() -> None:
    g = guard_for("guard.smooth_steps=2", "guard.entropy_window=2", "guard.entropy_max_drop=0.1")
    # S_t = mean of the last 2; reference = S_2 = 1.0; fires when S_t < S_{t-2} - 0.1 * 1.0.
    # t=5: S=0.95, S_3=1.0 -> 0.95 >= 0.9 (one low step is not enough); t=6: S=0.8 < S_4 - 0.1 = 0.9 fires;
    # t=7: S=0.7 < S_5 - 0.1 = 0.85 fires; t=8: S=0.725 >= S_6 - 0.1 = 0.7 clears.
    assert fired_steps(g, "entropy_rate", [1.0, 1.0, 1.0, 1.0, 0.9, 0.7, 0.7, 0.75]) == [6, 7]
    assert g.entropy_ref == 1.0
    assert g.metrics()["guard/entropy_drop"] == pytest.approx((0.8 - 0.725) / 1.0)


def test_entropy_rate_is_undefined_before_reference_plus_window() -> None:
    g = guard_for("guard.smooth_steps=3", "guard.entropy_window=4", "guard.entropy_max_drop=0.01")
    metrics = [g.observe_train(s, {"policy/entropy": 2.0 - 0.3 * s}) for s in range(1, 8)]
    assert all("guard/entropy_drop" not in m for m in metrics[:6])  # needs 3 + 4 steps
    assert metrics[6]["guard/entropy_drop"] == pytest.approx(4 * 0.3 / (2.0 - 0.3 * 2))
    assert metrics[6]["guard/fired_entropy_rate"] == 1.0


def test_distinct_correct_against_the_step0_evaluation(caplog: pytest.LogCaptureFixture) -> None:
    g = guard_for("guard.distinct_fraction=0.8")
    g.observe_eval(0, {"div/distinct_correct_answers": 10.0}, [])
    seen = {}
    with caplog.at_level(logging.INFO, logger="rl_div"):
        for step, value in [(25, 8.5), (50, 7.5), (75, 9.0)]:
            seen[step] = g.observe_eval(step, {"div/distinct_correct_answers": value}, [])
            # training steps in between keep the last evaluation's flag
            assert g.observe_train(step + 1, {})["guard/fired_distinct_correct"] == seen[step][
                "guard/fired_distinct_correct"]
    assert [seen[s]["guard/fired_distinct_correct"] for s in (25, 50, 75)] == [0.0, 1.0, 0.0]
    assert seen[50]["guard/distinct_correct_ratio"] == 0.75
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["guard: distinct_correct fired at step 50: 7.5 < 8"]


def test_distinct_correct_from_training_steps_without_a_base_evaluation() -> None:
    g = guard_for("eval.at_start=false", "guard.rules=[distinct_correct]", "guard.smooth_steps=2")
    fired = [g.observe_train(s, {"div/distinct_correct_answers": v})["guard/fired_distinct_correct"]
             for s, v in enumerate([2.0, 2.0, 2.0, 1.0, 1.0, 3.0], start=1)]
    # reference = mean(2, 2) at step 2; step 4: mean(2, 1) = 1.5 < 0.8 * 2; step 6: mean(1, 3) = 2 clears
    assert fired == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert g.distinct_ref == 2.0


def test_passk_against_the_base_interval_over_problems() -> None:
    g = guard_for("guard.passk_z=1.96")
    problems = [{"n": 4, "c": c} for c in (4, 0, 2, 1)]
    g.observe_eval(0, {"pass@1": 0.4375, "pass@2": 0.6}, problems)
    # per-problem pass@2 with n = 4: 1 - C(4-c, 2) / C(4, 2)
    values = [1 - math.comb(4 - c, 2) / math.comb(4, 2) for c in (4, 0, 2, 1)]
    assert values == pytest.approx([1.0, 0.0, 5 / 6, 0.5])
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    lower = mean - 1.96 * sd / 2
    assert g.passk_lower == pytest.approx(lower) and g.passk_k == 2
    assert g.observe_eval(25, {"pass@2": lower + 0.01}, [])["guard/fired_passk"] == 0.0
    assert g.observe_eval(50, {"pass@2": lower - 0.01}, [])["guard/fired_passk"] == 1.0


def test_a_rule_not_listed_never_fires() -> None:
    g = guard_for("guard.rules=[entropy_rate]")
    g.observe_eval(0, {"div/distinct_correct_answers": 10.0}, [])
    assert g.observe_eval(25, {"div/distinct_correct_answers": 1.0}, [])["guard/fired"] == 0.0


def test_controller_rises_while_firing_is_clamped_and_decays_to_its_minimum(caplog: pytest.LogCaptureFixture) -> None:
    g = guard_for("guard.adapt=true", "algo.loss_params={entropy_coef: 0.001}", "guard.coef_step=0.01",
                  "guard.coef_max=0.025", "guard.coef_decay=0.5", "guard.rules=[distinct_correct]")
    assert g.loss_overrides() == {"entropy_coef": 0.001}
    g.observe_eval(0, {"div/distinct_correct_answers": 10.0}, [])
    g.observe_eval(1, {"div/distinct_correct_answers": 1.0}, [])  # fires
    used = []
    with caplog.at_level(logging.INFO, logger="rl_div"):
        for step in range(1, 4):
            used.append(g.observe_train(step, {})["guard/entropy_coef"])
        g.observe_eval(3, {"div/distinct_correct_answers": 10.0}, [])  # clears
        for step in range(4, 10):
            used.append(g.observe_train(step, {})["guard/entropy_coef"])
    # +0.01 per firing step up to 0.025; then the excess over 0.001 halves; below 0.01 / 10 it snaps to 0.001
    expected = [0.001, 0.011, 0.021, 0.025, 0.013, 0.007, 0.004, 0.0025, 0.001]
    assert used == pytest.approx(expected)
    assert g.loss_overrides() == {"entropy_coef": 0.001}
    changes = [r.getMessage() for r in caplog.records if "entropy_coef" in r.getMessage()]
    assert len(changes) == 8 and changes[0].startswith("guard: entropy_coef 0.001 -> 0.011 after step 1")


def test_disabled_guard_is_silent_and_does_not_override_the_loss() -> None:
    g = CollapseGuard(load_config(str(REPO / "configs/demo_grpo.yaml")))
    assert g.observe_train(1, {"policy/entropy": 1.0}) == {} and g.loss_overrides() is None
    assert g.observe_eval(0, {"pass@1": 0.5}, [{"n": 1, "c": 1}]) == {}
    assert guard_for().loss_overrides() is None  # enabled without adapt: watch only


@pytest.mark.parametrize(("overrides", "field"), [
    (["guard.adapt=true"], "guard.adapt=true needs guard.enabled=true"),
    (["guard.enabled=true", "guard.rules=[entropy]"], "guard.rules.0"),
    (["guard.enabled=true", "guard.rules=[]"], "guard.rules is empty"),
    (["guard.coef_decay=1.0"], "guard.coef_decay"),
    (["guard.distinct_fraction=0"], "guard.distinct_fraction"),
    (["guard.enabled=true", "eval.at_start=false"], "passk, which needs eval.at_start=true"),
    (["guard.enabled=true", "guard.adapt=true", "guard.coef_max=0.01", "algo.loss_params={entropy_coef: 0.02}"],
     "guard.coef_max (0.01) is below algo.loss_params.entropy_coef"),
])
def test_bad_guard_config_is_one_line_config_error(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(str(REPO / "configs/demo_grpo.yaml"), overrides)
    assert field in str(err.value) and "\n" not in str(err.value).strip()


def _no_entropy_loss(inputs: LossInputs, *, agg: str = "token-mean") -> LossOutput:
    return LossOutput((inputs.logprobs * inputs.mask).sum(), {})


def test_adapt_refuses_a_loss_without_entropy_coef() -> None:
    if "test_no_entropy" not in LOSSES.names():
        LOSSES.register("test_no_entropy")(_no_entropy_loss)
    with pytest.raises(ConfigError, match="guard.adapt: loss 'test_no_entropy' takes no entropy_coef"):
        guard_for("guard.adapt=true", "algo.loss=test_no_entropy")


def feed(g: CollapseGuard, steps: range) -> list[dict[str, float]]:
    out = []
    for s in steps:
        if s % 5 == 0:
            out.append(g.observe_eval(s, {"div/distinct_correct_answers": 10.0 - s / 5, "pass@4": 1 - s / 40},
                                      [{"n": 4, "c": s % 4}, {"n": 4, "c": 3}]))
        out.append(g.observe_train(s + 1, {"policy/entropy": 1.5 - 0.02 * s + 0.01 * (s % 3),
                                            "div/distinct_correct_answers": 1.0}))
    return out


def test_state_round_trips_through_json_and_continues_identically() -> None:
    args = ("guard.adapt=true", "guard.smooth_steps=3", "guard.entropy_window=4", "guard.entropy_max_drop=0.02")
    whole, first = guard_for(*args), guard_for(*args)
    expected = feed(whole, range(0, 30))
    done = len(feed(first, range(0, 12)))
    resumed = guard_for(*args)
    resumed.load_state(json.loads(json.dumps(first.state())))
    assert feed(resumed, range(12, 30)) == expected[done:]
    assert any(m.get("guard/fired") for m in expected) and whole.coef > 0


def test_a_saved_config_without_a_guard_section_matches_a_plan_with_the_guard_off(tmp_path: Path) -> None:
    """A comparison made before the guard existed is still complete for the same plan."""
    from rl_div.experiments.compare import plan, run_status

    runs = plan([str(REPO / "configs/demo_grpo.yaml")], [0], tmp_path, ["train.steps=2"])
    tree = runs[0].config.model_dump(mode="json")
    del tree["guard"]
    runs[0].dir.mkdir(parents=True)
    (runs[0].dir / "config.yaml").write_text(yaml.safe_dump(tree))
    (runs[0].dir / "eval").mkdir()
    (runs[0].dir / "eval" / "step_000002.json").write_text("{}")
    assert run_status(runs[0]) == "complete"
    tree["guard"] = {"enabled": True}
    (runs[0].dir / "config.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="guard.enabled"):
        run_status(runs[0])


# ---- end to end: real Ray actors, the tiny bootstrapped model -----------------------------------

@pytest.fixture(scope="module")
def base_model(bootstrapped_prime_gap: Path) -> str:
    import ray

    yield str(bootstrapped_prime_gap)
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.slow
def test_demo_guard_logs_metrics_adapts_the_loss_and_resumes(tmp_path: Path, base_model: str) -> None:
    from rl_div.run.tracking import read_metrics
    from rl_div.train.loop import train

    full = train(guard_run_config(tmp_path / "full", base_model, "train.steps=4"))
    rows = read_metrics(full / "metrics.jsonl", kind="train")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"guard/fired", "guard/fired_entropy_rate", "guard/entropy_coef", "guard/passk_lower"} <= r.keys()
        # one micro-batch, token-mean: the learner's loss is pg - c * entropy with the guard's c
        assert "loss/total" in r, "no optimizer step (zero signal): pick another seed"
        assert r["loss/total"] == pytest.approx(r["loss/pg"] - r["guard/entropy_coef"] * r["loss/entropy"],
                                                rel=1e-5, abs=1e-7)
    coefs = [r["guard/entropy_coef"] for r in rows]
    assert coefs[0] == 0.0 and max(coefs) > 0, coefs  # the controller moved, and the learner used it
    assert any(r["guard/fired"] for r in rows)
    log_text = (full / "train.log").read_text()
    assert "WARNING guard: " in log_text and " fired at step " in log_text
    assert "guard: entropy_coef 0 -> 0.05" in log_text

    # 2 steps, then --resume to 4: the guard's state comes back with the checkpoint
    train(guard_run_config(tmp_path / "split", base_model, "train.steps=2"))
    resumed = train(guard_run_config(tmp_path / "split", base_model, "train.steps=4"), resume=True)
    again = read_metrics(resumed / "metrics.jsonl", kind="train")

    def guard_part(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k.startswith(("guard/", "loss/"))}

    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(again[2:], rows[2:], strict=True):
        assert guard_part(a) == pytest.approx(guard_part(b), rel=1e-6, abs=1e-7)
    assert again[2]["guard/entropy_coef"] > 0  # restored, not restarted at 0


def test_report_provenance_counts_an_absent_guard_section_as_its_defaults(tmp_path: Path) -> None:
    """The demo_guard row shows what adapting changed, not every guard field as 'None -> default'."""
    from rl_div.report.provenance import variant_rows
    from rl_div.report.results import RunData, RunRef

    grpo = load_config(str(REPO / "configs/demo_grpo.yaml")).model_dump(mode="json")
    del grpo["guard"]  # saved before the guard existed
    guard = load_config(str(REPO / "configs/demo_guard.yaml")).model_dump(mode="json")
    groups = {"demo_grpo": [RunData(RunRef("demo_grpo", 0, tmp_path / "a"), grpo)],
              "demo_guard": [RunData(RunRef("demo_guard", 0, tmp_path / "b"), guard)]}
    _, body = variant_rows(groups, "demo_grpo", tmp_path)
    assert body[1][1] == "guard.adapt: False → True; guard.enabled: False → True"


def test_zero_variance_fires_on_the_smoothed_share_of_groups_without_signal(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 24 item 2: the guard may read sampling/zero_variance_frac. Smoothed over 2 steps that had a
    round (NaN: a batch filled from carried groups, passed over), fires above 0.5."""
    g = guard_for("guard.rules=[zero_variance]", "guard.smooth_steps=2", "guard.zero_variance_max=0.5")
    fracs = [0.2, 0.4, math.nan, 0.9, 0.9, 0.1, 0.0]
    # smoothed: step 1 undefined; 2: 0.3; 3: NaN skipped, still 0.3; 4: (0.4 + 0.9) / 2 = 0.65 > 0.5 fires;
    # 5: 0.9 fires; 6: 0.5 (not > 0.5) clears; 7: 0.05
    with caplog.at_level(logging.INFO, logger="rl_div"):
        seen = [g.observe_train(s, {"sampling/zero_variance_frac": f}) for s, f in enumerate(fracs, start=1)]
    assert [m["guard/fired_zero_variance"] for m in seen] == [0, 0, 0, 1, 1, 0, 0]
    assert "guard/zero_variance_frac" not in seen[0]
    assert [m["guard/zero_variance_frac"] for m in seen[1:]] == pytest.approx([0.3, 0.3, 0.65, 0.9, 0.5, 0.05])
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("guard: zero_variance")]
    assert messages == ["guard: zero_variance fired at step 4: 0.65 > 0.5",
                        "guard: zero_variance cleared at step 6: 0.5 <= 0.5"]
    restored = guard_for("guard.rules=[zero_variance]", "guard.smooth_steps=2", "guard.zero_variance_max=0.5")
    restored.load_state(json.loads(json.dumps(g.state())))
    assert restored.observe_train(8, {"sampling/zero_variance_frac": 1.0}) == g.observe_train(
        8, {"sampling/zero_variance_frac": 1.0})


def test_a_guard_state_from_before_the_zero_variance_rule_loads() -> None:
    g = guard_for()
    old = json.loads(json.dumps(g.state()))
    old["fired"].pop("zero_variance")
    old.pop("zero_variance")
    g.load_state(old)
    assert g.observe_train(1, {"policy/entropy": 1.0})["guard/fired_zero_variance"] == 0.0
