"""``flush(timeout)`` of one event: from the call until the counting server has accepted it.

One producer logs one float, calls ``flush(timeout=10)`` (which returns once the events API has
answered for it), pauses 2 ms, and again: ``--events`` times. Median, p90 and p99 of the calls,
with the load average (2 shared cores: read the tail with it).

    python benchmarks/flush_latency.py [--events 300] [--json benchmarks/results/flush_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import isstreamer  # noqa: E402  (this checkout first)


def run(events: int = 300) -> Dict[str, Any]:
    """Measure; returns the figures in ms."""
    server = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "countserver.py"), "0"], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    load = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as spool:
            s = isstreamer.Streamer(bucket_key="flush-latency", access_key="bench", api_base=url, spool_dir=spool)
            s.log("x", 0.0)
            assert s.flush(10)  # the sender is up, the bucket made, the connection open
            ts = []
            for i in range(events):
                s.log("x", float(i))
                t0 = time.perf_counter()
                ok = s.flush(timeout=10)
                ts.append((time.perf_counter() - t0) * 1e3)
                assert ok, "flush(timeout=10) timed out"
                time.sleep(0.002)
            s.close()
    finally:
        server.terminate()
        server.wait()
    ts.sort()
    return {
        "median_ms": statistics.median(ts),
        "p90_ms": ts[int(0.9 * (len(ts) - 1))],
        "p99_ms": ts[int(0.99 * (len(ts) - 1))],
        "max_ms": ts[-1],
        "events": events,
        "loadavg": list(load) + list(os.getloadavg()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--json", default=os.path.join(HERE, "results", "flush_latency.json"))
    args = ap.parse_args()
    r = run(args.events)
    print(
        "flush(timeout) of one event: median %.2f ms, p90 %.2f, p99 %.2f, max %.1f (target median <= 2, p99 <= 5); "
        "load %s" % (r["median_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"], " ".join("%.2f" % x for x in r["loadavg"]))
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
