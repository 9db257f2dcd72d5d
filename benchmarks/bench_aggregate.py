"""Downsampling benchmarks (issues 13 and 19), every figure measured in one run:

1. ``log()`` cost with rules on vs off (the same loop, alternating Streamers; the ratio);
2. the aggregation kernel alone: records folded per second over 100 keys (C and Python twin);
3. the sender end to end: one producer logs over 100 ruled keys as fast as it can; the rate at
   which the sender folds (wall) and its capacity (events per second of the sender's CPU);
4. events on the wire per second for a 1 kHz x 20-key loop with 1 s windows (mean and max);
5. a backfill: a day of 1 Hz history logged with explicit epochs, under ``Window(1.0)`` (every
   event opens a window) and with no rule, with the C extension and with the fallback (each
   against itself, in this run): the time until every event is folded / sent, and until every
   window is closed (``stats()["windows"]``);
6. a live key's windows during that backfill: how long after its end each arrives at the server,
   with and without the backfill.

    python benchmarks/bench_aggregate.py [--quick] [--only NAME ...]

Servers: the counting server (benchmarks/countserver.py) in its own process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Iterator, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import benchutil  # noqa: E402
import isstreamer  # noqa: E402
from isstreamer import Window  # noqa: E402
from isstreamer.ring import layout as L  # noqa: E402
from isstreamer.sender.aggregate import MAX_TAKEN, NativeKernel, PyKernel, rule_args  # noqa: E402
from isstreamer.ring import Attachment, Segment, native_available, puts_for  # noqa: E402

KEYS100 = ["sensor_%03d" % i for i in range(100)]


def _streamer(url: str, spool: str, rules=None, **kw):
    return isstreamer.Streamer(
        bucket_name="bench", access_key="bench", api_base=url, spool_dir=spool, rules=rules, **kw
    )


def bench_log_cost(url: str, spool: str, quick: bool) -> None:
    """Per-call log() cost, rules on and off, alternating rounds in the same run."""
    n, rounds = 20000, (5 if quick else 25)
    off = _streamer(url, spool, ring_size=64 << 20)
    on = _streamer(url, spool, ring_size=64 << 20, rules={"temperature": Window(1.0, ("mean", "max"))})
    res = {"off": [], "on": []}
    for _ in range(rounds):
        for name, s in (("off", off), ("on", on)):
            log = s.log
            c0 = time.thread_time()
            for _ in range(n):
                log("temperature", 21.5)
            res[name].append((time.thread_time() - c0) / n * 1e9)
            s.flush(30)
    off.close(30)
    on.close(30)
    m_off, m_on = min(res["off"]), min(res["on"])
    print(
        "log() cost: rules off %.0f ns/call, rules on %.0f ns/call (min of %d rounds x %d); ratio on/off %.2f"
        " (medians %.0f / %.0f ns)"
        % (m_off, m_on, rounds, n, m_on / m_off, statistics.median(res["off"]), statistics.median(res["on"]))
    )


def _filled_segment(directory: str, n: int) -> Segment:
    ring = Segment.create(max(L.SEG_DATA_MIN, n * 48 + (1 << 20)), 1, directory=directory, native=True)
    att = Attachment(ring, 0, 1)
    p = att.new_producer(0)
    put_f64 = puts_for(True)[0]
    keys = [k.encode() for k in KEYS100]
    t0 = 1.7e9
    for i in range(n):
        kb = keys[i % 100]
        assert put_f64(p, kb, len(kb), float(i % 1000) * 0.5, t0 + i * 1e-6) == L.OK
    return ring


def bench_kernel(quick: bool) -> None:
    """The fold pass alone (in this process, no HTTP): records per second over 100 keys."""
    n = 200_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as d:
        ring = _filled_segment(d, n)
        head = ring.head(0)
        for kern_cls, count in ((NativeKernel, n), (PyKernel, min(n, 100_000))):
            if kern_cls is NativeKernel and not native_available():
                continue
            dt = float("inf")
            for _ in range(5):  # the best of 5: the machine is shared
                k = kern_cls(900_000)
                rid = k.add_rule(*rule_args(Window(1.0, ("mean", "min", "max"))))
                for kb in KEYS100:
                    k.bind(0, kb.encode(), rid)
                pos, done = 0, 0
                t0 = time.perf_counter()
                while pos < head and done < count:
                    b, taken, _ = k.encode(ring, pos, 10000, pos, False, MAX_TAKEN, time.time())
                    pos, done = b.end, done + taken
                k.close(float("inf"))
                dt = min(dt, time.perf_counter() - t0)
            print(
                "kernel (%s): %d records folded in %.3f s: %.2f M records/s (best of 5)"
                % ("C" if kern_cls is NativeKernel else "Python twin", done, dt, done / dt / 1e6)
            )
        ring.close()


def bench_sender(url: str, spool: str, quick: bool) -> None:
    """One producer over 100 ruled keys; the sender folds everything.

    Two figures: (a) live, the producer logging as fast as it can while the sender drains;
    (b) burst: the sender is paused (SIGSTOP: it is this benchmark's own child) while the
    producer fills the ring, then resumed: the rate at which it folds the backlog is its
    throughput, whatever the producer's speed."""
    import signal

    n = 1_000_000 if quick else 3_000_000
    keys = KEYS100
    for mode in ("live", "burst"):
        s = _streamer(
            url, spool, ring_size=256 << 20, full_timeout=60.0, rules={"sensor_*": Window(1.0, ("mean", "min", "max"))}
        )
        pid = s.sender_pid
        log = s.log
        for k in keys:  # keys known to the sender before the clock starts
            log(k, 0.0)
        while s.stats()["folded"] < len(keys):
            time.sleep(0.005)
        base = s.stats()["folded"]
        if mode == "burst":
            os.kill(pid, signal.SIGSTOP)
        cpu0 = benchutil.proc_cpu_seconds(pid)
        t0 = time.perf_counter()
        for i in range(n // 100):
            v = float(i)
            for k in keys:
                log(k, v)
        t_logged = time.perf_counter()
        if mode == "burst":
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGCONT)
        while s.stats()["folded"] - base < n:
            time.sleep(0.002)
        t_done = time.perf_counter()
        cpu = benchutil.proc_cpu_seconds(pid) - cpu0
        st = s.stats()
        s.close(60)
        if mode == "live":
            print(
                "sender live, 100 keys: producer logged %d events at %.2f M/s; all folded %.3f s after the last"
                " (%.2f M events/s end to end); sender CPU %.2f s: %.2f M events per sender CPU second;"
                " dropped %s"
                % (
                    n,
                    n / (t_logged - t0) / 1e6,
                    t_done - t_logged,
                    n / (t_done - t0) / 1e6,
                    cpu,
                    n / cpu / 1e6 if cpu else float("inf"),
                    st["dropped"] or 0,
                )
            )
        else:
            print(
                "sender burst, 100 keys: %d events waiting in the ring folded in %.3f s: %.2f M events/s"
                " (sender CPU %.2f s); dropped %s" % (n, t_done - t0, n / (t_done - t0) / 1e6, cpu, st["dropped"] or 0)
            )


def bench_wire(url: str, spool: str, quick: bool) -> None:
    """A 1 kHz loop logging 20 keys, 1 s windows of mean and max: events on the wire per second.

    The loop spans ``windows`` wall-clock seconds (its first and last partly): the events on the
    wire per window are the events per second of a steady stream (target: 20 keys x 2 statistics)."""
    seconds = 4 if quick else 10
    keys = ["k%02d" % i for i in range(20)]
    s = _streamer(url, spool, rules={"k*": Window(1.0, ("mean", "max"))})
    before = benchutil.count_of(url)
    log = s.log
    t0 = time.time()
    tick = 0
    while True:
        now = time.time()
        if now - t0 >= seconds:
            break
        due = int((now - t0) * 1000)
        while tick <= due:  # catch up: 1000 ticks per second of wall clock
            for k in keys:
                log(k, float(tick % 50))
            tick += 1
        time.sleep(0.0005)
    t_last = time.time()
    s.close(60)  # the last process out: the open windows are delivered before it returns
    wire = benchutil.count_of(url) - before
    logged = tick * 20
    windows = int(t_last) - int(t0) + 1
    print(
        "1 kHz x 20 keys, 1 s windows (mean, max) for %d s: %d events logged (%.0f/s), %d on the wire over %d"
        " one-second windows: %.1f events per window-second = %.1f per statistic per second (target 20);"
        " %.0fx fewer"
        % (seconds, logged, logged / seconds, wire, windows, wire / windows, wire / windows / 2, logged / max(wire, 1))
    )


@contextlib.contextmanager
def _backend(name: str) -> Iterator[None]:
    """Streamers made inside use the C extension (``native``) or the fallback (``python``), and
    so do their senders (the environment is read when a Streamer is made)."""
    old = os.environ.get("ISSTREAMER_NO_EXTENSION")
    if name == "python":
        os.environ["ISSTREAMER_NO_EXTENSION"] = "1"
    else:
        os.environ.pop("ISSTREAMER_NO_EXTENSION", None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ISSTREAMER_NO_EXTENSION", None)
        else:
            os.environ["ISSTREAMER_NO_EXTENSION"] = old


def _wait_stat(s, name: str, target: int, timeout: float = 300.0) -> float:
    """Poll ``stats()[name]`` until it reaches ``target``; the perf_counter time it did."""
    deadline = time.perf_counter() + timeout
    while s.stats()[name] < target:
        if time.perf_counter() > deadline:
            raise RuntimeError("%s stayed at %d of %d" % (name, s.stats()[name], target))
        time.sleep(0.002)
    return time.perf_counter()


def _ready(s) -> None:
    """One event through the sender first: it runs and has created the bucket."""
    s.log("ready", 0.0)
    s.flush(60)


def _backfill_once(url: str, spool: str, n: int, ruled: bool) -> List[float]:
    """Log a day of 1 Hz history (``n`` events, epochs of two days ago); the seconds from the first
    log() until every event is logged, then sent (no rule) or folded (Window(1.0)), then every
    window is closed (ruled only)."""
    rules = {"hist": Window(1.0)} if ruled else None
    s = _streamer(url, spool, rules=rules, flush_interval=0.2)
    _ready(s)
    base = s.stats()
    day = float(int(time.time()) - 2 * 86400)
    log = s.log
    t0 = time.perf_counter()
    for i in range(n):
        log("hist", float(i % 100), day + i + 0.5)
    out = [time.perf_counter() - t0]
    if ruled:
        out.append(_wait_stat(s, "folded", base["folded"] + n) - t0)
        out.append(_wait_stat(s, "windows", base["windows"] + n) - t0)
    else:
        out.append(_wait_stat(s, "sent", base["sent"] + n) - t0)
    s.close(60)
    return out


def bench_backfill(url: str, spool: str, quick: bool) -> None:
    """A backfill under Window(1.0) vs no rule, per backend (issue 19: within 3x, each against itself)."""
    sizes = (21600, 86400) if quick else (21600, 43200, 86400)
    for backend in ("native", "python"):
        if backend == "native" and not native_available():
            continue
        with _backend(backend):
            for n in sizes:
                plain = min(_backfill_once(url, spool, n, False)[1] for _ in range(3))
                runs = [_backfill_once(url, spool, n, True) for _ in range(3)]
                folded = min(r[1] for r in runs)
                wire = min(r[2] for r in runs)
                logged = min(r[0] for r in runs)
                print(
                    "backfill (%s), %d events at 1 Hz: no rule: all sent %.3f s after the first log(); "
                    "Window(1.0): all folded after %.3f s (%.2fx), every window closed after %.3f s "
                    "(logging took %.3f s; min of 3)" % (backend, n, plain, folded, folded / plain, wire, logged)
                )


def _live_delays(url: str, spool: str, backfill: int, seconds: float) -> List[float]:
    """A live key logged at 100 Hz for ``seconds``, 1 s windows; after a second, ``backfill``
    events of another key (a day of history) logged in one burst by another thread. How long
    after its end each live window reached the server (the windows ending after the burst began)."""
    s = _streamer(
        url, spool, flush_interval=0.2, rules={"live": Window(1.0, ("count",)), "hist": Window(1.0, ("mean",))}
    )
    _ready(s)
    urllib.request.urlopen(urllib.request.Request(url + "/record?prefix=live", method="POST"), timeout=10).read()
    day = float(int(time.time()) - 2 * 86400)
    started: List[float] = []

    def burst() -> None:
        time.sleep(1.0)
        started.append(time.time())
        for i in range(backfill):
            s.log("hist", float(i % 100), day + i + 0.5)

    t = threading.Thread(target=burst)
    t.start()
    t_end = time.time() + seconds
    while time.time() < t_end:
        s.log("live", 1.0)
        time.sleep(0.01)
    t.join()
    s.close(60)
    arrivals = benchutil.get_json(url + "/arrivals")
    since = started[0] if started else 0.0
    return [at - ep for key, ep, at in arrivals if key == "live_count" and ep > since and ep <= t_end]


def bench_live_during_backfill(url: str, spool: str, quick: bool) -> None:
    """Issue 19: a backfill delays no other key's due window by more than its settle time."""
    n = 86400
    seconds = 4.0 if quick else 8.0
    for backend in ("native", "python"):
        if backend == "native" and not native_available():
            continue
        with _backend(backend):
            alone = _live_delays(url, spool, 0, seconds)
            during = _live_delays(url, spool, n, seconds)

        def fmt(d: List[float]) -> str:
            return "median %.3f s, max %.3f s over %d windows" % (statistics.median(d), max(d), len(d))

        print(
            "live key's 1 s windows (%s), arrival after the window's end: alone %s; during a %d-event backfill "
            "%s (settle time %.2f s, flush_interval 0.2 s)" % (backend, fmt(alone), n, fmt(during), _grace())
        )


def _grace() -> float:
    from isstreamer.sender.aggregate import Aggregator

    return Aggregator.GRACE


BENCHES = {
    "log_cost": lambda url, spool, q: bench_log_cost(url, spool, q),
    "kernel": lambda url, spool, q: bench_kernel(q),
    "sender": bench_sender,
    "wire": bench_wire,
    "backfill": bench_backfill,
    "live": bench_live_during_backfill,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer events and rounds")
    ap.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these figures")
    args = ap.parse_args()
    only: Optional[List[str]] = args.only
    p, url = benchutil.start_count_server()
    spool = tempfile.mkdtemp(prefix="isstreamer-bench-spool-")
    try:
        print("load average %s" % benchutil.loadavg())
        for name, bench in BENCHES.items():
            if not only or name in only:
                bench(url, spool, args.quick)
    finally:
        benchutil.stop(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
