"""Issue 10 items 2-4: an idle sender sleeps until woken (no polling), flush() as ISStreamer 2.0.0
means it (async: hand over and return; with a timeout: wait), close() spends its budget.

Real senders, a real HTTP fault server (tests/faultserver.py) and the local collector.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from faultserver import FaultServer
from support import wait_until

import isstreamer


def _ctx_switches(pid: int) -> int:
    """Voluntary context switches of ``pid`` so far: each sleep of the sender's loop adds one."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches for pid %d" % pid)


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def _streamer(server: FaultServer, tmp_path, **kw) -> isstreamer.Streamer:
    return isstreamer.Streamer(
        bucket_key=kw.pop("bucket_key", "wake"),
        access_key="k",
        api_base=server.url,
        spool_dir=str(tmp_path / "spool"),
        **kw,
    )


@pytest.mark.slow
def test_idle_sender_sleeps_until_woken(server, tmp_path, backend):
    """An idle sender wakes about once a second (it polled ~50 times a second before); one event
    logged after a long idle stretch still arrives within flush_interval, because the put that
    sees the sender asleep wakes it."""
    s = _streamer(server, tmp_path, flush_interval=0.05)
    try:
        s.log("first", 1)
        assert server.wait_events(1, 30)
        pid = s.sender_pid
        assert pid
        time.sleep(1.0)  # let it settle into its idle sleep
        before = _ctx_switches(pid)
        time.sleep(4.0)
        woke = _ctx_switches(pid) - before
        # ~1 wake-up a second; allow for the machine and the garbage collector, not for polling
        assert woke <= 16, "the idle sender woke %d times in 4 s (polling?)" % woke
        t0 = time.monotonic()
        s.log("late", 2)  # no flush: the put itself must wake the sleeping sender
        assert server.wait_events(2, 30)
        waited = time.monotonic() - t0
        # the sender would otherwise sleep up to a second; this is a hang detector with slack
        assert waited < 10, waited
    finally:
        s.close(5)


@pytest.mark.slow
def test_async_flush_returns_before_a_slow_api_answers(server, tmp_path, backend):
    """use_async=True: flush() hands the events over and returns; flush(timeout) waits for the
    API (False when the timeout passes first); nothing is lost either way."""
    s = _streamer(server, tmp_path, bucket_key="slow", request_timeout=30.0)
    try:
        s.log("warm", 0)
        assert s.flush(timeout=30)
        server.slow(3.0)
        s.log("x", 1)
        assert s.flush() is True  # handed over: no wait on the network
        assert s.stats()["sent"] == 1, "flush() waited for the slow API"
        s.log("x", 2)
        assert s.flush(timeout=0.2) is False  # the API takes 3 s: the timeout passes first
        assert s.flush(timeout=60) is True
        assert wait_until(lambda: len(server.values("x")) >= 2, 60)
        assert sorted(server.values("x")) == [1, 2]
    finally:
        server.slow(0)
        s.close(10)


def test_sync_flush_waits_for_delivery(server, tmp_path, backend):
    """use_async=False: flush() waits until the events are delivered (as ISStreamer 2.0.0 did)."""
    s = _streamer(server, tmp_path, bucket_key="sync", use_async=False, buffer_size=1000)
    try:
        for i in range(5):
            s.log("y", i)
        assert s.flush() is True
        assert sorted(server.values("y")) == list(range(5))
    finally:
        s.close(5)


def test_close_retries_through_a_short_outage_instead_of_spooling(server, tmp_path, backend):
    """A 503 burst of about 2 s inside close_timeout (5 s): close() tells the sender how long it
    waits, the sender retries instead of spooling, and the spool stays empty."""
    s = _streamer(server, tmp_path, bucket_key="closing", close_timeout=5.0)
    try:
        s.log("warm", 0)
        assert s.flush(timeout=30)
        server.fail_next(10**6)  # every request fails ...
        threading.Timer(2.0, lambda: server.fail_next(0)).start()  # ... for about 2 s
        for i in range(2000):
            s.log("z", i)
        s.close()
    finally:
        server.fail_next(0)
    assert wait_until(lambda: len(server.values("z")) >= 2000, 30)
    assert sorted(server.values("z")) == list(range(2000))
    st = s.stats()
    assert st["spooled"] == 0, st
    spool = tmp_path / "spool"
    leftover = [p for p in spool.rglob("*.jsonl") if p.name != "rejected.jsonl"] if spool.exists() else []
    assert not leftover, leftover
    assert not server.duplicates("z")
    assert wait_until(lambda: not os.path.exists(s.ring_path or ""), 30), "the sender left the ring behind"
