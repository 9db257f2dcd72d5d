"""Smoke test of an *installed* isstreamer (a wheel or an sdist in a fresh venv).

    python .ci/smoke_installed.py --backend native|python [--events N]

Run it with the venv's interpreter from any working directory (CI runs it from the repo root
and from an empty directory). It checks, against a real ``isstreamer serve`` process:

- ``isstreamer`` is imported from the venv's site-packages, never from a source tree;
- the expected backend (the C extension with its hot path, or the pure-Python fallback) is the
  one in use;
- events logged by this process and by a spawned pool worker all reach the collector, with
  their values intact, and ``stats()`` agrees (logged == sent, nothing pending or dropped).

Exits non-zero with a message on the first failure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import urllib.request
import uuid

_streamer = None


def _init(streamer):  # pool initializer: keep the Streamer handed over through initargs
    global _streamer
    _streamer = streamer


def _work(n):  # pool task: log n events from the worker process, then flush
    for i in range(n):
        _streamer.log("worker", i)
    return _streamer.flush(60)


def fail(msg: str) -> None:
    sys.exit(f"smoke: FAIL: {msg}")


def start_collector(workdir: str):
    """``isstreamer serve --port 0`` from this venv; returns (process, base URL)."""
    exe = os.path.join(os.path.dirname(sys.executable), "isstreamer")
    proc = subprocess.Popen(
        [exe, "serve", "--port", "0", "--db", os.path.join(workdir, "collector.db")],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # "isstreamer collector listening on http://127.0.0.1:N (db ...)"
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        proc.kill()
        fail(f"isstreamer serve did not announce its address: {line!r}")
    return proc, m.group(1)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.load(resp)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["native", "python"], required=True)
    ap.add_argument("--events", type=int, default=2000)
    args = ap.parse_args()
    # a CI timeout sends SIGTERM: unwind through the finally below, which stops the collector
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("smoke: FAIL: terminated (timeout?)"))

    import isstreamer

    site = sysconfig.get_paths()["purelib"]
    where = os.path.dirname(os.path.abspath(isstreamer.__file__))
    if not where.startswith(os.path.realpath(site)) and not where.startswith(site):
        fail(f"isstreamer imported from {where}, not from the venv's {site}")
    print(f"smoke: Python {sys.version.split()[0]}, isstreamer from {where}")

    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_collector(tmp)
        try:
            key = "smoke-" + uuid.uuid4().hex[:8]
            s = isstreamer.Streamer(bucket_name="Smoke", bucket_key=key, access_key="smoke-key", api_base=base)
            backend = s.stats()["backend"]
            if backend != args.backend:
                fail(f"backend is {backend!r}, expected {args.backend!r}")
            from isstreamer import hotpath

            if (hotpath.module() is not None) != (backend == "native"):
                fail(f"the C hot path (csrc/py/hotpath.c) is {'missing' if backend == 'native' else 'present'}")
            n_main, n_worker = args.events, args.events // 4
            for i in range(n_main):
                s.log("main", i)
            s.log("text", "héllo, \"world\"")
            s.log("float", 0.1)
            ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, as on macOS/Windows
            # (leaving the with block terminates the worker, as most pool code does)
            with ctx.Pool(1, initializer=_init, initargs=(s,)) as pool:
                if not pool.apply(_work, (n_worker,)):
                    fail("flush() in the pool worker timed out")
            if not s.flush(60):
                fail("flush() timed out")
            st = s.stats()
            s.close()
            total = n_main + n_worker + 2

            url = f"{base}/api/buckets/{key}/events?limit=1000000"
            events = get_json(url)["events"]
            by_key = {}
            for e in events:
                by_key.setdefault(e["key"], []).append(e["value"])
            got = {k: len(v) for k, v in by_key.items()}
            want = {"main": n_main, "worker": n_worker, "text": 1, "float": 1}
            if got != want:
                fail(f"collector has {got}, expected {want}")
            if sorted(float(v) for v in by_key["main"]) != [float(i) for i in range(n_main)]:
                fail("values of 'main' differ from those logged")
            if by_key["text"] != ["héllo, \"world\""] or float(by_key["float"][0]) != 0.1:
                fail(f"values changed on the way: {by_key['text']} {by_key['float']}")
            # delivered right (above); the counters must say so too
            if (st["logged"], st["sent"], st["pending"], st["dropped"]) != (total, total, 0, {}):
                fail(f"all {total} events delivered, but stats() after flush() says {st}")
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"smoke: ok: backend {backend}, {total} events delivered (stats {st['requests']} requests)")


if __name__ == "__main__":
    main()
