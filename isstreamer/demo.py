"""``isstreamer demo``: the whole library on the embedded collector, in one command.

A :class:`~isstreamer.collector.server.CollectorServer` runs in this process; ONE
:class:`~isstreamer.Streamer` carries a tight sensor loop of this process plus the events of a
``multiprocessing`` pool (spawn context) that received the Streamer through ``initargs``. Progress
bars follow ``stats()``; the summary reads the delivered count back from the collector database.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote

from .ring import RingClosed, RingRefused, Table

__all__ = ["DemoResult", "run_demo", "sensor_readings", "format_summary"]

BUCKET_NAME = "isstreamer demo"
ACCESS_KEY = "isstreamer-demo"  # the embedded collector accepts any key
BURST = 1000  # calls per timed burst of the sensor loop
EVENTS_PER_STEP = 5  # a worker step: 2 log() calls + log_object() of a 3-item dict
MIB = 1024 * 1024
TICK_SECONDS = 1.0  # the sensor loop reads all four sensors once a second

Reading = Tuple[str, Any, float]


def aggregate_rules() -> Dict[str, Any]:
    """The downsampling rules of ``isstreamer demo --aggregate`` (see README, "Downsampling")."""
    from .rules import Deadband, OnChange, Window

    # the loops read once a second (TICK_SECONDS): their windows are a minute long
    return {
        "temperature": Window(60.0, ("mean", "min", "max")),
        "humidity": Window(60.0),
        "pressure_hpa": Window(60.0),
        "door_open": OnChange(),
        "pump_*_rpm": Deadband(absolute=25.0, heartbeat=60.0),
        "pump_*_load": Window(60.0, ("mean", "max")),
        "pump_*_queue": Window(60.0, ("max",)),
        "pump_*_state": OnChange(),
        "pump_*_ok": OnChange(),
    }


def sensor_readings(n: int, seed: int = 1, end: Optional[float] = None) -> List[Reading]:
    """``n`` simulated ``(key, value, epoch)`` readings of four sensors, one tick of all four at a
    time, one tick every ``TICK_SECONDS`` with the last at ``end`` (default: now), as a real
    sensor loop would have logged them: temperature and humidity follow a sine (period 900
    ticks) with noise, pressure a slow drift, the door is open 45 ticks out of 600."""
    rng = random.Random(seed)
    ticks = -(-n // 4)
    start = (time.time() if end is None else end) - (ticks - 1) * TICK_SECONDS
    out: List[Reading] = []
    for t in range(ticks):
        wave = math.sin(2 * math.pi * t / 900)
        ep = start + t * TICK_SECONDS
        out.append(("temperature", round(21.0 + 3.0 * wave + rng.gauss(0, 0.15), 2), ep))
        out.append(("humidity", round(45.0 - 8.0 * wave + rng.gauss(0, 0.6), 1), ep))
        out.append(
            ("pressure_hpa", round(1013.25 + 2.5 * math.sin(2 * math.pi * t / 7200) + rng.gauss(0, 0.05), 2), ep)
        )
        out.append(("door_open", t % 600 < 45, ep))
    del out[n:]
    return out


_worker_streamer: Optional[Any] = None


def _worker_init(streamer: Any) -> None:
    """Pool initializer: keep the Streamer received through ``initargs``; leave Ctrl-C to the parent."""
    global _worker_streamer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_streamer = streamer


def _pump_task(task: Tuple[str, int, int]) -> Tuple[int, bool]:
    """Simulate one pump for ``steps`` ticks; return (events logged, flushed)."""
    name, steps, seed = task
    s = _worker_streamer
    assert s is not None, "pool initializer did not run"
    rng = random.Random(seed)
    start = time.time() - (steps - 1) * TICK_SECONDS  # one step a second, the last one now
    for t in range(steps):
        ep = start + t * TICK_SECONDS
        rpm = int(1450 + 120 * math.sin(2 * math.pi * t / 600 + seed) + rng.gauss(0, 8))
        s.log(name + "_rpm", rpm, ep)
        s.log(name + "_state", "running" if rpm >= 1340 else "throttled", ep)
        s.log_object(
            {
                "load": round(0.6 + 0.25 * math.sin(2 * math.pi * t / 1800) + rng.gauss(0, 0.02), 3),
                "queue": max(0, int(rng.gauss(12, 4))),
                "ok": rng.random() > 0.002,
            },
            key_prefix=name,
            epoch=ep,
        )
    return steps * EVENTS_PER_STEP, s.flush(60)


def pump_tasks(events: int, workers: int) -> List[Tuple[str, int, int]]:
    """Tasks for the pool: ``2 * workers`` pumps sharing about ``events // 4`` events."""
    if workers <= 0:
        return []
    pumps = 2 * workers
    steps = max(1, events // 4 // EVENTS_PER_STEP // pumps)
    return [("pump_%d" % (i + 1), steps, i + 1) for i in range(pumps)]


# --------------------------------------------------------------------------- progress


class _Progress:
    """Two tqdm bars (logged, delivered) fed from ``streamer.stats()`` by a polling thread."""

    def __init__(self, streamer: Any, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        fmt = "{desc} {percentage:3.0f}%|{bar}| {n:>9,}/{total:,} [{elapsed}, {rate_fmt}]"
        kw: Dict[str, Any] = dict(
            total=total, unit=" ev", unit_scale=True, bar_format=fmt, dynamic_ncols=True, disable=not enabled
        )
        self._bars = (tqdm(desc="  logged   ", position=0, **kw), tqdm(desc="  delivered", position=1, **kw))
        self._streamer = streamer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="isstreamer-demo-progress", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        st = self._streamer.stats()
        for bar, n in zip(self._bars, (st.get("logged", 0), st.get("sent", 0))):
            if n != bar.n:
                bar.update(n - bar.n)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._poll()

    def close(self) -> None:
        """Stop polling, show the final counts, release the terminal lines."""
        self._stop.set()
        self._thread.join()
        self._poll()
        for bar in self._bars:
            bar.close()


# --------------------------------------------------------------------------- the run


@dataclass
class DemoResult:
    """What one demo run measured (``format_summary`` turns it into text)."""

    url: str
    db_path: str
    bucket_key: str
    bucket_name: str
    sensor_events: int
    worker_events: int
    workers: int
    logged: int
    delivered: int
    sent: int
    dropped: Dict[str, int]
    backend: str
    ns_per_call: float
    ns_per_call_mean: float
    loop_seconds: float
    requests: int
    batches: int
    seconds: float
    spooled: int = 0
    problems: List[str] = field(default_factory=list)
    folded: int = 0  # --aggregate: events folded by the rules
    aggregated: int = 0  # --aggregate: events the rules sent instead

    @property
    def dashboard_url(self) -> str:
        """``<collector url>/dashboard/<bucket key>``."""
        return "%s/dashboard/%s" % (self.url, quote(self.bucket_key, safe=""))

    @property
    def ok(self) -> bool:
        """Every logged event was delivered and stored, none dropped."""
        expected = self.sensor_events + self.worker_events
        return (
            not self.problems
            and self.logged == expected
            and self.delivered == expected - self.folded + self.aggregated
            and not sum(self.dropped.values())
        )


def _ring_size(events: int, worker_events: int) -> int:
    """Per-process segments that hold a whole burst (so the timed loop never waits)."""
    return int(min(512 * MIB, max(16 * MIB, max(events, worker_events) * 64)))


def _timed_loop(log: Callable[..., None], readings: List[Reading]) -> Tuple[List[float], float]:
    """Call ``log(key, value, epoch)`` for every reading; return the per-call ns of each burst, and seconds."""
    per_call: List[float] = []
    clock = time.perf_counter_ns
    t_start = clock()
    for i in range(0, len(readings), BURST):
        chunk = readings[i : i + BURST]
        t0 = clock()
        for k, v, ep in chunk:
            log(k, v, ep)
        per_call.append((clock() - t0) / len(chunk))
    return per_call, (clock() - t_start) / 1e9


def _stop_sender(ring_path: Optional[str], grace: float) -> None:
    """Make sure the ring's sender is gone before the demo's spool directory is removed.

    After a complete run it has nothing left and exits at once; after Ctrl-C it gets ``grace``
    seconds to drain, then it is stopped (SIGTERM, then SIGKILL) and the ring's files removed."""
    if not ring_path:
        return
    try:
        table = Table.open(ring_path)
    except (RingClosed, RingRefused, OSError):
        return  # removed by its sender already
    try:
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and table.sender_pid:  # the pid the live sender recorded (its lock says it lives)
                with contextlib.suppress(OSError):
                    os.kill(table.sender_pid, sig)
            deadline = time.monotonic() + (grace if sig is None else 2.0)
            while table.sender_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not table.sender_alive():
                break
        with contextlib.suppress(OSError), table.locked():
            table.mark_closing()  # its files would be adopted by a later Streamer otherwise
            table.remove_files()
    finally:
        table.close()


def _wait_stored(server: Any, bucket_key: str, expected: int, timeout: float) -> int:
    """Poll the collector database until it holds ``expected`` events of the bucket (or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        n = server.event_count(bucket_key)
        if n >= expected or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def run_workload(
    server: Any,
    events: int,
    workers: int,
    work_dir: str,
    progress: Optional[bool],
    echo: Callable[[str], None],
    aggregate: bool = False,
) -> DemoResult:
    """Stream the sensor loop and the pool's events through one Streamer into ``server``."""
    import multiprocessing

    from .streamer import Streamer

    bucket_key = "isstreamer-demo-%s-%s" % (time.strftime("%Y%m%d-%H%M%S"), secrets.token_hex(2))
    readings = sensor_readings(events)
    tasks = pump_tasks(events, workers)
    worker_events = sum(t[1] for t in tasks) * EVENTS_PER_STEP
    total = events + worker_events
    echo("  bucket       \"%s\"  (key %s)" % (BUCKET_NAME, bucket_key))
    echo("  workload     %s sensor readings from a tight log() loop in this process" % _n(events))
    if workers:
        echo(
            "               + %s events from %s (spawn) using log() and log_object()"
            % (_n(worker_events), _plural(workers, "pool worker"))
        )
    show_bars = sys.stderr.isatty() if progress is None else progress
    if show_bars:
        echo("")
    streamer = Streamer(
        bucket_name=BUCKET_NAME,
        bucket_key=bucket_key,
        access_key=ACCESS_KEY,
        api_base=server.url,
        spool_dir=os.path.join(work_dir, "spool"),
        close_timeout=1.0,
        ring_size=_ring_size(events, worker_events // max(1, workers)),
        rules=aggregate_rules() if aggregate else None,
    )
    pool = None
    bar: Optional[_Progress] = None
    completed = False
    problems: List[str] = []
    try:
        t_start = time.perf_counter()
        if tasks:
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(streamer,))
            pending = pool.map_async(_pump_task, tasks)
        bar = _Progress(streamer, total, show_bars)
        per_call, loop_seconds = _timed_loop(streamer.log, readings)
        if pool is not None:
            results = pending.get(timeout=300)
            pool.close()
            pool.join()
            pool = None
            if not all(flushed for _, flushed in results):
                problems.append("a pool worker could not flush within 60 s")
        if not streamer.flush(120):
            problems.append("the main process could not flush within 120 s")
        st = streamer.stats()  # after flush(): the rules' windows are out too (--aggregate)
        delivered = _wait_stored(server, bucket_key, total - st.get("folded", 0) + st.get("aggregated", 0), 30)
        seconds = time.perf_counter() - t_start
        bar.close()
        bar = None
        streamer.close()
        st = streamer.stats()
        completed = True
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        ring_path = streamer.ring_path
        streamer.close(timeout=1)
        _stop_sender(ring_path, 10.0 if completed else 1.0)
    return DemoResult(
        url=server.url,
        db_path=server.db_path,
        bucket_key=bucket_key,
        bucket_name=BUCKET_NAME,
        sensor_events=events,
        worker_events=worker_events,
        workers=workers,
        logged=st.get("logged", 0),
        delivered=delivered,
        sent=st.get("sent", 0),
        dropped={k: v for k, v in st["dropped"].items() if v},
        backend=st["backend"],
        ns_per_call=statistics.median(per_call) if per_call else 0.0,
        ns_per_call_mean=loop_seconds * 1e9 / max(1, events),
        loop_seconds=loop_seconds,
        requests=st.get("requests", 0),
        batches=st.get("batches", 0),
        seconds=seconds,
        spooled=st.get("spooled", 0),
        problems=problems,
        folded=st.get("folded", 0),
        aggregated=st.get("aggregated", 0),
    )


def _n(x: float) -> str:
    return format(int(round(x)), ",")


def _plural(n: int, noun: str) -> str:
    return "%d %s%s" % (n, noun, "" if n == 1 else "s")


def format_summary(r: DemoResult) -> str:
    """The human-readable summary of a run: ``label  value  meaning`` rows, then the dashboard URL."""
    rows: List[Tuple[str, str, str]] = []
    dropped = sum(r.dropped.values())
    missing = r.logged - r.folded + r.aggregated - r.delivered
    rows.append(
        (
            "logged",
            _n(r.logged),
            "events: %s sensor readings + %s from %s"
            % (_n(r.sensor_events), _n(r.worker_events), _plural(r.workers, "worker"))
            if r.workers
            else "events (sensor readings)",
        )
    )
    rows.append(
        (
            "delivered",
            _n(r.delivered),
            "events read back from the collector database" + ("  <-- %s MISSING" % _n(missing) if missing else ""),
        )
    )
    if r.folded:
        rows.append(
            (
                "downsampled",
                _n(r.folded),
                "events folded by the rules (--aggregate), sent as %s events: "
                "%.0fx fewer on the wire" % (_n(r.aggregated), r.folded / max(1, r.aggregated)),
            )
        )
    if dropped:
        detail = "DROPPED: " + ", ".join("%s %s" % (k, _n(v)) for k, v in sorted(r.dropped.items()))
    else:
        detail = "none: every event logged was delivered" if not missing else "none reported"
    rows.append(("dropped", _n(dropped), detail))
    rows.append(
        ("log() cost", _n(r.ns_per_call), "ns per call, %s backend (median of %s-call bursts)" % (r.backend, _n(BURST)))
    )
    rows.append(
        (
            "sensor loop",
            "%.2f" % r.loop_seconds,
            "s for the %s calls, including waits for the GIL held by the in-process collector" % _n(r.sensor_events),
        )
    )
    per_batch = " of %s events on average" % _n(r.sent / r.batches) if r.batches else ""
    rows.append(("requests", _n(r.requests), "HTTP requests, %s batches%s" % (_n(r.batches), per_batch)))
    rate = r.delivered / r.seconds if r.seconds > 0 else 0.0
    rows.append(
        ("end to end", "%.1f" % r.seconds, "s from the first log() to the last event stored: %s events/s" % _n(rate))
    )
    if r.spooled:
        rows.append(("spooled", _n(r.spooled), "events written to the spool for a later retry"))
    width = max(len(v) for _, v, _ in rows)
    lines = ["Summary"] + ["  %-12s %*s  %s" % (label, width, value, detail) for label, value, detail in rows]
    lines += ["  problem: " + p for p in r.problems]
    lines += ["", "Dashboard: " + r.dashboard_url]
    return "\n".join(lines)


def _serve_until_interrupted(echo: Callable[[str], None]) -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM (both handled here: a SIGINT ignored by the shell
    that started us, as a background job's is, still stops it)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    echo("Serving the dashboard (latest value and a chart of every key); press Ctrl-C to stop.")
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_demo(
    events: int = 200_000,
    workers: int = 2,
    port: int = 0,
    db: Optional[str] = None,
    serve: bool = True,
    progress: Optional[bool] = None,
    echo: Callable[[str], None] = lambda s: print(s, flush=True),
    aggregate: bool = False,
) -> int:
    """Run the demo; return the exit status (0 when every event was delivered, else 1).

    ``db=None`` keeps the collector database in a temporary directory removed at the end.
    ``progress=None`` shows the bars only on a terminal. With ``serve`` the collector keeps
    serving the dashboard after the summary until Ctrl-C or SIGTERM.
    """
    from .collector.server import CollectorServer

    with tempfile.TemporaryDirectory(prefix="isstreamer-demo-") as work_dir:
        db_path = os.path.abspath(db) if db else os.path.join(work_dir, "collector.db")
        os.makedirs(os.path.dirname(db_path), exist_ok=True)
        server = CollectorServer(db_path=db_path, port=port).start()
        try:
            echo(
                "isstreamer demo: one Streamer shared by %s, streaming to the embedded collector"
                % ("this process and %s" % _plural(workers, "pool worker") if workers else "this process")
            )
            echo("  collector    %s  (in this process; it accepts any access key)" % server.url)
            echo("  database     %s%s" % (db_path, "" if db else "  (temporary: --db PATH keeps it)"))
            try:
                result = run_workload(server, events, workers, work_dir, progress, echo, aggregate)
            except KeyboardInterrupt:
                echo("\nInterrupted.")
                return 130
            echo("")
            echo(format_summary(result))
            if serve:
                _serve_until_interrupted(echo)
                echo("Stopped.")
        finally:
            server.stop()
    if not result.ok:
        print("isstreamer demo: not every event was delivered (see the summary)", file=sys.stderr)
        return 1
    return 0
