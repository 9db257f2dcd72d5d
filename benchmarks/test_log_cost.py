"""Per-call cost of ``Streamer.log()`` / ``log_object()`` against the floor, measured in the same run.

Each round is one loop of ``calls_per_round`` calls (``extra_info``), so the timer's own cost is
spread out: pytest-benchmark reports the time of a round, the per-call cost is that divided by
``calls_per_round`` (``compare.py`` does it). The loop's own cost (``for _ in range``, ~10 ns)
is in every row, floors included.

Floors:

* ``floor-noop-call``: ``obj.log("temperature", 21.5)`` on a method that does nothing;
* ``floor-time``: ``time.time()``;
* ``floor``: a method call whose body calls ``time.time()`` - the least a logger that stamps
  events can do. The "at most 2x the floor" target is measured against this one.

The Streamer runs against the counting server; its sender drains concurrently (as in real use).
Its ring (16 MiB, one producer segment) holds every record of a test, so no round waits for the
sender: this measures the producer, not the sender's throughput (test_e2e.py measures that).
The segment's pages are touched once before the rounds (``benchutil.prefault``): the steady
state of a long-running producer; the first pass over a fresh ring costs more (test_growth.py).

    python -m pytest benchmarks/test_log_cost.py
"""

from __future__ import annotations

import time
import types

import pytest

import benchutil
from isstreamer.streamer import Streamer

N = 2000  # calls per round
N_OBJECT = 200  # log_object calls per round (10 events each)
VALUES = {"float": 21.5, "int": 21, "str": "warm", "bool": True}
OBJECT = {
    "temp": 21.5,
    "humidity": 40.25,
    "pressure": 1013.2,
    "count": 7,
    "ok": True,
    "state": "idle",
    "voltage": 3.3,
    "current": 0.25,
    "rpm": 1200,
    "errors": 0,
}


def rounds(quick: bool) -> int:
    return 20 if quick else 200


class _Floor:
    def log(self, key, value):  # noqa: D401 - a method call doing nothing
        return None


class _FloorClock:
    def log(self, key, value, _now=time.time):  # a method call that takes a timestamp
        _now()


def _loop(log, value, n, cpu):
    def run():
        c0 = time.thread_time()
        for _ in range(n):
            log("temperature", value)
        cpu.append(time.thread_time() - c0)

    return run


def _time_loop(n, cpu):
    def run(now=time.time):
        c0 = time.thread_time()
        for _ in range(n):
            now()
        cpu.append(time.thread_time() - c0)

    return run


def _call_loop(fn, arg, n, cpu):
    """``fn(arg)`` n times (log_object(obj), a handle's log(value))."""

    def run():
        c0 = time.thread_time()
        for _ in range(n):
            fn(arg)
        cpu.append(time.thread_time() - c0)

    return run


