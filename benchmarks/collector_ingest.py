"""Ingest throughput of the local collector: events stored per second.

Starts ``isstreamer serve`` in its own process (so client and server do not share a GIL) on a
temporary database, POSTs batches of events from one ``requests.Session`` loop, and divides the
events the collector reports stored by the wall time of the loop.

    python benchmarks/collector_ingest.py [--batches 200] [--batch-size 1000] [--in-process]
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Tuple

import orjson
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run(url: str, batches: int, batch_size: int) -> Tuple[int, float]:
    """POST ``batches`` bodies of ``batch_size`` events; return (events stored, seconds)."""
    headers = {"X-IS-AccessKey": "bench", "X-IS-BucketKey": "bench", "Content-Type": "application/json",
               "Accept-Version": "<=0.0.4"}
    base = time.time()
    bodies = [
        orjson.dumps([{"key": "k%d" % (i % 8), "value": (i * 0.5 if i % 3 else "s%d" % i), "epoch": base + b + i / 1e4}
                      for i in range(batch_size)])
        for b in range(min(batches, 20))
    ]
    with requests.Session() as s:
        s.post(url + "/api/events", data=bodies[0], headers=headers).raise_for_status()  # warm up
        before = s.get(url + "/api/stats").json()["events"]
        t0 = time.perf_counter()
        for b in range(batches):
            r = s.post(url + "/api/events", data=bodies[b % len(bodies)], headers=headers)
            if r.status_code != 204:
                raise SystemExit("unexpected %d: %s" % (r.status_code, r.text))
        elapsed = time.perf_counter() - t0
        stored = s.get(url + "/api/stats").json()["events"] - before
    return stored, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--in-process", action="store_true", help="run the collector in a thread of this process")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        if args.in_process:
            from isstreamer.collector.server import CollectorServer

            with CollectorServer(db_path=db) as server:
                stored, elapsed = run(server.url, args.batches, args.batch_size)
        else:
            env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
            proc = subprocess.Popen([sys.executable, "-m", "isstreamer.cli", "serve", "--port", "0", "--db", db],
                                    stdout=subprocess.PIPE, text=True, env=env)
            try:
                m = re.search(r"listening on (http://\S+)", proc.stdout.readline())  # type: ignore[union-attr]
                if not m:
                    raise SystemExit("collector did not start")
                stored, elapsed = run(m.group(1), args.batches, args.batch_size)
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(30)
    expected = args.batches * args.batch_size
    print("%d events in %d POSTs of %d: %.2f s, %.0f events/s stored%s"
          % (stored, args.batches, args.batch_size, elapsed, stored / elapsed,
             "" if stored == expected else " (EXPECTED %d)" % expected))


if __name__ == "__main__":
    main()
