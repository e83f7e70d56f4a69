"""Score a batch of responses with a weighted set of rewards.

Order of work for one batch (B responses, grouped by ``group_index``):
1. extract each response's answer (rewards.answers, by the record's extractor);
2. run every sample reward on every response in the isolated worker pool (``workers`` processes in
   parallel, ``items_per_call`` items per round trip) with the per-item timeout (or in-process when
   ``isolated=False``: no timeout then);
3. take ``correct`` from the first verifier among the specs;
4. run every group reward on each group, with that group's answers and verdicts, in the pool too
   (one group per call, ``group_timeout_s`` each) or in-process when ``isolated=False``;
5. total = sum of weight * component.

A stateful group reward (rewards.registry.is_stateful: ``outcome_ucb``) runs here in the scoring process,
one group after another, with ``state=`` the table of its group's prompt from the ``state`` the caller
passes to :meth:`RewardScorer.score` (``{reward key: {prompt text: table}}``), updated in place and
returned in ``RewardResult.state``; without one it starts from empty tables, which nothing keeps.

A reward that raises or times out gives NaN for the affected responses (a sample reward: that
response; a group reward: its whole group) and one count in ``errors["<key>/errors"]`` or
``errors["<key>/timeouts"]`` per failed call. NaN then propagates into the total: a failure is
never scored 0.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rewards.answers import extract_answer
from rewards.isolation import IsolatedPool, IsolatedWorker, Outcome
from rewards.registry import REWARDS, is_stateful, is_verifier, reward_scope
from rl_div.data import group_rows
from rl_div.registry import UnknownNameError, import_plugins

if TYPE_CHECKING:
    from rl_div.data import PromptRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardSpec:
    """One reward in the sum: its registered name, weight and keyword parameters."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardResult:
    """Scores of B responses. Lists are [B]; NaN marks a response that could not be scored.

    total: weighted sum. components: key -> scores (key = reward name, "name#2" for a repeat).
    correct: the first verifier's 1.0/0.0 (NaN if it failed or no verifier was given).
    answers: extracted answer text (None = unparseable). errors: "<key>/errors" and
    "<key>/timeouts" -> count of failed calls. error_messages: the first few failures, for logs.
    """

    total: list[float]
    components: dict[str, list[float]]
    correct: list[float]
    answers: list[str | None]
    errors: dict[str, int]
    error_messages: list[str]
    state: dict[str, dict[str, Any]] | None = None  # stateful rewards' tables, as passed and updated


@dataclass(frozen=True)
class _Resolved:
    key: str
    spec: RewardSpec
    scope: str
    verifier: bool


