"""Pool worker functions for the tests (importable by spawn and forkserver children)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

_streamer: Optional[Any] = None


def init(streamer: Any) -> None:
    """Pool initializer: keep the Streamer handed over through initargs."""
    global _streamer
    _streamer = streamer


def log_range(task: Tuple[int, int]) -> bool:
    """Log values 0..n-1 under key ``task<t>`` and flush; True when delivered."""
    t, n = task
    assert _streamer is not None
    for i in range(n):
        _streamer.log("task%d" % t, i)
    return _streamer.flush(60)


# ---- issue 9: wide pools with every worker alive at once (tests/test_multiprocess.py) ----------

_barrier: Optional[Any] = None


def init_with_barrier(streamer: Any, barrier: Any) -> None:
    """Pool initializer: keep the Streamer and a Barrier shared by every worker."""
    global _streamer, _barrier
    _streamer = streamer
    _barrier = barrier


def log_then_meet(task: Tuple[int, int, float]) -> Tuple[int, bool, dict]:
    """Log values 0..n-1 under key ``w<t>``, wait at the barrier until every worker of the pool
    has logged (so all are alive at once), then flush. Returns (pid, flushed, this worker's
    stats()['dropped'])."""
    import os

    t, n, timeout = task
    assert _streamer is not None and _barrier is not None
    for i in range(n):
        _streamer.log("w%d" % t, i)
    _barrier.wait(timeout)
    ok = _streamer.flush(timeout)
    return os.getpid(), ok, dict(_streamer.stats().get("dropped", {}))
