"""The events-per-second ceiling, the monthly budget and the API's rate limit (issue 13): when the
stream does not fit, the sender reports it once (stats()["unfit"]) and, with ``fallback=``,
downsamples the keys without a rule instead of letting a backlog grow. Real collector, real
sender; no timing assertions (waits are bounded polls)."""

from __future__ import annotations

import time

import pytest

import isstreamer
from isstreamer import Window
from support import pid_gone, wait_until

pytestmark = pytest.mark.slow  # end to end (minutes of waits); the policy itself: tests/test_ceiling.py

T0 = 60.0 * 66666667  # 2096: windows there close at close(), not by the clock


def _run_until_unfit(s, key: str = "x", limit: float = 120.0) -> None:
    """Log a fast stream of ``key`` until the sender finds it does not fit (bounded)."""
    deadline = time.monotonic() + limit
    while s.stats()["unfit"] == 0:
        assert time.monotonic() < deadline, s.stats()
        for _ in range(200):
            s.log(key, 1.5)
        time.sleep(0.002)


@pytest.mark.parametrize("limit", ["max_events_per_second", "monthly_budget"])
def test_stream_over_the_ceiling_falls_back_to_the_rule(collector, tmp_path, backend, limit):
    opts = {"max_events_per_second": 200.0} if limit == "max_events_per_second" else {"monthly_budget": 1_000_000}
    s = isstreamer.Streamer(
        bucket_key="ceil",
        access_key="k",
        api_base=collector.url,
        spool_dir=str(tmp_path / "spool"),
        flush_interval=0.2,
        fallback=Window(1.0, ("mean", "count")),
        **opts,
    )
    _run_until_unfit(s)
    assert wait_until(lambda: s.stats()["fallback"] == 1, 60)
    for i in range(1000):  # a key first seen after the switch: windowed
        s.log("y", float(i), T0 + i * 0.01)
    pid = s.sender_pid
    s.close(60)
    assert wait_until(lambda: pid_gone(pid), 120)
    ys = [e for e in collector.events("ceil") if e["key"] in ("y", "y_count")]
    counts = {e["epoch"]: e["value"] for e in ys if e["key"] == "y_count"}
    assert sum(counts.values()) == 1000 and len(counts) == 10
    assert sorted(e["epoch"] for e in ys if e["key"] == "y") == sorted(counts)
    means = {e["epoch"]: e["value"] for e in ys if e["key"] == "y"}
    for k in range(10):
        assert means[T0 + k + 1] == pytest.approx(sum(range(k * 100, k * 100 + 100)) / 100, rel=1e-12)
    st = s.stats()
    assert st["unfit"] == 1 and st["fallback"] == 1


def test_without_fallback_it_is_reported_once_and_nothing_changes(collector, tmp_path, backend):
    s = isstreamer.Streamer(
        bucket_key="ceil2",
        access_key="k",
        api_base=collector.url,
        spool_dir=str(tmp_path / "spool"),
        flush_interval=0.2,
        max_events_per_second=100.0,
    )
    _run_until_unfit(s)
    for i in range(100):
        s.log("y", float(i), T0 + i)
    assert s.flush(60)
    st = s.stats()
    assert st["unfit"] == 1 and st["fallback"] == 0 and st["folded"] == 0
    assert sorted(e["value"] for e in collector.events("ceil2") if e["key"] == "y") == [float(i) for i in range(100)]
    s.close(60)


def test_rate_limited_stream_falls_back(collector_factory, tmp_path, backend):
    """The collector allows 2 requests a second; batches of 50 events cannot carry the stream."""
    server = collector_factory(rate_limit=(2, 1.0))
    s = isstreamer.Streamer(
        bucket_key="rl",
        access_key="k",
        api_base=server.url,
        spool_dir=str(tmp_path / "spool"),
        flush_interval=0.05,
        max_batch_events=50,
        fallback=Window(1.0, ("count",)),
    )
    _run_until_unfit(s, limit=180.0)
    assert wait_until(lambda: s.stats()["fallback"] == 1, 60)
    pid = s.sender_pid
    s.close(10)  # what the rate limit holds back then waits in the spool
    assert wait_until(lambda: pid_gone(pid), 240)
    st = s.stats()
    assert st["unfit"] == 1 and st["dropped"] == {}
