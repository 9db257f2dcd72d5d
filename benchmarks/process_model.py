"""The process model and delivery scheduling, measured (issues 9 and 10): every figure is a ratio
against a baseline measured in the same run, or a count.

* burst: a lone producer logs a 1M-event burst while its sender is stopped (SIGSTOP): the calls
  that waited or dropped (target: none), and the per-call cost against the same burst with the
  sender running;
* drop: a dropped call on a full ring (a drop episode) against a normal ``log()`` (target <= 2x);
* hang: per-call ``log()`` while the API holds every request (a server that never answers)
  against the counting server (target <= 1.5x), and whether anything was dropped;
* idle: an idle sender's wake-ups per second and CPU over ``--idle`` seconds;
* flush: ``flush(timeout)`` latency for one event into the counting server (median, p99).

    python benchmarks/process_model.py [--quick] [--json benchmarks/results/process_model.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import benchutil  # noqa: E402
import isstreamer  # noqa: E402


def _per_call(fn: Callable[[int], None], n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return (time.perf_counter() - t0) / n * 1e9


def _loop(s: isstreamer.Streamer) -> Callable[[int], None]:
    log = s.log

    def run(n: int) -> None:
        for _ in range(n):
            log("temperature", 21.5)

    return run


def _ctx(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


class _Silent:
    """A TCP server that accepts and reads, and never answers: a hanging API."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.conns: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle measurement")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    burst = 200_000 if a.quick else 1_000_000
    idle_s = min(a.idle, 10.0) if a.quick else a.idle
    spool = tempfile.mkdtemp(prefix="isstreamer-bench-spool-")
    out: Dict[str, Any] = {"loadavg_before": benchutil.loadavg()}
    proc, url = benchutil.start_count_server()
    try:
        kw: Dict[str, Any] = dict(access_key="k", api_base=url, spool_dir=spool)

        # burst: sender running, then sender stopped
        s = isstreamer.Streamer(bucket_key="burst-base", **kw)
        s.log("warm", 1)
        s.flush(timeout=30)
        base_ns = _per_call(_loop(s), burst)
        s.close(30)
        s = isstreamer.Streamer(bucket_key="burst", **kw)
        s.log("warm", 1)
        s.flush(timeout=30)
        pid = s.sender_pid
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped_ns = _per_call(_loop(s), burst)
            st = s.stats()
        finally:
            os.kill(pid, signal.SIGCONT)
        out["burst"] = {
            "events": burst,
            "ns_sender_running": base_ns,
            "ns_sender_stopped": stopped_ns,
            "ratio": stopped_ns / base_ns,
            "dropped": st["dropped"],
            "ring_fill": s.ring_fill(),
        }
        s.close(60)

        # drop: a full ring in a drop episode vs a normal call
        s = isstreamer.Streamer(bucket_key="drop", ring_size=1 << 20, on_full="drop", **kw)
        s.log("warm", 1)
        s.flush(timeout=30)
        normal_ns = _per_call(_loop(s), 10_000)
        s.flush(timeout=30)
        pid = s.sender_pid
        os.kill(pid, signal.SIGSTOP)
        try:
            _loop(s)(40_000)  # fill it: the episode starts
            assert s.ring_fill() > 0.9
            drop_ns = _per_call(_loop(s), 200_000)
            dropped = s.stats()["dropped"].get("ring_full", 0)
        finally:
            os.kill(pid, signal.SIGCONT)
        out["drop"] = {"ns_normal": normal_ns, "ns_dropped": drop_ns, "ratio": drop_ns / normal_ns, "dropped": dropped}
        s.close(30)

        # hang: the API holds every request
        silent = _Silent()
        s = isstreamer.Streamer(
            bucket_key="hang",
            access_key="k",
            api_base=silent.url,
            spool_dir=spool,
            request_timeout=60.0,
            close_timeout=1.0,
            ring_size=8 << 20,
        )
        time.sleep(0.5)
        hang_ns = _per_call(_loop(s), burst)
        st = s.stats()
        out["hang"] = {
            "events": burst,
            "ns_normal": base_ns,
            "ns_hanging_api": hang_ns,
            "ratio": hang_ns / base_ns,
            "dropped": st["dropped"],
            "spooled": st["spooled"],
        }
        s.close(1.0)
        silent.close()

        # idle: wake-ups and CPU of a sender with nothing to do
        s = isstreamer.Streamer(bucket_key="idle", **kw)
        s.log("warm", 1)
        s.flush(timeout=30)
        pid = s.sender_pid
        time.sleep(1.5)
        c0, cpu0 = _ctx(pid), benchutil.proc_cpu_seconds(pid)
        time.sleep(idle_s)
        c1, cpu1 = _ctx(pid), benchutil.proc_cpu_seconds(pid)
        out["idle"] = {"seconds": idle_s, "wakeups_per_s": (c1 - c0) / idle_s, "cpu_s": cpu1 - cpu0}

        # flush latency: one event, flush(timeout) (the sender was idle: woken by the put)
        lat: List[float] = []
        for i in range(50 if a.quick else 200):
            t0 = time.perf_counter()
            s.log("one", i)
            s.flush(timeout=30)
            lat.append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.01)
        lat.sort()
        out["flush_ms"] = {"median": statistics.median(lat), "p99": lat[int(len(lat) * 0.99) - 1]}
        s.close(30)
    finally:
        benchutil.stop(proc)
    out["loadavg_after"] = benchutil.loadavg()
    b, d, h, i, f = out["burst"], out["drop"], out["hang"], out["idle"], out["flush_ms"]
    print(
        "burst of %d, sender stopped: %.0f ns/call (running: %.0f ns, %.2fx); dropped %s; ring %.0f%% full"
        % (
            b["events"],
            b["ns_sender_stopped"],
            b["ns_sender_running"],
            b["ratio"],
            b["dropped"] or "nothing",
            100 * b["ring_fill"],
        )
    )
    print(
        "dropped call on a full ring: %.0f ns vs %.0f ns normal (%.2fx; target <= 2x); %d counted"
        % (d["ns_dropped"], d["ns_normal"], d["ratio"], d["dropped"])
    )
    print(
        "log() while the API hangs: %.0f ns vs %.0f ns (%.2fx; target <= 1.5x); dropped %s, spooled %d"
        % (h["ns_hanging_api"], h["ns_normal"], h["ratio"], h["dropped"] or "nothing", h["spooled"])
    )
    print("idle sender: %.2f wake-ups/s, %.3f s CPU in %.0f s" % (i["wakeups_per_s"], i["cpu_s"], i["seconds"]))
    print("flush(timeout) of one event: median %.2f ms, p99 %.2f ms" % (f["median"], f["p99"]))
    print("load average before / after: %s / %s" % (out["loadavg_before"], out["loadavg_after"]))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