class RewardScorer:
    """Scores batches with ``specs``; holds the isolated workers so they stay warm across steps.

    ``timeout_s``: per-response limit for sample rewards; ``group_timeout_s``: per-group limit for
    group rewards. ``workers``: worker processes scoring in parallel; ``items_per_call``: responses
    per round trip to a worker. ``plugins``: modules that register user rewards; imported here and in
    the workers. ``worker``: an IsolatedWorker or IsolatedPool to share (e.g. between a training and
    an evaluation scorer); the scorer then does not close it. Call :meth:`close` (or use ``with``).
    """

    def __init__(self, specs: Sequence[RewardSpec], *, timeout_s: float = 10.0, isolated: bool = True,
                 plugins: Sequence[str] = (), max_error_messages: int = 5,
                 worker: IsolatedWorker | IsolatedPool | None = None, workers: int = 1,
                 items_per_call: int = 16, group_timeout_s: float = 120.0) -> None:
        if not specs:
            raise ValueError("RewardScorer needs at least one RewardSpec")
        import_plugins(plugins)
        self.rewards = _resolve(specs)
        self.timeout_s = timeout_s
        self.group_timeout_s = group_timeout_s
        self.items_per_call = items_per_call
        self.isolated = isolated
        self.max_error_messages = max_error_messages
        self.verifier_key = next((r.key for r in self.rewards if r.verifier), None)
        self._golds: dict[str, dict[str, str | None]] = {}  # reward key -> gold -> why unusable (None: fine)
        if self.verifier_key is None and any(r.scope == "group" for r in self.rewards):
            log.warning("group rewards without a verifier: every response's `correct` is NaN")
        self._owns_worker = isolated and worker is None
        if isinstance(worker, IsolatedWorker):
            worker = IsolatedPool(workers=[worker])
        self.worker = (worker or IsolatedPool(plugins, workers)) if isolated else None
        if self.worker is not None:
            self.worker.start()  # warms up while the caller does other work

    def score(self, completions: Sequence[str], records: Sequence[PromptRecord],
              group_index: Sequence[int], state: dict[str, dict[str, Any]] | None = None) -> RewardResult:
        """Score B responses; records and group_index are per response ([B] each). state: the stateful
        rewards' tables ({reward key: {prompt text: table}}), updated in place and returned."""
        b = len(completions)
        if len(records) != b or len(group_index) != b:
            raise ValueError(f"{b} completions, {len(records)} records, {len(group_index)} group indices")
        log_ = _ErrorLog(self.rewards, self.max_error_messages)
        answers = [_extract(c, r, i, log_) for i, (c, r) in enumerate(zip(completions, records, strict=True))]
        components: dict[str, list[float]] = {}
        for r in self.rewards:  # sample rewards first: group rewards need `correct`
            if r.scope == "sample":
                components[r.key] = self._sample_scores(r, completions, records, log_)
        correct = list(components[self.verifier_key]) if self.verifier_key else [math.nan] * b
        tables = {} if state is None else state
        for r in self.rewards:
            if r.scope == "group" and is_stateful(REWARDS.get(r.spec.name)):
                components[r.key] = self._stateful_scores(r, completions, answers, correct, records, group_index,
                                                          tables.setdefault(r.key, {}), log_)
            elif r.scope == "group":
                components[r.key] = self._group_scores(r, completions, answers, correct, records, group_index, log_)
        total = [sum((r.spec.weight * components[r.key][i] for r in self.rewards), 0.0) for i in range(b)]
        return RewardResult(total=total, components={r.key: components[r.key] for r in self.rewards},
                            correct=correct, answers=answers, errors=log_.counts, error_messages=log_.messages,
                            state=state)

    def close(self) -> None:
        if self.worker is not None and self._owns_worker:
            self.worker.close()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sample_scores(self, r: _Resolved, completions: Sequence[str], records: Sequence[PromptRecord],
                       log_: _ErrorLog) -> list[float]:
        """Every response's score; the responses to a gold answer that cannot be scored against are
        NaN without a call (the gold was checked, counted and logged once: _unusable_golds)."""
        bad = self._unusable_golds(r, records, log_)
        todo = [i for i, record in enumerate(records) if record.answer not in bad]
        scores = [math.nan] * len(completions)
        for i, outcome in zip(todo, self._run(r.spec, [(completions[i], records[i]) for i in todo], self.timeout_s,
                                              self.items_per_call), strict=True):
            value = _as_score(outcome)
            if not outcome.ok or value is None:
                log_.add(r.key, i, outcome)
            scores[i] = math.nan if value is None else value
        return scores

    def _unusable_golds(self, r: _Resolved, records: Sequence[PromptRecord], log_: _ErrorLog) -> set[str]:
        """The gold answers (of reward r, when it declares a ``gold_check``) that cannot be scored
        against: each new gold is checked once, alone, under reward.timeout_s; a bad one is one
        error (or timeout) count and one log line for the whole run, not one verifier timeout per
        sample per step."""
        check = getattr(REWARDS.get(r.spec.name), "gold_check", None)
        if check is None:
            return set()
        checked = self._golds.setdefault(r.key, {})
        new = list(dict.fromkeys(rec.answer for rec in records if rec.answer not in checked))
        if new:
            spec = RewardSpec(name=check)
            for gold, outcome in zip(new, self._run(spec, [(g,) for g in new], self.timeout_s, self.items_per_call),
                                     strict=True):
                problem = outcome.value if outcome.ok else (outcome.error or "timed out")
                checked[gold] = problem
                if problem is not None:
                    row = next(i for i, rec in enumerate(records) if rec.answer == gold)
                    log.warning("%s: gold answer %r cannot be scored against (%s); its responses stay unscored (NaN) "
                                "for the rest of the run", r.key, gold[:80], problem)
                    log_.add(r.key, row, outcome if not outcome.ok else Outcome(error=str(problem)))
        return {gold for gold, problem in checked.items() if problem is not None}

    def _group_scores(self, r: _Resolved, completions: Sequence[str], answers: list[str | None],
                      correct: list[float], records: Sequence[PromptRecord], group_index: Sequence[int],
                      log_: _ErrorLog) -> list[float]:
        """Each group's scores (NaN for a whole group whose call fails, times out or returns the
        wrong number of values, with one count; NaN and one count for each non-finite value).

        A reward with a ``prepare_batch`` hook (novelty, partition: embed the whole batch once) runs
        the whole batch in one call, so the hook and the groups share one process; its timeout then
        covers the batch."""
        groups = group_rows(group_index)
        if getattr(REWARDS.get(r.spec.name), "prepare_batch", None) is not None:
            args = (list(completions), answers, correct, list(records), list(group_index))
            outcomes = self._run_batched(r.spec, args, len(groups))
        else:
            items = [([completions[i] for i in rows], [answers[i] for i in rows], [correct[i] for i in rows],
                      [records[i] for i in rows]) for rows in groups]
            outcomes = self._run(r.spec, items, self.group_timeout_s, 1)
        scores = [math.nan] * len(completions)
        for rows, outcome in zip(groups, outcomes, strict=True):
            _place_group(scores, rows, outcome, r.key, log_)
        return scores

    def _stateful_scores(self, r: _Resolved, completions: Sequence[str], answers: list[str | None],
                         correct: list[float], records: Sequence[PromptRecord], group_index: Sequence[int],
                         tables: dict[str, Any], log_: _ErrorLog) -> list[float]:
        """A stateful group reward, group by group in this process, each with its prompt's table."""
        fn = REWARDS.get(r.spec.name)
        scores = [math.nan] * len(completions)
        for rows in group_rows(group_index):
            table = tables.setdefault(records[rows[0]].prompt, {})
            try:
                outcome = Outcome(value=fn([completions[i] for i in rows], [answers[i] for i in rows],
                                           [correct[i] for i in rows], [records[i] for i in rows], state=table,
                                           **r.spec.params))
            except Exception as err:
                outcome = Outcome(error=f"{type(err).__name__}: {err}")
            _place_group(scores, rows, outcome, r.key, log_)
        return scores

    def _run_batched(self, spec: RewardSpec, args: tuple[Any, ...], num_groups: int) -> list[Outcome]:
        """:func:`score_groups_batched` in a pool worker (group_timeout_s for the batch) or here."""
        kwargs = {"reward": spec.name, "params": dict(spec.params)}
        if self.worker is not None:
            outcome = self.worker.call(BATCHED_GROUPS, args, kwargs, timeout_s=self.group_timeout_s)
        else:
            try:
                outcome = Outcome(value=score_groups_batched(*args, **kwargs))
            except Exception as err:
                outcome = Outcome(error=f"{type(err).__name__}: {err}")
        if not outcome.ok:
            return [outcome] * num_groups
        return [Outcome(error=v) if isinstance(v, str) else Outcome(value=v) for v in outcome.value]

    def _run(self, spec: RewardSpec, items: list[tuple[Any, ...]], timeout_s: float,
             items_per_call: int) -> list[Outcome]:
        """The reward on every item: in the worker pool (with timeouts), or in this process."""
        if self.worker is not None:
            return self.worker.map(spec.name, items, spec.params, timeout_s=timeout_s, items_per_call=items_per_call)
        if ":" in spec.name:  # a module:function (a gold check), as the isolated worker resolves it
            module, _, attr = spec.name.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        else:
            fn = REWARDS.get(spec.name)
        outcomes = []
        for args in items:
            try:
                outcomes.append(Outcome(value=fn(*args, **spec.params)))
            except Exception as err:  # reported as NaN + error count by the caller
                outcomes.append(Outcome(error=f"{type(err).__name__}: {err}"))
        return outcomes


