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
