"""Command loop shared by the peer drivers (runs inside the peers' venv, imports nothing of isstreamer).

A driver builds a ``loop(n)`` function that makes ``n`` calls of the peer's logging API, exactly
like the isstreamer benchmarks' loop, and hands it to :func:`serve` (worker mode, driven by
``benchmarks/benchutil.PeerWorker``) or :func:`standalone` (prints one JSON summary).
"""
from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from typing import Callable, Dict, List


def _timed(loop: Callable[[int], None], n: int) -> Dict[str, float]:
    c0 = time.process_time()
    t0 = time.perf_counter()
    loop(n)
    t1 = time.perf_counter()
    return {"elapsed": t1 - t0, "cpu": time.process_time() - c0}


def serve(loop: Callable[[int], None], close: Callable[[], None], info: Dict) -> int:
    """Worker mode: answer ``run N`` / ``close`` lines from stdin with one JSON line each."""
    print(json.dumps(dict(info, ready=True)), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "run":
            print(json.dumps(_timed(loop, int(cmd[1]))), flush=True)
        elif cmd[0] == "close":
            t0 = time.perf_counter()
            close()
            print(json.dumps({"close_s": time.perf_counter() - t0, "gc": gc.get_stats()}), flush=True)
            return 0
    close()
    return 0


def standalone(loop: Callable[[int], None], close: Callable[[], None], info: Dict, rounds: int, calls: int,
               warmup: int) -> int:
    """Run ``warmup + rounds`` rounds of ``calls`` calls and print a JSON summary (per-call ns)."""
    for _ in range(warmup):
        loop(calls)
    res: List[Dict[str, float]] = [_timed(loop, calls) for _ in range(rounds)]
    t0 = time.perf_counter()
    close()
    per = sorted(r["elapsed"] / calls * 1e9 for r in res)
    print(json.dumps(dict(info, calls_per_round=calls, rounds=rounds, median_ns=statistics.median(per),
                          min_ns=per[0], max_ns=per[-1],
                          cpu_median_ns=statistics.median(r["cpu"] / calls * 1e9 for r in res),
                          close_s=time.perf_counter() - t0)))
    return 0


def add_common_args(ap) -> None:
    ap.add_argument("--api-base", required=True, help="http://127.0.0.1:PORT of the local server")
    ap.add_argument("--worker", action="store_true", help="command loop on stdin (used by the suite)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=2)