BATCHED_GROUPS = "rewards.runner:score_groups_batched"  # a module:function the isolated worker imports


def score_groups_batched(completions: list[str], answers: list[str | None], correct: list[float],
                         records: list[PromptRecord], group_index: list[int], *, reward: str,
                         params: dict[str, Any]) -> list[list[float] | str]:
    """A group reward over a whole batch in one process: its ``prepare_batch`` hook once (e.g. one
    embedding call for every distinct text), then each group. Returns per group (in order of first
    appearance) its values, or the error text of that group's call."""
    fn = REWARDS.get(reward)
    prepare = getattr(fn, "prepare_batch", None)
    if prepare is not None:
        try:
            prepare(completions, answers, correct, records, group_index, **params)
        except Exception as err:  # the group calls then do the work themselves, and show any real error
            log.debug("%s: batch preparation failed (%s); groups run on their own", reward, err)
    out: list[list[float] | str] = []
    for rows in group_rows(group_index):
        try:
            out.append(list(fn([completions[i] for i in rows], [answers[i] for i in rows], [correct[i] for i in rows],
                               [records[i] for i in rows], **params)))
        except Exception as err:
            out.append(f"{type(err).__name__}: {err}")
    return out


def score_batch(specs: Sequence[RewardSpec], completions: Sequence[str], records: Sequence[PromptRecord],
                group_index: Sequence[int], *, timeout_s: float, isolated: bool = True,
                plugins: Sequence[str] = ()) -> RewardResult:
    """One-shot scoring (starts and stops a worker); prefer a RewardScorer across steps."""
    with RewardScorer(specs, timeout_s=timeout_s, isolated=isolated, plugins=plugins) as scorer:
        return scorer.score(completions, records, group_index)


