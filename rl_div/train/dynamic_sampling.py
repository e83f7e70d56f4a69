"""Dynamic sampling (rollout.dynamic_sampling): which groups of a scored round carry signal, and how a
training batch is filled from rounds.

A group whose G responses all score alike has advantage 0 under every group-relative estimator: it
costs a rollout and an update and teaches nothing. :func:`group_verdicts` (pure) says per group
whether its signal (the summed reward, or the verifier's 0/1 correctness: ``dynamic_sampling_signal``)
varies over the rows where it is finite; a NaN (a failed reward) is left out of the test and counted.
A group with fewer than two finite values is not informative.

:class:`BatchFiller` fills one training batch from rounds (each round: prompts_per_step prompts drawn
from the prompt stream, generated through the rollout pipeline, scored):

* ``off``: one round, trained as it is (today's behaviour); the metrics are still logged.
* ``filter`` (DAPO's dynamic sampling): informative groups are kept, the others dropped, and rounds
  are drawn until prompts_per_step groups are kept or ``dynamic_sampling_max_rounds`` rounds ran. A
  batch left short is trained as it is (``sampling/short``, counted in ``sampling/short_steps``); one
  with no informative group at all trains the last round unfiltered (all zero advantages: the update
  skips it under train.skip_zero_signal_steps), so no stage ever sees an empty batch. Informative
  groups beyond prompts_per_step are carried to the next step when they would still be within
  rollout.max_off_policy_steps steps of their launch there (so never with 0), else dropped and counted.
  The extra rounds go through the same rollout pipeline, in its order: with max_off_policy_steps k
  they are the batches already generating ahead, and every row keeps its own ``behavior_version``.
* ``replace`` (POLARIS): one round; each zero-variance group is replaced by a copy of one of the
  round's informative groups (in turn), so the batch keeps its size without a new round; a round
  with no informative group is trained as it is.

Metrics every step (sampling/*): rounds, groups_generated (this step's rounds), groups_kept
(informative groups in the trained batch), zero_variance_frac / all_correct_frac / all_wrong_frac
(of the generated groups, before filtering: the collapse signal), nan_rewards (rows), effective_batch
(rows trained), batch_groups, carried / dropped_stale groups, short.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rl_div.config import Config
from rl_div.data import RolloutBatch, group_rows
from rl_div.run.checkpoint import write_text_atomic
from rl_div.train.rollout_pipeline import batch_from_state, batch_state

CARRIED_FILE = "sampling_carried.pt"


@dataclass(frozen=True)
class GroupVerdicts:
    """Per group g (in group-id order): rows[g] its row ids, informative[g] whether its signal varies
    over its finite values, all_correct[g] / all_wrong[g] over its scored rows (both False for a
    group without a scored row); nan_rows: rows whose signal is NaN."""

    rows: list[list[int]]
    informative: list[bool]
    all_correct: list[bool]
    all_wrong: list[bool]
    nan_rows: int

    @property
    def num_groups(self) -> int:
        return len(self.rows)


def group_verdicts(rewards: torch.Tensor, correct: torch.Tensor | None, group_index: torch.Tensor,
                   signal: str = "reward") -> GroupVerdicts:
    """Which groups carry signal. rewards [B] float (NaN = failed), correct [B] 1.0/0.0/NaN or None,
    group_index [B] long; signal: "reward" or "correct" (None correct reads as all NaN)."""
    if signal not in ("reward", "correct"):
        raise ValueError(f"signal must be 'reward' or 'correct', got {signal!r}")
    nan = torch.full(rewards.shape, math.nan, dtype=torch.float64)
    verdict = correct.double() if correct is not None else nan
    values = (rewards if signal == "reward" else verdict).double()
    rows = group_rows(group_index)
    informative, all_correct, all_wrong = [], [], []
    for r in rows:
        v = values[r]
        finite = v[torch.isfinite(v)]
        informative.append(finite.numel() >= 2 and bool(finite.max() > finite.min()))
        c = verdict[r]
        scored = c[torch.isfinite(c)]
        all_correct.append(scored.numel() > 0 and bool((scored == 1).all()))
        all_wrong.append(scored.numel() > 0 and bool((scored == 0).all()))
    return GroupVerdicts(rows, informative, all_correct, all_wrong, int((~torch.isfinite(values)).sum()))


def renumber_groups(batch: RolloutBatch) -> RolloutBatch:
    """group_index made dense (0..n-1) in order of first appearance; rows of a group stay contiguous."""
    _, dense = torch.unique_consecutive(batch.group_index, return_inverse=True)
    batch.group_index = dense
    return batch


def replace_plan(informative: list[bool]) -> list[int]:
    """replace: for each group, the group whose rows take its place: itself when informative, else the
    informative groups in turn (the first zero-variance group gets the first informative one, ...).
    No informative group: every group stays."""
    donors = [g for g, ok in enumerate(informative) if ok]
    if not donors:
        return list(range(len(informative)))
    out, turn = [], 0
    for g, ok in enumerate(informative):
        if ok:
            out.append(g)
        else:
            out.append(donors[turn % len(donors)])
            turn += 1
    return out


@dataclass
class KeptGroup:
    """One informative group waiting in the batch being filled: its rows and the step its round was launched."""

    rows: RolloutBatch
    launch_step: int


Round = Callable[[], tuple[RolloutBatch, int]]  # draws one scored round: (batch, the step it was launched at)


class BatchFiller:
    """Fills training batches from rounds by rollout.dynamic_sampling; holds the carried groups (the
    partly filled next batch), which :meth:`state` / :meth:`load_state` put into the checkpoint."""

    def __init__(self, mode: str, target_groups: int, max_rounds: int, signal: str, max_off_policy_steps: int) -> None:
        self.mode, self.target, self.max_rounds, self.signal = mode, target_groups, max_rounds, signal
        self.max_lag = max_off_policy_steps
        self.carried: list[KeptGroup] = []
        self.short_steps = 0

    @classmethod
    def from_config(cls, cfg: Config) -> BatchFiller:
        r = cfg.rollout
        return cls(r.dynamic_sampling, r.prompts_per_step, r.dynamic_sampling_max_rounds, r.dynamic_sampling_signal,
                   r.max_off_policy_steps)

    def fill(self, step: int, draw: Round) -> tuple[RolloutBatch, dict[str, float]]:
        """The training batch of ``step`` and its sampling/* metrics."""
        if self.mode == "filter":
            return self._filter(step, draw)
        batch, _ = draw()
        v = group_verdicts(batch.rewards, batch.correct, batch.group_index, self.signal)
        plan = replace_plan(v.informative) if self.mode == "replace" else list(range(v.num_groups))
        if plan != list(range(v.num_groups)):
            batch = renumber_groups(RolloutBatch.concat([batch.select(v.rows[g]) for g in plan]))
        kept = sum(v.informative[g] for g in plan)
        return batch, self._metrics(1, [v], kept, batch, short=False, dropped=0)

    def _filter(self, step: int, draw: Round) -> tuple[RolloutBatch, dict[str, float]]:
        dropped = sum(1 for g in self.carried if step - g.launch_step > self.max_lag)
        kept = [g for g in self.carried if step - g.launch_step <= self.max_lag]
        verdicts: list[GroupVerdicts] = []
        last: RolloutBatch | None = None
        while len(kept) < self.target and len(verdicts) < self.max_rounds:
            last, launched = draw()
            v = group_verdicts(last.rewards, last.correct, last.group_index, self.signal)
            verdicts.append(v)
            kept += [KeptGroup(last.select(r), launched) for r, ok in zip(v.rows, v.informative, strict=True) if ok]
        use, rest = kept[:self.target], kept[self.target:]
        self.carried = [g for g in rest if step + 1 - g.launch_step <= self.max_lag]
        dropped += len(rest) - len(self.carried)
        short = len(use) < self.target
        self.short_steps += int(short)
        if use:
            batch = renumber_groups(RolloutBatch.concat([g.rows for g in use]))
        else:  # nothing informative in max_rounds rounds: the last round as it is (no signal, skipped)
            assert last is not None
            batch = last
        return batch, self._metrics(len(verdicts), verdicts, len(use), batch, short, dropped)

    def _metrics(self, rounds: int, verdicts: list[GroupVerdicts], kept: int, batch: RolloutBatch, short: bool,
                 dropped: int) -> dict[str, float]:
        generated = sum(v.num_groups for v in verdicts)

        def frac(flags: str) -> float:
            return sum(sum(getattr(v, flags)) for v in verdicts) / generated if generated else math.nan

        return {"sampling/rounds": float(rounds), "sampling/groups_generated": float(generated),
                "sampling/groups_kept": float(kept),
                "sampling/zero_variance_frac": 1.0 - frac("informative") if generated else math.nan,
                "sampling/all_correct_frac": frac("all_correct"), "sampling/all_wrong_frac": frac("all_wrong"),
                "sampling/nan_rewards": float(sum(v.nan_rows for v in verdicts)),
                "sampling/effective_batch": float(batch.size), "sampling/batch_groups": float(batch.num_groups),
                "sampling/carried": float(len(self.carried)), "sampling/dropped_stale": float(dropped),
                "sampling/short": float(short), "sampling/short_steps": float(self.short_steps)}

    # ---- checkpoint ----------------------------------------------------------------------------
    def save(self, ckpt_dir: Path) -> dict[str, Any]:
        """The carried groups' rows into ckpt_dir/sampling_carried.pt (when any); returns the JSON-able
        rest for trainer_state.json."""
        if self.carried:
            torch.save([batch_state(g.rows) for g in self.carried], ckpt_dir / CARRIED_FILE)
        return {"short_steps": self.short_steps, "launch_steps": [g.launch_step for g in self.carried]}

    def load(self, ckpt_dir: Path, state: dict[str, Any]) -> None:
        path = ckpt_dir / CARRIED_FILE
        rows = [batch_from_state(b) for b in torch.load(path, weights_only=True)] if path.exists() else []
        self.short_steps = int(state.get("short_steps", 0))
        self.carried = [KeptGroup(r, s) for r, s in zip(rows, state.get("launch_steps", []), strict=True)]


def write_group_log(out: Path, step: int, batch: RolloutBatch) -> None:
    """rollout.log_groups: the trained batch's groups (uid, rewards, correct, behaviour versions) as
    out/groups/step_<step>.json."""
    groups = []
    for rows in group_rows(batch.group_index):
        pick = torch.as_tensor(rows)
        groups.append({"uid": batch.prompts[rows[0]].uid, "rewards": batch.rewards[pick].tolist(),
                       "correct": None if batch.correct is None else batch.correct[pick].tolist(),
                       "behavior_version": batch.behavior_version[pick].tolist()})
    folder = out / "groups"
    folder.mkdir(exist_ok=True)
    write_text_atomic(folder / f"step_{step:06d}.json", json.dumps({"step": step, "groups": groups}))