def _record(benchmark, kind, calls, cpu, **extra):
    cpu = sorted(cpu)
    benchmark.extra_info.update(
        kind=kind, calls_per_round=calls, cpu_median_ns=cpu[len(cpu) // 2] / calls * 1e9 if cpu else None, **extra
    )


def _streamer(make_streamer, count_server, backend):
    s = make_streamer(backend, api_base=count_server, ring_size=16 * 1024 * 1024, full_timeout=60.0)
    benchutil.prefault(s)
    return s


def _check_delivered(s):
    assert s.flush(120), "the sender did not drain the ring in time"
    st = s.stats()
    assert not st["dropped"], st["dropped"]
    return st


@pytest.mark.benchmark(group="per-call")
def test_floor_noop_call(benchmark, quick):
    cpu = []
    benchmark.pedantic(_loop(_Floor().log, 21.5, N, cpu), rounds=rounds(quick), warmup_rounds=5)
    _record(benchmark, "floor-noop-call", N, cpu)


@pytest.mark.benchmark(group="per-call")
def test_floor_time(benchmark, quick):
    cpu = []
    benchmark.pedantic(_time_loop(N, cpu), rounds=rounds(quick), warmup_rounds=5)
    _record(benchmark, "floor-time", N, cpu)


@pytest.mark.benchmark(group="per-call")
def test_floor(benchmark, quick):
    cpu = []
    benchmark.pedantic(_loop(_FloorClock().log, 21.5, N, cpu), rounds=rounds(quick), warmup_rounds=5)
    _record(benchmark, "floor", N, cpu)


@pytest.mark.parametrize("value", list(VALUES))
@pytest.mark.parametrize("backend", ["native", "python"])
@pytest.mark.benchmark(group="per-call")
def test_log(benchmark, make_streamer, count_server, quick, backend, value):
    s = _streamer(make_streamer, count_server, backend)
    cpu = []
    r = rounds(quick) if backend == "native" else max(10, rounds(quick) // 5)
    benchmark.pedantic(_loop(s.log, VALUES[value], N, cpu), rounds=r, warmup_rounds=3)
    st = _check_delivered(s)
    _record(benchmark, "log", N, cpu, backend=backend, value=value, events=st["logged"], sent=st["sent"])


@pytest.mark.benchmark(group="per-call")
def test_log_python_path(benchmark, make_streamer, count_server, quick):
    """log(key, float) through the Python body of Streamer.log and cffi (the path before the C
    hot path, csrc/py/hotpath.c; still the path of a subclass with a log() of its own)."""
    s = _streamer(make_streamer, count_server, "native")
    cpu = []
    py_log = types.MethodType(Streamer.log, s)
    benchmark.pedantic(_loop(py_log, VALUES["float"], N, cpu), rounds=rounds(quick), warmup_rounds=3)
    st = _check_delivered(s)
    _record(benchmark, "log-python-path", N, cpu, backend="native", value="float", events=st["logged"], sent=st["sent"])


@pytest.mark.benchmark(group="per-call")
def test_log_thread_mode(benchmark, make_streamer, count_server, quick, monkeypatch):
    """log(key, float) in the thread mode (isstreamer.models: Windows, or ISSTREAMER_MODE=thread):
    the same C put, the sender a thread of this process (its work shares the process's GIL)."""
    monkeypatch.setenv("ISSTREAMER_MODE", "thread")
    s = make_streamer("native", api_base=count_server, ring_size=16 * 1024 * 1024, full_timeout=60.0)
    assert s.stats()["mode"] == "thread"
    cpu = []
    benchmark.pedantic(_loop(s.log, VALUES["float"], N, cpu), rounds=rounds(quick), warmup_rounds=3)
    st = _check_delivered(s)
    _record(
        benchmark, "log", N, cpu, backend="native", value="float", mode="thread", events=st["logged"], sent=st["sent"]
    )


@pytest.mark.parametrize("backend", ["native", "python"])
@pytest.mark.benchmark(group="per-call-object")
def test_log_object(benchmark, make_streamer, count_server, quick, backend):
    s = _streamer(make_streamer, count_server, backend)
    cpu = []
    r = rounds(quick) // 2 if backend == "native" else max(10, rounds(quick) // 5)
    benchmark.pedantic(_call_loop(s.log_object, OBJECT, N_OBJECT, cpu), rounds=r, warmup_rounds=3)
    st = _check_delivered(s)
    _record(
        benchmark,
        "log_object",
        N_OBJECT,
        cpu,
        backend=backend,
        value="dict10",
        events_per_call=len(OBJECT),
        events=st["logged"],
        sent=st["sent"],
    )


@pytest.mark.parametrize("backend", ["native", "python"])
@pytest.mark.benchmark(group="per-call")
def test_series(benchmark, make_streamer, count_server, quick, backend):
    """A bound-key handle: ``t = streamer.series("temperature"); t.log(21.5)`` (issue 21)."""
    s = _streamer(make_streamer, count_server, backend)
    t = s.series("temperature")
    t.log(VALUES["float"])  # its first event goes the full way (and arms the handle)
    cpu = []
    r = rounds(quick) if backend == "native" else max(10, rounds(quick) // 5)
    benchmark.pedantic(_call_loop(t.log, VALUES["float"], N, cpu), rounds=r, warmup_rounds=3)
    st = _check_delivered(s)
    _record(benchmark, "series", N, cpu, backend=backend, value="float", events=st["logged"], sent=st["sent"])