def score_group(specs: Sequence[RewardSpec], completions: Sequence[str], records: Sequence[PromptRecord],
                *, timeout_s: float, isolated: bool = True, plugins: Sequence[str] = ()) -> RewardResult:
    """score_batch for the responses to a single prompt (all in group 0)."""
    return score_batch(specs, completions, records, [0] * len(completions), timeout_s=timeout_s,
                       isolated=isolated, plugins=plugins)


# ---- helpers ------------------------------------------------------------------------------------
def _resolve(specs: Sequence[RewardSpec]) -> list[_Resolved]:
    """Look every name up now (a typo fails at start, not mid-run) and give each a unique key."""
    seen: dict[str, int] = {}
    out = []
    for spec in specs:
        fn = REWARDS.get(spec.name)  # raises UnknownNameError listing the valid names
        seen[spec.name] = seen.get(spec.name, 0) + 1
        key = spec.name if seen[spec.name] == 1 else f"{spec.name}#{seen[spec.name]}"
        out.append(_Resolved(key, spec, reward_scope(fn), is_verifier(fn)))
    return out


def _as_score(outcome: Outcome) -> float | None:
    """The outcome's value as a float, or None when it failed or is not a finite real number (a NaN
    or inf from a reward is that reward's error, never a score)."""
    if not outcome.ok or isinstance(outcome.value, str | bytes):  # float("1") would accept text
        return None
    try:
        value = float(outcome.value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _as_group_scores(outcome: Outcome, size: int) -> list[float] | Outcome:
    """A group reward's values as floats, or a failed Outcome saying why not."""
    if not outcome.ok:
        return outcome
    try:
        values = [float(v) for v in outcome.value]
    except (TypeError, ValueError) as err:
        return Outcome(error=f"{type(err).__name__}: returned {outcome.value!r}")
    if len(values) != size:
        return Outcome(error=f"ValueError: returned {len(values)} scores for a group of {size}")
    return values


def _place_group(scores: list[float], rows: list[int], outcome: Outcome, key: str, log_: _ErrorLog) -> None:
    """One group's values into scores[rows] in place; a failed call leaves the group NaN with one count,
    a NaN/inf value leaves that response NaN with one count (its error, never a reward)."""
    values = _as_group_scores(outcome, len(rows))
    if isinstance(values, Outcome):
        log_.add(key, rows[0], values, group=True)
        return
    for i, v in zip(rows, values, strict=True):
        if math.isfinite(v):
            scores[i] = v
        else:
            log_.add(key, i, Outcome(value=v))


def _extract(completion: str, record: PromptRecord, row: int, log_: _ErrorLog) -> str | None:
    """The answer, or None (+ an "extract/errors" count) when a user extractor raises; an unknown
    extractor name is a configuration error and raises."""
    try:
        return extract_answer(completion, record)
    except UnknownNameError:
        raise
    except Exception as err:
        log_.add("extract", row, Outcome(error=f"{type(err).__name__}: {err}"))
        return None


class _ErrorLog:
    """Error/timeout counts per reward key (zeros included, so logged series are continuous) and
    the first few messages."""

    def __init__(self, rewards: list[_Resolved], max_messages: int) -> None:
        self.counts = {f"{r.key}/{kind}": 0 for r in rewards for kind in ("errors", "timeouts")}
        self.counts["extract/errors"] = 0
        self.messages: list[str] = []
        self.max_messages = max_messages

    def add(self, key: str, row: int, outcome: Outcome, group: bool = False) -> None:
        kind = "timeouts" if outcome.timed_out else "errors"
        self.counts[f"{key}/{kind}"] = self.counts.get(f"{key}/{kind}", 0) + 1
        if len(self.messages) < self.max_messages:
            where = f"group of row {row}" if group else f"row {row}"
            error = outcome.error or f"returned a non-finite number or a non-number: {outcome.value!r}"
            self.messages.append(f"{key} ({where}): {error}")


def state_for(tables: dict[str, dict[str, Any]], prompts: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The part of the stateful rewards' tables a batch of these prompts reads (what travels to the reward
    actor with the batch): {reward key: {prompt: table}}."""
    wanted = set(prompts)
    return {key: {p: t for p, t in per_prompt.items() if p in wanted} for key, per_prompt in tables.items()}


def merge_state(tables: dict[str, dict[str, Any]], returned: dict[str, dict[str, Any]] | None) -> None:
    """Put the tables a scoring call returned back into the whole state, in place."""
    for key, per_prompt in (returned or {}).items():
        tables.setdefault(key, {}).update(per_prompt)
