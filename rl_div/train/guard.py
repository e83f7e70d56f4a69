"""The collapse guard: watch diversity collapse while training, from metrics the run already logs, and
(``guard.adapt``) raise the loss's entropy coefficient while a rule fires.

Rules (names as in ``guard.rules``), each a 0/1 flag ``guard/fired_<rule>``:

* ``entropy_rate``: training entropy falls faster than ``entropy_max_drop`` (a fraction of the run's
  reference entropy) per ``entropy_window`` steps. Smoothed: S_t = mean of ``policy/entropy`` over the
  last ``smooth_steps`` training steps; reference H_ref = S at step ``smooth_steps`` (the mean of the
  first ``smooth_steps`` steps). Defined from step smooth_steps + entropy_window on; fires when
  S_t < S_{t-W} - entropy_max_drop * H_ref, i.e. when guard/entropy_drop = (S_{t-W} - S_t) / H_ref
  exceeds entropy_max_drop.
* ``distinct_correct``: distinct correct answers per prompt below ``distinct_fraction`` of the base
  model's. With eval.at_start the value is the held-out evaluation's ``div/distinct_correct_answers``
  (eval.n samples per problem) and the base is the step-0 evaluation's; the flag is updated at every
  evaluation and holds until the next. Without eval.at_start it is the training batches' value
  (group_size samples per prompt) smoothed as above, against the mean of the first smooth_steps steps.
* ``passk``: held-out pass@k at the largest k below the base model's interval: the lower end of
  mean - z * sd / sqrt(P) over the P problems' unbiased pass@k estimates at step 0 (z = ``passk_z``;
  needs eval.at_start). Checked at every later evaluation.
* ``zero_variance`` (opt-in): the share of the step's generated groups whose rewards (or verdicts) do
  not vary, ``sampling/zero_variance_frac`` (before dynamic sampling filters them: the collapse signal
  of an all-correct or all-wrong policy), smoothed as above, exceeds ``zero_variance_max``. Steps that
  generated no group (a batch filled from carried groups) are passed over.

A rule that starts firing writes one warning line to train.log:
``guard: <rule> fired at step S: <value> < <threshold>`` (``>`` for zero_variance); one that stops, an
info line.

Controller (``guard.adapt``): the entropy coefficient c starts at c_min = algo.loss_params.entropy_coef
(0 if unset). After each training step, while any rule fires: c <- min(coef_max, c + coef_step); while
none fires: c <- c_min + coef_decay * (c - c_min), snapped to c_min once within coef_step / 10 of it.
So c stays in [c_min, coef_max]. The learner receives c for the next update
(``Learner.update(batch, loss_overrides={"entropy_coef": c})``); every change is a log line, and
``guard/entropy_coef`` is the coefficient the step's update used.

``guard.controller.mode`` picks what moves c under ``guard.adapt``: "rules" (the controller above), or an
entropy controller that steers ``policy/entropy`` toward ``guard.controller.entropy_target`` whatever the rules say
(rl_div/train/entropy_control.py: "target_entropy", Skywork-OR1's adaptive entropy as TRL has it, and
"entropic", EntroPIC's PI law); the rules still watch and log. Its state is in the checkpoint too.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import numpy as np

from rl_div.config import Config, ConfigError
from rl_div.metrics import pass_at_k
from rl_div.train.entropy_control import controller_state, entropy_controller, load_controller_state

log = logging.getLogger("rl_div")

RULES = ("entropy_rate", "distinct_correct", "passk", "zero_variance")


def trailing_mean(values: list[float], length: int, end: int | None = None) -> float | None:
    """Mean of the ``length`` values ending before index ``end`` (default: the last ones); None when
    there are fewer."""
    stop = len(values) if end is None else end
    if stop < length or length < 1:
        return None
    return float(np.mean(values[stop - length:stop]))


def passk_lower_bound(n: list[int], c: list[int], k: int, z: float) -> float:
    """Lower end of a normal interval over problems for mean pass@k: mean - z * sd(ddof=1) / sqrt(P).

    n, c: samples and correct samples per problem [P]; k <= min(n). One problem: sd = 0."""
    values = np.asarray(pass_at_k(np.asarray(n), np.asarray(c), np.full(len(n), k)), dtype=float)
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()) - z * sd / math.sqrt(len(values))


def largest_k(metrics: dict[str, Any]) -> int | None:
    """The largest k of the pass@k keys in an evaluation's metrics."""
    ks = [int(key.split("@", 1)[1]) for key in metrics if key.startswith("pass@") and key[5:].isdigit()]
    return max(ks) if ks else None


