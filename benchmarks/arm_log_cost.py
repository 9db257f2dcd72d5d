"""``log()``'s cost against the floor, as one ratio, for runs where absolute times mean little.

Made for the ARM roots of ``.ci/arm_e2e.sh``, where everything runs under qemu-user: an emulated
instruction costs some multiple of a native one, so nanoseconds say nothing about a Raspberry Pi,
but ``log()`` and the floor are emulated alike, and their ratio moves when a hot-path change is
slow on ARM (an atomic that becomes a lock, a 64-bit operation split in two on armv7). The figures
are *emulated*: they are labelled so, and no target is judged on them.

The floor is test_log_cost.py's ``floor``: a method call whose body calls ``time.time()``. The
same loop (``for _ in range(n): log("temperature", 21.5)``) runs over the floor and over
``Streamer.log`` (the C extension), rounds alternating between them so that the machine's
drift spreads over both; each round's cost is the thread's CPU time (``time.thread_time``),
which preemption by other processes does not inflate. The Streamer sends to the counting server
(its sender drains concurrently, as in real use) through a 16 MiB ring whose pages are touched
first (``benchutil.prefault``); after the rounds, every event must have been delivered.

    python benchmarks/arm_log_cost.py [--rounds 30] [--calls 2000] [--label TEXT] [--json FILE]

Runs anywhere (on the host it gives the native ratio to compare with).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchutil  # noqa: E402


class _FloorClock:
    def log(self, key, value, _now=time.time):  # a method call that takes a timestamp
        _now()


def _round(log, n: int) -> float:
    """CPU seconds of one loop of n calls."""
    c0 = time.thread_time()
    for _ in range(n):
        log("temperature", 21.5)
    return time.thread_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="rounds of each kind (default 30)")
    ap.add_argument("--calls", type=int, default=2000, help="calls per round (default 2000)")
    ap.add_argument("--label", default="%s, native" % platform.machine(), help="what the figures are")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    import isstreamer

    server, url = benchutil.start_count_server()
    try:
        s = isstreamer.Streamer(
            bucket_key="arm-log-cost",
            access_key="k",
            api_base=url,
            spool_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "arm-log-cost-spool"),
            ring_size=16 * 1024 * 1024,
            full_timeout=60.0,
        )
        backend = s.stats()["backend"]
        benchutil.prefault(s)
        floor, log = _FloorClock().log, s.log
        for _ in range(3):  # warm-up rounds, not counted
            _round(floor, args.calls), _round(log, args.calls)
        floor_ns, log_ns = [], []
        for _ in range(args.rounds):
            floor_ns.append(_round(floor, args.calls) / args.calls * 1e9)
            log_ns.append(_round(log, args.calls) / args.calls * 1e9)
        if not s.flush(300):
            raise SystemExit("the sender did not drain the ring in time")
        st = s.stats()
        s.close(timeout=30)
        logged, dropped = st["logged"], sum(st["dropped"].values())
        delivered, _ = benchutil.wait_count(url, logged, timeout=120)
    finally:
        benchutil.stop(server)

    f, g = statistics.median(floor_ns), statistics.median(log_ns)
    result = {
        "label": args.label,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "backend": backend,
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "floor_ns_median": round(f, 1),
        "log_ns_median": round(g, 1),
        "ratio": round(g / f, 2),
        "logged": logged,
        "delivered": delivered,
        "dropped": dropped,
    }
    print(
        "log() cost [%s]: log(key, float) %.0f ns, floor %.0f ns per call (medians of %d rounds of %d, "
        "thread CPU time): ratio %.2f; %s backend; logged %d, delivered %d, dropped %d"
        % (args.label, g, f, args.rounds, args.calls, g / f, backend, logged, delivered, dropped)
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    return 0 if delivered == logged and not dropped and backend == "native" else 1


if __name__ == "__main__":
    sys.exit(main())
