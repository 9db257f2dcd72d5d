"""The collector's fair writer (issue 20 item 2): the order in which queued writes run."""

from __future__ import annotations

import threading
from typing import List

import pytest

from isstreamer.collector.sched import FairExecutor


def run_in_order(jobs: List[tuple]) -> List[str]:
    """Queue ``(name, flow, cost)`` jobs behind a held worker; the order in which they ran."""
    pool = FairExecutor("test-fair")
    gate = threading.Event()
    ran: List[str] = []
    first = pool.submit(lambda: gate.wait(10), "gate", 1)
    futures = [pool.submit(lambda n=name: ran.append(n), flow, cost) for name, flow, cost in jobs]
    gate.set()
    first.result(10)
    for f in futures:
        f.result(10)
    pool.shutdown()
    return ran


def test_a_small_write_goes_before_queued_bulk_writes() -> None:
    bulk = [("%s%d" % (f, i), f, 1000) for i in range(3) for f in "abcd"]
    order = run_in_order(bulk + [("small", "e", 1)])
    assert order[0] == "small", order


def test_bulk_flows_take_turns() -> None:
    order = run_in_order([("a%d" % i, "a", 1000) for i in range(4)] + [("b%d" % i, "b", 1000) for i in range(4)])
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]


def test_many_keys_buy_no_priority() -> None:
    pool = FairExecutor("test-fair")
    for _ in range(5):  # a key holder has written a lot: the virtual time has moved on
        pool.submit(lambda: None, "old", 1000).result(10)
    gate = threading.Event()
    ran: List[str] = []
    pool.submit(lambda: gate.wait(10), "gate", 1)
    jobs = [pool.submit(lambda: ran.append("old"), "old", 1000)]
    jobs += [pool.submit(lambda n=n: ran.append("new-%d" % n), "new-%d" % n, 1000) for n in range(5)]
    gate.set()
    for f in jobs:
        f.result(10)
    pool.shutdown()
    assert ran[0] == "old", ran  # fresh keys start at the virtual time, not ahead of it


def test_errors_reach_the_caller_and_shutdown_drains() -> None:
    pool = FairExecutor("test-fair")
    bad = pool.submit(lambda: 1 / 0)
    good = pool.submit(lambda: 42, "x", 5)
    pool.shutdown()
    assert good.result(1) == 42
    with pytest.raises(ZeroDivisionError):
        bad.result(1)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_several_workers_run_calls_side_by_side() -> None:
    ex = FairExecutor("t", workers=2)
    gate = threading.Event()
    try:
        held = ex.submit(lambda: gate.wait(10), "bulk")
        assert ex.submit(lambda: "ran", "small").result(10) == "ran"  # the other worker took it
        assert not held.done()
    finally:
        gate.set()
        ex.shutdown()