def check_loss_takes_entropy_coef(cfg: Config) -> None:
    """guard.adapt passes entropy_coef to the loss: refuse a loss (e.g. a plugin) that takes none."""
    from rl_div.algos import LOSSES

    params = inspect.signature(LOSSES[cfg.algo.loss]).parameters
    if "entropy_coef" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ConfigError(f"guard.adapt: loss {cfg.algo.loss!r} takes no entropy_coef parameter, so the guard "
                          "cannot raise its entropy bonus (use ppo_clip or pg, or guard.adapt=false)")


class CollapseGuard:
    """Rule state, the entropy-coefficient controller, and their checkpointed state.

    The trainer calls :meth:`observe_eval` after every evaluation and :meth:`observe_train` after every
    training step, and passes :meth:`loss_overrides` to each learner update. Disabled: all no-ops.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg.guard
        self.enabled = cfg.guard.enabled
        self.eval_base = cfg.eval.at_start  # distinct_correct / passk against the step-0 evaluation
        self.coef_min = float(cfg.algo.loss_params.get("entropy_coef", 0.0))
        if self.enabled and self.cfg.adapt:
            check_loss_takes_entropy_coef(cfg)
        self.coef = self.coef_min
        # guard.controller other than "rules": an entropy controller moves the coefficient instead
        self.controller = entropy_controller(self.cfg, self.coef_min) if self.enabled and self.cfg.adapt else None
        if self.controller is not None:
            self.coef = self.controller.applied()
        self.entropy: list[float] = []  # training entropy, last smooth_steps + entropy_window steps
        self.distinct: list[float] = []  # training distinct correct answers, last smooth_steps (no eval base)
        self.zero_variance: list[float] = []  # sampling/zero_variance_frac, last smooth_steps steps that had one
        self.zero_variance_smoothed: float | None = None
        self.entropy_ref: float | None = None
        self.distinct_ref: float | None = None  # base distinct correct answers (eval or training)
        self.distinct_ratio: float | None = None
        self.passk_lower: float | None = None
        self.passk_k: int | None = None
        self.passk_value: float | None = None
        self.entropy_drop: float | None = None
        self.entropy_smoothed: float | None = None
        self.fired = dict.fromkeys(RULES, False)

    # ---- observations ------------------------------------------------------------------------
    def observe_eval(self, step: int, metrics: dict[str, Any], problems: list[dict[str, Any]]) -> dict[str, float]:
        """Update the evaluation rules (distinct_correct with an eval base, passk); returns guard/* metrics."""
        if not self.enabled or not self.eval_base:
            return {}
        distinct, k = metrics.get("div/distinct_correct_answers"), largest_k(metrics)
        if step == 0:  # the base model
            self.distinct_ref = distinct
            if k is not None and problems:
                self.passk_k = k
                self.passk_lower = passk_lower_bound([p["n"] for p in problems], [p["c"] for p in problems],
                                                     k, self.cfg.passk_z)
            return self.metrics()
        if distinct is not None and self.distinct_ref:
            self.distinct_ratio = distinct / self.distinct_ref
            self._set("distinct_correct", step, distinct < self.cfg.distinct_fraction * self.distinct_ref,
                      distinct, self.cfg.distinct_fraction * self.distinct_ref)
        if self.passk_lower is not None and f"pass@{self.passk_k}" in metrics:
            self.passk_value = float(metrics[f"pass@{self.passk_k}"])
            self._set("passk", step, self.passk_value < self.passk_lower, self.passk_value, self.passk_lower)
        return self.metrics()

    def observe_train(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
        """Update the training rules, then the controller; returns guard/* metrics with the coefficient
        this step's update used."""
        if not self.enabled:
            return {}
        c = self.cfg
        if "policy/entropy" in metrics:
            self.entropy = [*self.entropy, float(metrics["policy/entropy"])][-(c.smooth_steps + c.entropy_window):]
            self.entropy_smoothed = trailing_mean(self.entropy, c.smooth_steps)
            if self.entropy_ref is None and len(self.entropy) == c.smooth_steps:
                self.entropy_ref = self.entropy_smoothed
            earlier = trailing_mean(self.entropy, c.smooth_steps, len(self.entropy) - c.entropy_window)
            if earlier is not None and self.entropy_ref and self.entropy_smoothed is not None:
                self.entropy_drop = (earlier - self.entropy_smoothed) / self.entropy_ref
                threshold = earlier - c.entropy_max_drop * self.entropy_ref
                self._set("entropy_rate", step, self.entropy_smoothed < threshold, self.entropy_smoothed, threshold)
        if not self.eval_base and "div/distinct_correct_answers" in metrics:
            self.distinct = [*self.distinct, float(metrics["div/distinct_correct_answers"])][-c.smooth_steps:]
            value = trailing_mean(self.distinct, c.smooth_steps)
            if self.distinct_ref is None:
                self.distinct_ref = value
            elif value is not None and self.distinct_ref:
                self.distinct_ratio = value / self.distinct_ref
                threshold = c.distinct_fraction * self.distinct_ref
                self._set("distinct_correct", step, value < threshold, value, threshold)
        self._observe_zero_variance(step, metrics.get("sampling/zero_variance_frac"))
        out = {**self.metrics(), "guard/entropy_coef": self.coef}
        if c.adapt:
            self._control(step, metrics)
        if self.controller is not None:
            out.update(self.controller.metrics())
        return out

    def _observe_zero_variance(self, step: int, value: Any) -> None:
        if value is None or not math.isfinite(float(value)):  # no group generated this step
            return
        c = self.cfg
        self.zero_variance = [*self.zero_variance, float(value)][-c.smooth_steps:]
        self.zero_variance_smoothed = trailing_mean(self.zero_variance, c.smooth_steps)
        if self.zero_variance_smoothed is not None:
            self._set("zero_variance", step, self.zero_variance_smoothed > c.zero_variance_max,
                      self.zero_variance_smoothed, c.zero_variance_max, above=True)

    def loss_overrides(self) -> dict[str, float] | None:
        """Loss parameters for the next update (merged over algo.loss_params); None when not adapting."""
        return {"entropy_coef": self.coef} if self.enabled and self.cfg.adapt else None

    # ---- the controller ----------------------------------------------------------------------
    def _control(self, step: int, metrics: dict[str, Any]) -> None:
        c, old = self.cfg, self.coef
        firing = [r for r in RULES if self.fired[r]]
        if self.controller is not None:  # an entropy controller: steered by policy/entropy, not the rules
            entropy = float(metrics.get("policy/entropy", math.nan))
            if math.isfinite(entropy):  # a step without a finite entropy leaves the controller where it was
                self.controller.observe(entropy)
            new = self.controller.applied()
            if new != old:
                self.coef = new
                log.info("guard: entropy_coef %.6g -> %.6g after step %d (%s, entropy %.5g, target %.5g)", old, new,
                         step, c.controller.mode, float(metrics.get("policy/entropy", math.nan)),
                         c.controller.entropy_target)
            return
        if firing:
            new = min(c.coef_max, old + c.coef_step)
        else:
            new = self.coef_min + c.coef_decay * (old - self.coef_min)
            if new - self.coef_min < c.coef_step / 10:
                new = self.coef_min
        if new != old:
            self.coef = new
            log.info("guard: entropy_coef %.6g -> %.6g after step %d (%s)", old, new, step,
                     "firing: " + ", ".join(firing) if firing else "no rule firing: decay")

    def _set(self, rule: str, step: int, fired: bool, value: float, threshold: float, above: bool = False) -> None:
        """above: the rule fires when value > threshold (else when value < threshold)."""
        if rule not in self.cfg.rules:
            return
        fire_op, clear_op = (">", "<=") if above else ("<", ">=")
        if fired and not self.fired[rule]:
            log.warning("guard: %s fired at step %d: %.5g %s %.5g", rule, step, value, fire_op, threshold)
        elif self.fired[rule] and not fired:
            log.info("guard: %s cleared at step %d: %.5g %s %.5g", rule, step, value, clear_op, threshold)
        self.fired[rule] = fired

    def metrics(self) -> dict[str, float]:
        """guard/* values known so far (an undefined one is left out) and every rule's 0/1 flag."""
        values = {"guard/entropy_smoothed": self.entropy_smoothed, "guard/entropy_drop": self.entropy_drop,
                  "guard/distinct_correct_ratio": self.distinct_ratio, "guard/passk": self.passk_value,
                  "guard/passk_lower": self.passk_lower, "guard/zero_variance_frac": self.zero_variance_smoothed}
        out = {k: float(v) for k, v in values.items() if v is not None}
        out.update({f"guard/fired_{r}": float(self.fired[r]) for r in RULES})
        out["guard/fired"] = float(any(self.fired.values()))
        return out

    # ---- checkpoint state --------------------------------------------------------------------
    STATE = ("coef", "entropy", "distinct", "entropy_ref", "distinct_ref", "distinct_ratio", "passk_lower",
             "passk_k", "passk_value", "entropy_drop", "entropy_smoothed", "fired", "zero_variance",
             "zero_variance_smoothed")

    def state(self) -> dict[str, Any]:
        """JSON-able state for trainer_state.json (floats round-trip exactly)."""
        state = {name: getattr(self, name) for name in self.STATE}
        if self.controller is not None:
            state["controller"] = controller_state(self.controller)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        for name in self.STATE:
            if name in state:
                setattr(self, name, state[name])
        self.fired = {**dict.fromkeys(RULES, False), **self.fired}  # a checkpoint from before a rule existed
        if self.controller is not None and "controller" in state:
            load_controller_state(self.controller, state["controller"])
