"""The collapse guard's entropy controllers (rl_div/train/entropy_control.py): Skywork-OR1's adaptive
entropy against TRL's implementation transcribed here, EntroPIC's PI law against a float64 reference
from its equation, hand-worked sequences, config refusals, checkpointed state, and resume 2 + 2 == 4
through a real Ray run."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from helpers import guard_run_config

from rl_div.config import ConfigError, load_config
from rl_div.train.entropy_control import PIEntropyController, TargetEntropyController
from rl_div.train.guard import CollapseGuard

REPO = Path(__file__).parent.parent


class TRLAdaptiveEntropy:
    """Transcribed from trl 1.16.0, trl/trainer/grpo_trainer.py, GRPOTrainer.__init__ and compute_loss
    (use_adaptive_entropy; one process, one micro-batch per optimizer step, so world_entropy is the step's
    mean token entropy):

        self._last_world_entropy = float("inf")
        ...
        apply_coef = self.entropy_coef if self._last_world_entropy <= self.args.entropy_target else 0.0
        ...
        if world_entropy <= self.args.entropy_target:
            self.entropy_coef = min(self.entropy_coef + self.args.entropy_coef_delta, self.args.entropy_coef_max)
        else:
            self.entropy_coef = max(self.entropy_coef - self.args.entropy_coef_delta, self.args.entropy_coef_min)
        self._last_world_entropy = world_entropy
    """

    def __init__(self, entropy_coef: float, entropy_target: float, delta: float, coef_min: float,
                 coef_max: float) -> None:
        self.entropy_coef, self.target, self.delta = entropy_coef, entropy_target, delta
        self.coef_min, self.coef_max = coef_min, coef_max
        self._last_world_entropy = float("inf")

    def apply_coef(self) -> float:
        return self.entropy_coef if self._last_world_entropy <= self.target else 0.0

    def step(self, world_entropy: float) -> None:
        if world_entropy <= self.target:
            self.entropy_coef = min(self.entropy_coef + self.delta, self.coef_max)
        else:
            self.entropy_coef = max(self.entropy_coef - self.delta, self.coef_min)
        self._last_world_entropy = world_entropy


@pytest.mark.parametrize("seed", range(5))
def test_target_entropy_matches_trl(seed: int) -> None:
    rng = random.Random(seed)
    target, delta, coef0, coef_max = 1.0, rng.choice([0.005, 0.02]), rng.choice([0.0, 0.01]), 0.05
    ours = TargetEntropyController(target=target, delta=delta, coef0=coef0, coef_max=coef_max)
    trl = TRLAdaptiveEntropy(coef0, target, delta, 0.0, coef_max)
    entropies = [rng.choice([target, rng.uniform(0.6, 1.4)]) for _ in range(60)]  # exact ties included
    for h in entropies:
        assert ours.applied() == trl.apply_coef()
        ours.observe(h)
        trl.step(h)
        assert ours.coef == trl.entropy_coef
    assert max(h for h in entropies) > target >= min(h for h in entropies)


def test_target_entropy_by_hand() -> None:
    c = TargetEntropyController(target=1.0, delta=0.01, coef0=0.0, coef_max=0.025)
    used = []
    for h in [0.9, 0.9, 0.8, 0.7, 1.2, 1.0, 1.3, 1.3, 1.3]:
        used.append(c.applied())
        c.observe(h)
    # no bonus before any step; +0.01 while H <= 1 up to 0.025; -0.01 above; the bonus only while H <= 1
    assert used == pytest.approx([0.0, 0.01, 0.02, 0.025, 0.025, 0.0, 0.025, 0.0, 0.0])
    assert c.coef == pytest.approx(0.0) and c.applied() == 0.0


def reference_pi(entropies: list[float], *, target: float, kp: float, ki: float, coef0: float,
                 coef_max: float) -> list[float]:
    """EntroPIC's law u = kp e + ki sum(e), e = target - H, written out: the coefficient after each step,
    clipped to [0, coef_max]; an error that would wind the integral further past a bound is not added."""
    out, integral = [], 0.0
    for h in entropies:
        e = target - h
        candidate = integral + e
        u = coef0 + kp * e + ki * candidate
        if (u > coef_max and e > 0) or (u < 0 and e < 0):
            candidate = integral
            u = coef0 + kp * e + ki * candidate
        integral = candidate
        out.append(min(max(u, 0.0), coef_max))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_pi_matches_its_equation(seed: int) -> None:
    rng = random.Random(seed)
    kw = {"target": 1.0, "kp": rng.choice([0.05, 0.5]), "ki": rng.choice([0.005, 0.05]), "coef0": 0.0,
          "coef_max": 0.05}
    entropies = [1.0 + rng.gauss(0, 0.3) - 0.01 * i for i in range(80)]
    c = PIEntropyController(**kw)
    got = []
    for h in entropies:
        c.observe(h)
        got.append(c.applied())
    assert got == pytest.approx(reference_pi(entropies, **kw), abs=1e-15)
    assert 0.0 in got or kw["coef_max"] in got  # the bounds were reached


def test_pi_by_hand() -> None:
    c = PIEntropyController(target=1.0, kp=0.1, ki=0.01, coef0=0.0, coef_max=0.05)
    c.observe(0.8)  # e = 0.2, I = 0.2: 0.02 + 0.002
    assert c.coef == pytest.approx(0.022)
    c.observe(0.5)  # e = 0.5, I = 0.7 gives 0.057 > 0.05 with e > 0: no integration, 0.05 + 0.002 -> 0.05
    assert (c.coef, c.integral) == (pytest.approx(0.05), pytest.approx(0.2))
    c.observe(1.3)  # e = -0.3, I = -0.1: -0.03 - 0.001 < 0 with e < 0: I stays 0.2; -0.03 + 0.002 -> 0
    assert (c.coef, c.integral) == (0.0, pytest.approx(0.2))
    c.observe(1.0)  # e = 0: 0.002
    assert c.coef == pytest.approx(0.002)


def guard_for(*overrides: str) -> CollapseGuard:
    return CollapseGuard(load_config(str(REPO / "configs/demo_grpo.yaml"),
                                     ["guard.enabled=true", "guard.adapt=true", *overrides]))


@pytest.mark.parametrize("mode", ["target_entropy", "entropic"])
def test_guard_mode_reports_the_coefficient_each_update_used(mode: str) -> None:
    g = guard_for(f"guard.controller.mode={mode}", "guard.controller.entropy_target=1.0",
                  "guard.controller.target_delta=0.01", "guard.coef_max=0.03", "guard.rules=[entropy_rate]")
    twin = TargetEntropyController(target=1.0, delta=0.01, coef0=0.0, coef_max=0.03) if mode == "target_entropy" \
        else PIEntropyController(target=1.0, kp=0.05, ki=0.005, coef0=0.0, coef_max=0.03)
    assert g.loss_overrides() == {"entropy_coef": 0.0}
    for step, h in enumerate([0.9, 0.8, 0.95, 1.2, 0.7], start=1):
        out = g.observe_train(step, {"policy/entropy": h})
        assert out["guard/entropy_coef"] == twin.applied() and out["guard/entropy_target"] == 1.0
        twin.observe(h)
        assert g.loss_overrides() == {"entropy_coef": twin.applied()}
    assert g.coef > 0


@pytest.mark.parametrize("mode", ["target_entropy", "entropic"])
def test_a_step_without_finite_entropy_leaves_the_controller_alone(mode: str) -> None:
    g = guard_for(f"guard.controller.mode={mode}", "guard.controller.entropy_target=1.0", "guard.rules=[entropy_rate]")
    g.observe_train(1, {"policy/entropy": 0.5})
    before = json.dumps(g.state()["controller"])
    for step, metrics in enumerate([{"policy/entropy": math.nan}, {}], start=2):
        g.observe_train(step, metrics)
    assert json.dumps(g.state()["controller"]) == before and g.coef > 0


@pytest.mark.parametrize(("overrides", "message"), [
    (["guard.enabled=true", "guard.controller.mode=target_entropy", "guard.controller.entropy_target=1"],
     "guard.controller.mode=target_entropy needs guard.adapt=true"),
    (["guard.enabled=true", "guard.adapt=true", "guard.controller.mode=entropic"],
     "needs guard.controller.entropy_target"),
    (["guard.controller.mode=pid"], "guard.controller.mode"),
    (["guard.controller.entropy_target=-1"], "guard.controller.entropy_target"),
])
def test_bad_controller_config_is_one_line_config_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(str(REPO / "configs/demo_grpo.yaml"), overrides)
    assert message in str(err.value) and "\n" not in str(err.value).strip()


@pytest.mark.parametrize("mode", ["target_entropy", "entropic"])
def test_controller_state_round_trips_and_continues_identically(mode: str) -> None:
    args = (f"guard.controller.mode={mode}", "guard.controller.entropy_target=1.0", "guard.rules=[entropy_rate]")
    seq = [1.0 + 0.3 * math.sin(i) - 0.01 * i for i in range(30)]

    def feed(g: CollapseGuard, steps: range) -> list[dict[str, float]]:
        return [g.observe_train(s + 1, {"policy/entropy": seq[s]}) for s in steps]

    whole, first = guard_for(*args), guard_for(*args)
    expected = feed(whole, range(30))
    feed(first, range(12))
    state = json.loads(json.dumps(first.state()))
    assert state["controller"]["kind"] == mode
    resumed = guard_for(*args)
    resumed.load_state(state)
    assert feed(resumed, range(12, 30)) == expected[12:]
    other = guard_for(*[a.replace(mode, "entropic" if mode == "target_entropy" else "target_entropy")
                        for a in args])
    with pytest.raises(ValueError, match="entropy controller"):
        other.load_state(state)


# ---- end to end: real Ray actors, the tiny bootstrapped model -----------------------------------

from test_guard import base_model  # noqa: E402, F401  (the bootstrapped demo model; Ray shut down after)


@pytest.mark.slow
def test_target_entropy_mode_trains_with_its_coefficient_and_resumes_2_plus_2(tmp_path: Path,
                                                                               base_model: str) -> None:  # noqa: F811
    from rl_div.run.tracking import read_metrics
    from rl_div.train.loop import train

    # a target above any entropy of the tiny model: the coefficient rises by 0.05 per step up to 0.2
    mode = ["guard.controller.mode=target_entropy", "guard.controller.entropy_target=50",
            "guard.controller.target_delta=0.05"]
    full = train(guard_run_config(tmp_path / "full", base_model, "train.steps=4", *mode))
    rows = read_metrics(full / "metrics.jsonl", kind="train")
    assert [r["guard/entropy_coef"] for r in rows] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    for r in rows:
        assert "loss/total" in r, "no optimizer step (zero signal): pick another seed"
        assert r["loss/total"] == pytest.approx(r["loss/pg"] - r["guard/entropy_coef"] * r["loss/entropy"],
                                                rel=1e-5, abs=1e-7)

    train(guard_run_config(tmp_path / "split", base_model, "train.steps=2", *mode))
    resumed = train(guard_run_config(tmp_path / "split", base_model, "train.steps=4", *mode), resume=True)
    again = read_metrics(resumed / "metrics.jsonl", kind="train")

    def guard_part(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k.startswith(("guard/", "loss/"))}

    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(again[2:], rows[2:], strict=True):
        assert guard_part(a) == pytest.approx(guard_part(b), rel=1e-6, abs=1e-7)
    assert again[2]["guard/entropy_coef"] == pytest.approx(0.1)  # restored, not restarted at 0
