"""The killable reward worker: real timeouts on a real hang, restart, errors, threads, plugins.

The pathological input: ``\\boxed{9^{9^{9^{9}}}}`` against gold 5. math-verify parses it in
~20 ms, but verify() never returns (checked by hand: still running after 60 s, in the same
environment, with no timeout), because sympy tries to evaluate the power tower.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import pytest

from rewards import IsolatedWorker, WorkerStartError
from rl_div.data import PromptRecord

HANG = r"The answer is \boxed{9^{9^{9^{9}}}}"
GOLD5 = PromptRecord(prompt="q", answer="5")
PID = PromptRecord(prompt="q", answer="5", meta={"want_pid": True})


@pytest.fixture(scope="module")
def worker() -> Iterator[IsolatedWorker]:
    w = IsolatedWorker(["plugins.my_rewards"])
    w.start()
    yield w
    w.close()


def worker_pid(w: IsolatedWorker) -> int:
    outcome = w.call("test_length", ("", PID), timeout_s=30)
    assert outcome.ok, outcome
    return int(outcome.value)


def test_runs_builtin_and_plugin_rewards_in_a_persistent_child(worker: IsolatedWorker) -> None:
    assert worker.call("math_verify", (r"\boxed{5}", GOLD5), timeout_s=30).value == 1.0
    assert worker.call("math_verify", (r"\boxed{6}", GOLD5), timeout_s=30).value == 0.0
    # a plugin-registered reward with a parameter: 0.5 per character of "abcd"
    assert worker.call("test_length", ("abcd", GOLD5), {"per_char": 0.5}, timeout_s=30).value == 2.0
    pid = worker_pid(worker)
    assert pid != os.getpid()
    assert worker_pid(worker) == pid  # the same process serves every call


def test_hang_in_a_non_main_thread_times_out_and_the_next_call_works(worker: IsolatedWorker) -> None:
    # A thread is where math-verify's own signal.alarm timeout cannot work; ours must.
    before_pid, before_restarts = worker_pid(worker), worker.restarts
    seen: dict[str, object] = {}

    def in_thread() -> None:
        seen["main"] = threading.current_thread() is threading.main_thread()
        t0 = time.perf_counter()
        seen["outcome"] = worker.call("math_verify", (HANG, GOLD5), timeout_s=2.0)
        seen["elapsed"] = time.perf_counter() - t0

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(60)
    outcome = seen["outcome"]
    assert seen["main"] is False
    assert outcome.timed_out and not outcome.ok and outcome.value is None  # type: ignore[attr-defined]
    assert "Timeout" in (outcome.error or "")  # type: ignore[attr-defined]
    assert 2.0 <= seen["elapsed"] < 5.0  # type: ignore[operator]  # waited the timeout, then killed
    assert worker.restarts == before_restarts + 1
    assert worker.call("math_verify", (r"\boxed{5}", GOLD5), timeout_s=30).value == 1.0
    assert worker_pid(worker) != before_pid  # a fresh child replaced the stuck one


def test_exceptions_come_back_as_type_and_message(worker: IsolatedWorker) -> None:
    outcome = worker.call("test_raises", ("boom", GOLD5), timeout_s=30)
    assert outcome.error is not None and outcome.error.startswith("RuntimeError: exploded on 'boom'")
    gold = worker.call("math_verify", (r"\boxed{1}", PromptRecord(prompt="q", answer=r"\frac{")), timeout_s=30)
    assert gold.error is not None and gold.error.startswith("GoldParseError")
    unknown = worker.call("no_such_reward", ("x", GOLD5), timeout_s=30)
    assert unknown.error is not None and unknown.error.startswith("UnknownNameError")
    unpicklable = PromptRecord(prompt="q", answer="5", meta={"f": lambda: 1})
    bad = worker.call("math_verify", (r"\boxed{5}", unpicklable), timeout_s=30)
    assert bad.error is not None and "could not pickle" in bad.error
    assert worker.call("test_raises", ("fine", GOLD5), timeout_s=30).value == 1.0  # still alive


def test_a_crashed_worker_is_reported_and_replaced(worker: IsolatedWorker) -> None:
    outcome = worker.call("test_exit", ("x", GOLD5), timeout_s=30)
    assert not outcome.timed_out
    assert outcome.error is not None and "WorkerDied" in outcome.error and "exit code 3" in outcome.error
    assert worker.call("math_verify", (r"\boxed{5}", GOLD5), timeout_s=30).value == 1.0


def test_works_from_an_event_loop(worker: IsolatedWorker) -> None:
    async def in_loop() -> float:  # what an async Ray actor does: call it straight from a coroutine
        return worker.call("math_verify", (r"\boxed{\frac{10}{2}}", GOLD5), timeout_s=30).value

    assert asyncio.run(in_loop()) == 1.0


def test_concurrent_callers_are_serialised(worker: IsolatedWorker) -> None:
    out: list[float] = []

    def call(n: int) -> None:
        out.append(worker.call("test_length", ("x" * n, GOLD5), timeout_s=30).value)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(out) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_a_plugin_that_fails_to_import_stops_start_up() -> None:
    with IsolatedWorker(["plugins.does_not_exist"]) as w, pytest.raises(WorkerStartError, match="does_not_exist"):
        w.call("math_verify", (r"\boxed{5}", GOLD5), timeout_s=30)


def test_a_batch_loses_only_its_hung_item_and_the_rest_go_to_a_fresh_child(worker: IsolatedWorker) -> None:
    """One round trip of several items: a hang in the middle times out alone (after its own 2 s),
    the items after it are answered by the replacement child, errors stay per item."""
    before = worker.restarts
    items = [(r"\boxed{5}", GOLD5), (HANG, GOLD5), (r"\boxed{6}", GOLD5)]
    t0 = time.perf_counter()
    out = worker.call_batch("math_verify", items, timeout_s=2.0)
    elapsed = time.perf_counter() - t0  # includes the fresh child's start-up (imports) for item 3
    assert [o.value for o in out] == [1.0, None, 0.0] and out[1].timed_out and not out[0].timed_out
    assert elapsed >= 2.0 and worker.restarts == before + 1
    mixed = worker.call_batch("test_raises", [("fine", GOLD5), ("boom", GOLD5), ("ok", GOLD5)], timeout_s=30)
    assert [o.ok for o in mixed] == [True, False, True] and "exploded" in (mixed[1].error or "")
    assert worker.call_batch("math_verify", [], timeout_s=1) == []


def test_a_pool_scores_in_parallel_processes_in_order() -> None:
    from rewards import IsolatedPool

    records = [PromptRecord(prompt="q", answer=str(n)) for n in range(40)]
    items = [(rf"\boxed{{{n if n % 3 else n + 1}}}", r) for n, r in enumerate(records)]
    with IsolatedPool(["plugins.my_rewards"], size=2) as pool:
        out = pool.map("math_verify", items, timeout_s=30, items_per_call=3)
        assert [o.value for o in out] == [0.0 if n % 3 == 0 else 1.0 for n in range(40)]
        served: set[float] = set()
        for _ in range(5):  # on a loaded machine one process may drain a short queue alone; ask again
            served |= {o.value for o in pool.map("test_length", [("", PID)] * 8, {"pid_after_s": 0.25}, timeout_s=30,
                                                 items_per_call=1)}
            if len(served) == 2:
                break
        assert len(served) == 2  # both worker processes served calls
        hung = pool.map("math_verify", [items[1], (HANG, GOLD5), items[2]], timeout_s=2.0, items_per_call=3)
        assert [o.value for o in hung] == [1.0, None, 1.0] and pool.restarts == 1
