"""Downsampling computed independently of the kernels, from the definitions (tests of the
aggregation kernel and of the sender end to end compare what they send with these)."""

from __future__ import annotations

import math
from collections import defaultdict
from fractions import Fraction
from typing import Any, Dict, List, Tuple


def expected_windows(events: List[Tuple[str, Any, float]], seconds: float) -> Dict[Tuple[str, float], Dict[str, Any]]:
    """Per (key, window end): every statistic, computed from the raw events (the sum exactly, with
    fractions; min, max, first and last as logged: ints when the window holds only ints)."""
    by_window: Dict[Tuple[str, float], List[Tuple[float, Any]]] = defaultdict(list)
    for key, value, epoch in events:
        by_window[(key, (math.floor(epoch / seconds) + 1.0) * seconds)].append((epoch, value))
    out: Dict[Tuple[str, float], Dict[str, Any]] = {}
    for k, rows in by_window.items():
        values = [v for _, v in rows]
        if not all(isinstance(v, int) for v in values):
            values = [float(v) for v in values]
        total = float(sum(Fraction(v) for v in values))
        by_epoch = sorted(range(len(rows)), key=lambda i: rows[i][0])
        out[k] = {
            "mean": total / len(values),
            "sum": total,
            "count": len(values),
            "min": min(values),
            "max": max(values),
            "first": values[by_epoch[0]],
            "last": values[by_epoch[-1]],
        }
    return out


def reference_deadband(events, absolute=0.0, relative=0.0, heartbeat=0.0):
    """The events a deadband rule sends, written from the rule's definition (Python compares
    ints exactly, with ints and with floats)."""
    sent = []
    last = last_ep = None
    for v, ep in events:
        if last is None:
            ok = True
        elif absolute == 0.0 and relative == 0.0:
            ok = v != last
        else:
            ok = (absolute > 0 and abs(v - last) > absolute) or (relative > 0 and abs(v - last) > relative * abs(last))
        if not ok and heartbeat > 0 and ep - last_ep >= heartbeat:
            ok = True
        if ok:
            sent.append((v, ep))
            last, last_ep = v, ep
    return sent
