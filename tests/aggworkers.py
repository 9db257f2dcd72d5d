"""Pool workers of tests/test_aggregate.py (importable by fork and spawn children)."""

from __future__ import annotations

import random
from typing import Any, List, Optional, Tuple

_streamer: Optional[Any] = None

KEYS = ("temp_a", "temp_b", "count_c", "load")  # count_c logs ints
T0 = 4.0e9  # epochs in the future: no window of the test closes by the clock, only at exit


def init(streamer: Any) -> None:
    """Pool initializer: keep the Streamer handed over through initargs."""
    global _streamer
    _streamer = streamer


def log_random(task: Tuple[int, int, int, int]) -> List[Tuple[str, Any, float]]:
    """Log ``n`` random events per key (worker ``w`` of ``nworkers``, seed ``seed``): epochs are
    interleaved across workers and distinct. Returns what was logged. No flush (a flush closes
    the open windows early, by design)."""
    w, nworkers, n, seed = task
    assert _streamer is not None
    rng = random.Random(seed * 1000 + w)
    out = []
    for i in range(n):
        for k, key in enumerate(KEYS):
            epoch = T0 + ((i * len(KEYS) + k) * nworkers + w) * 0.00390625  # 1/256 s: exact
            value: Any = (
                rng.randrange(-1000, 1000) if key == "count_c" else rng.gauss(20.0, 5.0) * 10 ** rng.randrange(-3, 4)
            )
            _streamer.log(key, value, epoch)
            out.append((key, value, epoch))
    return out
