"""Entropy controllers: the collapse guard's modes that steer the loss's entropy coefficient toward a
target entropy instead of reacting to the guard's rules (``guard.controller``; rl_div/train/guard.py
calls them after every training step with the step's ``policy/entropy``; configured by
``guard.controller``, rl_div/config/guard.py).

* ``target_entropy``, Skywork-OR1's adaptive entropy control (He et al. 2025, "Skywork Open Reasoner 1
  Technical Report"), as TRL implements it (``GRPOConfig.use_adaptive_entropy``; trl 1.16.0,
  ``GRPOTrainer.compute_loss``): after each step with entropy H, the coefficient c moves by delta toward
  raising entropy when H <= H* and back otherwise, c <- clip(c + delta, lo, hi) if H <= H* else
  clip(c - delta, lo, hi); the next update's bonus is c only while the last H <= H* (0 otherwise, and 0
  before any step, TRL's "last entropy = inf"). Defaults as TRL/Skywork: delta = 0.005; H* has no safe
  default (TRL's 0.2 nats almost never fires on a real model) and must be set.
* ``entropic``, EntroPIC (Yang et al. 2025, "EntroPIC: Towards Stable Long-Term Training of LLMs via
  Entropy Stabilization with Proportional-Integral Control"): a PI controller on the error e = H* - H,
  c = clip(c0 + kp * e + ki * sum(e), lo, hi). EntroPIC's own actuator re-weights the loss of
  high-probability tokens in positive and negative samples; the guard's actuator is the entropy
  coefficient, so rl_div applies the same PI law to that (an open point, said in docs/algorithms.md).
  Anti-windup (rl_div's choice): the integral does not grow while the output is clipped and the error
  pushes further past the bound. The authors' code (yk7333/EntroPIC) could not be fetched here.

Both start from c0 = algo.loss_params.entropy_coef (0 if unset), stay in [lo, hi] = [0, guard.coef_max],
and keep their state (coefficient, integral, last entropy) in the checkpoint through the guard's state.
"""

from __future__ import annotations

import math
from typing import Any

from rl_div.config import GuardConfig


class TargetEntropyController:
    """Skywork-OR1 / TRL adaptive entropy: the coefficient steps by ``delta`` toward the target."""

    kind = "target_entropy"
    STATE = ("coef", "last_entropy")

    def __init__(self, *, target: float, delta: float, coef0: float, coef_max: float) -> None:
        self.target, self.delta, self.coef_max = target, delta, coef_max
        self.coef = coef0
        self.last_entropy = math.inf  # no step yet: no bonus (TRL starts at inf)

    def observe(self, entropy: float) -> None:
        """After a step whose mean token entropy was ``entropy``: move the coefficient."""
        if entropy <= self.target:
            self.coef = min(self.coef + self.delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.delta, 0.0)
        self.last_entropy = entropy

    def applied(self) -> float:
        """The entropy coefficient of the next update: c while the last entropy is at or below target."""
        return self.coef if self.last_entropy <= self.target else 0.0

    def metrics(self) -> dict[str, float]:
        return {"guard/entropy_target": self.target}


class PIEntropyController:
    """EntroPIC's proportional-integral law on e = target - H, applied to the entropy coefficient."""

    kind = "entropic"
    STATE = ("coef", "integral", "last_error")

    def __init__(self, *, target: float, kp: float, ki: float, coef0: float, coef_max: float) -> None:
        self.target, self.kp, self.ki, self.coef0, self.coef_max = target, kp, ki, coef0, coef_max
        self.coef = coef0
        self.integral = 0.0
        self.last_error: float | None = None

    def observe(self, entropy: float) -> None:
        """After a step with entropy H: integrate e = target - H (unless that winds up past a bound)
        and set c = clip(c0 + kp e + ki I, 0, coef_max)."""
        error = self.target - entropy
        integral = self.integral + error
        raw = self.coef0 + self.kp * error + self.ki * integral
        winding_up = (raw > self.coef_max and error > 0) or (raw < 0.0 and error < 0)
        if winding_up:
            integral = self.integral
            raw = self.coef0 + self.kp * error + self.ki * integral
        self.integral = integral
        self.coef = min(max(raw, 0.0), self.coef_max)
        self.last_error = error

    def applied(self) -> float:
        return self.coef

    def metrics(self) -> dict[str, float]:
        out = {"guard/entropy_target": self.target, "guard/pi_integral": self.integral}
        if self.last_error is not None:
            out["guard/pi_error"] = self.last_error
        return out


EntropyController = TargetEntropyController | PIEntropyController


def entropy_controller(guard_cfg: GuardConfig, coef0: float) -> EntropyController | None:
    """The controller ``guard.controller.mode`` names (None for "rules", the guard's own rule-driven one)."""
    c = guard_cfg.controller
    if c.mode == "rules":
        return None
    assert c.entropy_target is not None  # checked at config load
    if c.mode == "target_entropy":
        return TargetEntropyController(target=c.entropy_target, delta=c.target_delta, coef0=coef0,
                                       coef_max=guard_cfg.coef_max)
    return PIEntropyController(target=c.entropy_target, kp=c.kp, ki=c.ki, coef0=coef0, coef_max=guard_cfg.coef_max)


def controller_state(controller: EntropyController) -> dict[str, Any]:
    """JSON-able state (the last entropy inf is written as None: JSON has no inf)."""
    state = {name: getattr(controller, name) for name in controller.STATE}
    if state.get("last_entropy") == math.inf:
        state["last_entropy"] = None
    return {"kind": controller.kind, **state}


def load_controller_state(controller: EntropyController, state: dict[str, Any]) -> None:
    """Restore :func:`controller_state`'s state; one saved by another controller kind is refused."""
    if state.get("kind") != controller.kind:
        raise ValueError(f"the checkpoint's entropy controller is {state.get('kind')!r}, the config's "
                         f"guard.controller is {controller.kind!r}")
    for name in controller.STATE:
        value = state[name]
        setattr(controller, name, math.inf if name == "last_entropy" and value is None else value)
