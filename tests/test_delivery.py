"""Never lose an event: the sender's delivery policy against a fault-injecting events API.

Every scenario logs events with unique values and asserts that each arrives exactly once (or,
for 400s, all but the refused one, which is in ``<spool_dir>/rejected.jsonl``), and checks the
``stats()`` counters against what the server saw. Real server (``tests/faultserver.py``), real
sender processes, real SIGKILLs, real spool files. The figures of each scenario are printed at
the end of the module (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from procutil import pid_alive
from isstreamer.sender.spool import key_fingerprint, stream_id
from isstreamer.streamer import Streamer

try:
    from faultserver import BUCKETS, EVENTS, FaultServer, free_port
except ImportError:  # tests/ made a package
    from .faultserver import BUCKETS, EVENTS, FaultServer, free_port  # type: ignore[no-redef]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCESS_KEY = "test-access-key"
FIGURES: Dict[str, Dict[str, int]] = {}

# small timings so that the whole module runs in about a minute
FAST = dict(
    flush_interval=0.05,
    close_timeout=3.0,
    max_attempts=3,
    backoff_max=0.3,
    auth_retry_interval=0.5,
    request_timeout=5.0,
)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Iterator[None]:
    """Print the figures each scenario recorded (visible with ``pytest -s``)."""
    yield
    if FIGURES:
        cols = ("logged", "delivered", "spooled", "replayed", "rejected", "duplicates")
        print("\n%-28s" % "scenario" + "".join("%11s" % c for c in cols))
        for name, f in FIGURES.items():
            extra = " ".join("%s=%s" % (k, v) for k, v in f.items() if k not in cols)
            print("%-28s" % name + "".join("%11s" % f.get(c, "") for c in cols) + "  " + extra)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """A running fault server, stopped at teardown."""
    srv = FaultServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def spool(tmp_path: Any) -> str:
    """A fresh spool directory."""
    return str(tmp_path / "spool")


@pytest.fixture
def make_streamer(spool: str) -> Iterator[Callable[..., Streamer]]:
    """Build Streamers on the test spool with fast timings; all closed at teardown."""
    made: List[Streamer] = []

    def make(api_base: str, bucket_name: str = "faults", bucket_key: str = "", **kw: Any) -> Streamer:
        opts: Dict[str, Any] = dict(FAST, spool_dir=spool, api_base=api_base)
        opts.update(kw)
        s = Streamer(bucket_name, bucket_key or "bk-%d" % len(made), ACCESS_KEY, **opts)
        made.append(s)
        return s

    yield make
    pids = [s.sender_pid or 0 for s in made]
    for s in made:
        s.close(timeout=2)
    for pid in pids:  # the senders exit once their ring has no owner left
        _wait(lambda pid=pid: not pid_alive(pid), 15)


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def assert_exactly_once(server: FaultServer, expected: List[Any], key: str = "n") -> None:
    """Every expected value was stored exactly once, and nothing else under ``key``."""
    got = Counter(server.values(key))
    missing = [v for v in expected if v not in got]
    dups = {v: c for v, c in got.items() if c > 1}
    extra = set(got) - set(expected)
    assert not missing, "%d event(s) lost, e.g. %r" % (len(missing), missing[:10])
    assert not dups, "%d event(s) delivered more than once, e.g. %r" % (len(dups), list(dups.items())[:10])
    assert not extra, "unexpected events %r" % sorted(extra, key=repr)[:10]


def spool_events(spool: str) -> int:
    """Events not yet replayed in the spool: complete lines past each file's ``.pos``."""
    n = 0
    for d, _, files in os.walk(spool):
        if d == spool:
            continue  # rejected.jsonl
        for f in files:
            if f.endswith(".jsonl"):
                path = os.path.join(d, f)
                start = 0
                if os.path.exists(path + ".pos"):
                    with open(path + ".pos") as fh:
                        start = int(fh.read() or 0)
                with open(path, "rb") as fh:
                    fh.seek(start)
                    for line in fh:
                        if line.endswith(b"\n"):
                            n += len(json.loads(line))
    return n


def rejected(spool: str) -> List[Dict[str, Any]]:
    """The records of ``<spool>/rejected.jsonl``."""
    path = os.path.join(spool, "rejected.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [json.loads(line) for line in f]


def record(name: str, st: Dict[str, Any], server: Optional[FaultServer], logged: int) -> None:
    """Keep the figures of a scenario (stats() and what the server stored) for the summary."""
    FIGURES[name] = dict(
        logged=logged,
        delivered=len(server.values()) if server else 0,
        spooled=st.get("spooled", 0),
        replayed=st.get("replayed", 0),
        rejected=st.get("rejected", 0),
        duplicates=sum(c - 1 for c in server.duplicates().values()) if server else 0,
    )


def wait_stat(s: Streamer, name: str, value: int, timeout: float = 15) -> Dict[str, Any]:
    """Wait until ``stats()[name] >= value``; returns the last stats."""
    _wait(lambda: s.stats().get(name, 0) >= value, timeout)
    return s.stats()


def sender_pid(s: Streamer) -> int:
    """Pid of the sender process of a Streamer's ring."""
    return s.sender_pid or 0


def rss_kb(pid: int) -> int:
    """Resident set size of a process in kB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def run_script(code: str, timeout: float = 60, **popen: Any) -> subprocess.Popen:
    """Start ``python -c code`` with the work tree importable."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


# --------------------------------------------------------------------------- transient failures


def test_503_burst_is_retried(server: FaultServer, make_streamer: Callable[..., Streamer]) -> None:
    """A burst of 503 shorter than max_attempts: retried with backoff, nothing spooled."""
    s = make_streamer(server.url)
    server.fail_next(2, 503)
    for i in range(300):
        s.log("n", i)
    assert s.flush(20)
    assert_exactly_once(server, list(range(300)))
    st = s.stats()
    assert server.statuses()[503] == 2
    assert st["retries"] == 2
    assert st["sent"] == 300 and st["spooled"] == 0 and st["replayed"] == 0
    assert st["requests"] == len(server.log())
    record("503 burst", st, server, 300)


@pytest.mark.slow
def test_503_outage_spools_then_replays(
    server: FaultServer, make_streamer: Callable[..., Streamer], spool: str
) -> None:
    """More 503s than max_attempts: the batch goes to the spool, then a probe replays it."""
    s = make_streamer(server.url, max_attempts=2)
    server.fail_next(5, 503)
    for i in range(300):
        s.log("n", i)
    assert s.flush(20)
    assert server.wait_events(300)
    st = wait_stat(s, "replayed", 1)
    assert_exactly_once(server, list(range(300)))
    assert server.statuses()[503] == 5 and st["retries"] == 5
    assert st["spooled"] > 0
    assert st["sent"] == 300  # every event the API accepted, live or replayed
    assert st["replayed"] == st["spooled"]
    assert _wait(lambda: spool_events(spool) == 0, 10)
    record("503 outage", st, server, 300)


def test_server_down_then_up(server: FaultServer, make_streamer: Callable[..., Streamer], spool: str) -> None:
    """The API goes away mid-program (keep-alive connection dropped, then refused) and comes back."""
    s = make_streamer(server.url, max_attempts=2)
    for i in range(300):
        s.log("n", i)
    assert s.flush(20)
    server.down()
    for i in range(300, 600):
        s.log("n", i)
    assert s.flush(20)
    st = s.stats()
    assert st["spooled"] == 300 and spool_events(spool) == 300
    server.up()
    assert server.wait_events(600)
    st = wait_stat(s, "replayed", 300)
    assert_exactly_once(server, list(range(600)))
    assert st["sent"] == 600 and st["replayed"] == 300
    assert _wait(lambda: spool_events(spool) == 0, 10)
    record("down then up", st, server, 600)


def test_connection_resets(server: FaultServer, make_streamer: Callable[..., Streamer], spool: str) -> None:
    """Connections aborted without an answer are retried on a new connection."""
    s = make_streamer(server.url, max_batch_events=50, max_attempts=4)
    server.reset_next(3)
    for i in range(400):
        s.log("n", i)
    assert s.flush(20)
    assert server.wait_events(400)
    st = wait_stat(s, "sent", 400)
    assert_exactly_once(server, list(range(400)))
    assert server.statuses()[0] == 3 and st["retries"] == 3
    assert st["sent"] == 400 and st["replayed"] == st["spooled"]
    assert _wait(lambda: spool_events(spool) == 0, 10)
    record("connection resets", st, server, 400)


def test_slow_answers(server: FaultServer, make_streamer: Callable[..., Streamer]) -> None:
    """Answers slower than usual but within request_timeout: no retry, no duplicate."""
    s = make_streamer(server.url, request_timeout=5.0, max_batch_events=100)
    server.slow(0.4)
    for i in range(300):
        s.log("n", i)
    assert s.flush(30)
    st = s.stats()
    assert_exactly_once(server, list(range(300)))
    assert st["retries"] == 0 and st["spooled"] == 0 and st["sent"] == 300
    record("slow answers", st, server, 300)


def test_answers_slower_than_request_timeout(server: FaultServer, make_streamer: Callable[..., Streamer]) -> None:
    """Answers later than request_timeout: retried, nothing lost; only the abandoned batches come twice.

    The server stored those batches before answering late, so this is at-least-once by design.
    """
    s = make_streamer(server.url, request_timeout=0.5, max_batch_events=100, max_attempts=5)
    s.log("warm", 1)  # bucket created and first batch sent at full speed
    assert s.flush(10)
    server.slow(1.0)
    for i in range(300):
        s.log("n", i)
    assert server.wait_for(lambda: server.arrived >= 3, 10)
    server.slow(0)
    assert s.flush(20)
    assert server.wait_for(lambda: all(r.t_out for r in server.log()), 10)  # late answers made
    got = Counter(server.values("n"))
    assert sorted(got) == list(range(300)), "events lost"
    late = [r for r in server.log() if r.t_out - r.t_in >= 1.0]
    assert late, "no answer came after the client's timeout"
    assert sum(c - 1 for c in got.values()) == sum(r.nevents for r in late)
    st = s.stats()
    assert st["retries"] == len(late)
    FIGURES["slower than timeout"] = dict(
        logged=300,
        delivered=sum(got.values()),
        spooled=st["spooled"],
        replayed=st["replayed"],
        rejected=0,
        duplicates=sum(c - 1 for c in got.values()),
    )


@pytest.mark.slow
def test_429_waits_for_retry_after(server: FaultServer, make_streamer: Callable[..., Streamer]) -> None:
    """After a 429 nothing at all is sent before Retry-After has elapsed."""
    s = make_streamer(server.url)
    server.rate_limit(retry_after=1.5, times=2)
    for i in range(200):
        s.log("n", i)
    assert s.flush(20)
    assert server.wait_events(200)
    st = wait_stat(s, "sent", 200)
    assert_exactly_once(server, list(range(200)))
    reqs = sorted(server.log(None), key=lambda r: r.t_in)
    limited = [r for r in reqs if r.status == 429]
    assert len(limited) == 2
    for r in limited:
        later = [q for q in reqs if q.t_in > r.t_in]
        assert later, "nothing was sent after a 429"
        assert later[0].t_in >= r.t_out + 1.5, "a request came %.3fs after a 429 with Retry-After 1.5" % (
            later[0].t_in - r.t_out
        )
    assert st["sent"] == 200 and st["replayed"] == st["spooled"]
    record("429 Retry-After", st, server, 200)


def test_segment_filled_before_the_sender_runs(
    server: FaultServer, make_streamer: Callable[..., Streamer], backend: str
) -> None:
    """A producer fills its segment at once (long flush_interval, huge buffer_size): it blocks, the
    sender drains the full segment, nothing is dropped (on_full='block')."""
    s = make_streamer(server.url, ring_size=1024 * 1024, flush_interval=30, buffer_size=10**6, full_timeout=5.0)
    n = 100000  # about 4 segments of 1 MiB
    for i in range(n):
        s.log("n", i)
    assert s.flush(30)
    st = s.stats()
    assert st["dropped"] == {}, st["dropped"]
    assert server.wait_events(n, 60)  # (a request that hangs makes the sender spool, then replay)
    assert_exactly_once(server, list(range(n)))
    record("full segment/" + backend, st, server, n)


# --------------------------------------------------------------------------- refusals


def test_413_splits_batches(server: FaultServer, make_streamer: Callable[..., Streamer], spool: str) -> None:
    """413: batches are halved until they fit; one event too large on its own is rejected."""
    s = make_streamer(server.url)
    server.max_body(1500)
    for i in range(1000):
        s.log("n", i)
    s.log("big", "x" * 1900)
    assert s.flush(30)
    st = s.stats()
    assert_exactly_once(server, list(range(1000)))
    assert server.statuses()[413] > 0
    assert all(r.nbytes <= 1500 for r in server.log() if r.status == 204)
    rej = rejected(spool)
    assert [r["event"]["value"] for r in rej] == ["x" * 1900]
    assert rej[0]["status"] == 413
    assert st["rejected"] == 1 and st["sent"] == 1000 and st["spooled"] == 0
    record("413 split", st, server, 1001)


def test_400_poison_event(server: FaultServer, make_streamer: Callable[..., Streamer], spool: str) -> None:
    """400: bisection isolates the one refused event; every other event is delivered once."""
    s = make_streamer(server.url)
    server.poison("poison")
    for i in range(500):
        s.log("n", i)
        if i == 321:
            s.log("n", "poison")
    assert s.flush(30)
    st = s.stats()
    assert_exactly_once(server, list(range(500)))
    rej = rejected(spool)
    assert len(rej) == 1
    assert rej[0]["event"]["value"] == "poison" and rej[0]["status"] == 400
    assert "INVALID_EVENT" in rej[0]["answer"] and rej[0]["bucket_key"] == s.BucketKey
    assert st["rejected"] == 1 and st["sent"] == 500 and st["spooled"] == 0
    record("400 poison", st, server, 501)


def test_bucket_removed(server: FaultServer, make_streamer: Callable[..., Streamer], spool: str) -> None:
    """400 BUCKET_REMOVED: the batch is rejected whole (no bisection), into rejected.jsonl."""
    s = make_streamer(server.url, bucket_key="gone")
    server.bucket_removed("gone")
    for i in range(100):
        s.log("n", i)
    assert s.flush(20)
    st = s.stats()
    assert server.values() == []
    rej = rejected(spool)
    assert sorted(r["event"]["value"] for r in rej) == list(range(100))
    assert all("BUCKET_REMOVED" in r["answer"] for r in rej)
    assert server.statuses()[400] == len(server.log())  # one request per batch, no bisection
    assert st["rejected"] == 100
    record("400 BUCKET_REMOVED", st, server, 100)


def test_401_spools_then_replays(server: FaultServer, make_streamer: Callable[..., Streamer], spool: str) -> None:
    """401: events go to the spool, nothing is lost; once the key works again they are replayed."""
    server.unauthorized(True)
    s = make_streamer(server.url)
    for i in range(300):
        s.log("n", i)
    assert s.flush(20)
    st = wait_stat(s, "spooled", 300)
    assert server.values() == []
    assert st["spooled"] == 300 and spool_events(spool) == 300
    server.unauthorized(False)
    assert server.wait_events(300)
    st = wait_stat(s, "replayed", 300)
    assert_exactly_once(server, list(range(300)))
    assert st["replayed"] == 300 and st["sent"] == 300
    assert _wait(lambda: spool_events(spool) == 0, 10)
    assert server.log(BUCKETS)[-1].status in (201, 204)
    record("401 then key ok", st, server, 300)


# --------------------------------------------------------------------------- crashes and outages


@pytest.mark.slow
def test_flush_returns_once_spooled_when_api_unreachable(make_streamer: Callable[..., Streamer], spool: str) -> None:
    """Nobody listens: after max_attempts failed requests the events are spooled and flush() returns."""
    s = make_streamer("http://127.0.0.1:%d" % free_port(), max_attempts=2)
    for i in range(500):
        s.log("n", i)
    assert s.flush(15), "flush() still waiting: the events were neither delivered nor spooled"
    st = s.stats()
    assert st["spooled"] == 500 and st["pending"] == 0
    assert st["retries"] >= 2  # the failed requests (bucket creation) that made it an outage
    assert spool_events(spool) == 500
    record("unreachable flush", st, None, 500)


DOWN_SCRIPT = """
import sys, time
from isstreamer import Streamer
s = Streamer("down", "bk-down", %(key)r, api_base=%(url)r, spool_dir=%(spool)r, close_timeout=%(ct)r,
             flush_interval=0.05, max_attempts=2, backoff_max=0.2, request_timeout=1.0)
for i in range(%(n)d):
    s.log("n", i)
print(s.sender_pid, flush=True)
# exits without close(): the atexit hook must bound the exit by close_timeout
"""


@pytest.mark.slow
def test_server_down_for_whole_program(tmp_path: Any, backend: str) -> None:
    """Server down while a program runs: exit bounded by close_timeout, spooled, replayed later once."""
    spool, port, n, close_timeout = str(tmp_path / "spool"), free_port(), 2000, 2.0
    url = "http://127.0.0.1:%d" % port
    t0 = time.monotonic()
    p = run_script(DOWN_SCRIPT % dict(key=ACCESS_KEY, url=url, spool=spool, ct=close_timeout, n=n))
    out, err = p.communicate(timeout=60)
    wall = time.monotonic() - t0
    assert p.returncode == 0, err
    assert wall < close_timeout + 15, "exit took %.1fs with close_timeout=%g" % (wall, close_timeout)
    pid = int(out.split()[0])
    assert _wait(lambda: not pid_alive(pid), 20), "the sender did not exit"
    assert spool_events(spool) == n
    with FaultServer(port=port) as server:
        s = Streamer("down", "bk-other", ACCESS_KEY, api_base=url, spool_dir=spool, **FAST)
        try:
            assert server.wait_events(n)
            st = wait_stat(s, "replayed", n)
            assert_exactly_once(server, list(range(n)))
            assert st["replayed"] == n
            assert _wait(lambda: spool_events(spool) == 0, 10)
            assert {b["bucket"] for b in server.buckets} >= {"bk-down"}
            record("down whole program/" + backend, dict(st, spooled=n), server, n)
        finally:
            s.close(2)
    FIGURES["down whole program/" + backend]["exit_s"] = round(wall, 1)  # type: ignore[assignment]


EXIT_SCRIPT = """
import sys, time
from isstreamer import Streamer
s = Streamer("exit", "bk-exit", %(key)r, api_base=%(url)r, spool_dir=%(spool)r, close_timeout=5.0)
for i in range(%(n)d):
    s.log("n", i)
print(s.sender_pid, flush=True)
if %(close)r:
    t0 = time.monotonic()
    s.close()  # the defaults otherwise: max_attempts=4, backoff_max=30
    print(round(time.monotonic() - t0, 2), flush=True)
else:
    time.sleep(120)  # SIGKILLed by the test
"""


def _outage_at_exit(server: FaultServer, spool: str, close: bool) -> Dict[str, Any]:
    """20000 events; the API answers 503 for about 2 s from the first request on; the producer
    either is SIGKILLed at the first 503 (the sender's exit deadline starts) or calls close()."""
    n = 20000
    server.fail_next(10**9, 503)
    p = run_script(EXIT_SCRIPT % dict(key=ACCESS_KEY, url=server.url, spool=spool, n=n, close=close))
    assert p.stdout is not None
    try:
        pid = int(p.stdout.readline())
        assert server.wait_for(lambda: server.statuses()[503] >= 1, 30), "no request reached the API"
        if not close:
            os.kill(p.pid, signal.SIGKILL)
        time.sleep(2.0)  # the outage
    finally:
        server.fail_next(0)
    out, err = p.communicate(timeout=60)
    assert p.returncode == (0 if close else -signal.SIGKILL), err
    assert _wait(lambda: not pid_alive(pid), 30), "the sender did not exit"
    left = spool_events(spool)
    got = Counter(server.values("n"))
    assert sorted(got) == list(range(n)) or left, "events lost"
    return dict(
        logged=n,
        delivered=sum(got.values()),
        spooled=left,
        replayed=0,
        rejected=0,
        duplicates=sum(c - 1 for c in got.values()),
        http_503=server.statuses()[503],
        close_s=float(out.split()[0]) if close and out.split() else -1,
    )


def test_exiting_sender_spends_its_budget_on_a_short_outage(server: FaultServer, spool: str) -> None:
    """Issue 10 item 4, sender side: once the sender is exiting (its producers gone), a 503 burst
    shorter than close_timeout is retried with short backoff instead of spooled after
    max_attempts; the spool stays empty and every event arrives once."""
    f = _outage_at_exit(server, spool, close=False)
    FIGURES["503 2 s, producer gone"] = f
    assert f["spooled"] == 0, "an outage shorter than close_timeout left %d events in the spool" % f["spooled"]
    assert f["http_503"] >= 2  # it was retried through the outage
    assert_exactly_once(server, list(range(20000)))


def test_close_spends_its_budget_on_a_short_outage(server: FaultServer, spool: str) -> None:
    """Issue 10 item 4 as reported: close() (close_timeout 5 s) during a 2 s 503 burst left all
    20000 events in the spool. close()'s flush runs while the producer still owns its segment,
    so the sender still spools after max_attempts (and close() returns early); but once the
    producer is gone the exiting sender replays its spool patiently up to its exit deadline:
    nothing is left in the spool, every event arrives once."""
    f = _outage_at_exit(server, spool, close=True)
    FIGURES["503 2 s, close()"] = f
    assert f["spooled"] == 0, "an outage shorter than close_timeout left %d events in the spool" % f["spooled"]
    assert_exactly_once(server, list(range(20000)))


def make_spool_file(
    spool: str,
    api_base: str,
    bucket_key: str,
    batches: List[List[Any]],
    access_key: str = ACCESS_KEY,
    torn: bool = False,
    seq: int = 1,
) -> str:
    """Write a spool file by hand in the documented format (meta.json + .jsonl, one array a line).

    Each batch is a list of values of key ``n``; ``torn`` cuts the last line in the middle.
    """
    fp = key_fingerprint(access_key)
    d = os.path.join(spool, stream_id(api_base, bucket_key, fp))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(
            {
                "api_base": api_base,
                "bucket_key": bucket_key,
                "bucket_name": bucket_key.upper(),
                "access_key_sha256_prefix": fp,
            },
            f,
        )
    path = os.path.join(d, "%017.6f-%d-%d.jsonl" % (1700000000 + seq, 1, seq))
    lines = [json.dumps([{"key": "n", "value": v, "epoch": 1700000000.5} for v in batch]) + "\n" for batch in batches]
    if torn:
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    with open(path, "w") as f:
        f.write("".join(lines))
    return path


def test_torn_last_spool_line_is_skipped(server: FaultServer, spool: str) -> None:
    """A spool file written by hand in the documented format, last line cut: the rest replays once."""
    path = make_spool_file(
        spool, server.url, "bk-torn", [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))], torn=True
    )
    s = Streamer("x", "bk-live", ACCESS_KEY, api_base=server.url, spool_dir=spool, **FAST)
    try:
        assert server.wait_events(20)
        st = wait_stat(s, "replayed", 20)
        assert _wait(lambda: not os.path.exists(path), 10), "the replayed file was not removed"
        assert_exactly_once(server, list(range(20)))
        assert {e["bucket"] for e in server.events} == {"bk-torn"}
        reqs = server.log(None)
        first_event = min(i for i, r in enumerate(reqs) if r.path == EVENTS)
        assert any(r.path == BUCKETS and r.bucket == "bk-torn" for r in reqs[:first_event])
        assert st["replayed"] == 20
        record("torn spool line", st, server, 20)
    finally:
        s.close(2)


@pytest.mark.slow
def test_sender_exit_stops_replay_at_close_timeout(server: FaultServer, spool: str) -> None:
    """A big spool and a slow API: the sender stops replaying at close_timeout and exits; the rest
    stays spooled (resumed later from ``.pos``), nothing lost or sent twice."""
    path = make_spool_file(spool, server.url, "bk-old", [[i] for i in range(300)])
    server.slow(0.1)  # the whole spool would take 30 s
    s = Streamer("x", "bk-live", ACCESS_KEY, api_base=server.url, spool_dir=spool, **dict(FAST, close_timeout=1.0))
    pid = sender_pid(s)
    assert server.wait_for(lambda: len(server.values()) >= 3, 10)
    s.close()
    assert _wait(lambda: not pid_alive(pid), 15), "the exiting sender kept replaying past close_timeout"
    first = len(server.values())
    assert 0 < first < 300 and _wait(lambda: spool_events(spool) == 300 - first, 5)
    server.slow(0)
    s2 = Streamer("x", "bk-live", ACCESS_KEY, api_base=server.url, spool_dir=spool, **FAST)
    try:
        assert server.wait_events(300)
        assert _wait(lambda: not os.path.exists(path), 10)
        assert_exactly_once(server, list(range(300)))
    finally:
        s2.close(2)
    FIGURES["exit mid-replay"] = dict(
        logged=300,
        delivered=len(server.values()),
        spooled=300,
        replayed=300,
        rejected=0,
        duplicates=0,
        before_exit=first,
    )  # type: ignore


KILL_PRODUCER_SCRIPT = """
import sys, time
from isstreamer import Streamer
s = Streamer("kill", "bk-kill", %(key)r, api_base=%(url)r, spool_dir=%(spool)r,
             flush_interval=30, buffer_size=10**6, close_timeout=3)
for i in range(%(n)d):
    s.log("n", i)
print(s.sender_pid, s.ring_path, s.stats()["pending"], s.stats()["backend"], flush=True)
time.sleep(120)
"""


def test_sigkill_producer(server: FaultServer, spool: str, backend: str) -> None:
    """SIGKILL of the producer after logging: everything in the ring is delivered, the sender exits."""
    n = 60000  # more than a segment: the producer also had to wait for the sender
    p = run_script(KILL_PRODUCER_SCRIPT % dict(key=ACCESS_KEY, url=server.url, spool=spool, n=n))
    assert p.stdout is not None
    pid_s, ring_path, pending, used = p.stdout.readline().split()
    assert used == backend
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=10)
    assert p.returncode == -signal.SIGKILL
    sender = int(pid_s)
    assert server.wait_events(n)
    assert_exactly_once(server, list(range(n)))
    assert _wait(lambda: not pid_alive(sender), 15), "the sender outlived its producer"
    assert not os.path.exists(ring_path), "the ring file was left behind"
    assert _wait(lambda: spool_events(spool) == 0, 10)
    FIGURES["SIGKILL producer/" + backend] = dict(
        logged=n,
        delivered=len(server.values()),
        spooled=0,
        replayed=0,
        rejected=0,
        duplicates=0,
        pending_at_kill=int(pending),
    )  # type: ignore


def test_sigkill_sender_mid_batch(server: FaultServer, make_streamer: Callable[..., Streamer], backend: str) -> None:
    """SIGKILL of the sender while a batch is in flight: flush() starts a new one, nothing is lost.

    The in-flight batch was stored by the server before the kill and is sent again by the new
    sender from the ring: the only possible duplicates are that one batch.
    """
    s = make_streamer(server.url, max_batch_events=100, flush_interval=0.05)
    server.slow(1.0)
    for i in range(300):
        s.log("n", i)
    assert server.wait_for(lambda: server.arrived >= 1, 10)
    old = sender_pid(s)
    os.kill(old, signal.SIGKILL)
    assert _wait(lambda: not pid_alive(old), 10)
    server.slow(0)
    for i in range(300, 600):
        s.log("n", i)
    assert s.flush(20)
    new = sender_pid(s)
    assert new != old and pid_alive(new)
    got = Counter(server.values("n"))
    assert sorted(got) == list(range(600)), "events lost"
    dups = sorted(v for v, c in got.items() if c > 1)
    assert all(c == 2 for c in got.values() if c > 1)
    if dups:  # only the batch in flight at the kill may come twice
        batches = [set(range(a, a + 100)) for a in range(0, 300, 100)]
        assert any(set(dups) <= b for b in batches), dups
    st = s.stats()
    assert st["backend"] == backend
    assert st["sent"] >= 600  # counted by the sender that got the answers
    FIGURES["SIGKILL sender/" + backend] = dict(
        logged=600,
        delivered=sum(got.values()),
        spooled=st["spooled"],
        replayed=st["replayed"],
        rejected=0,
        duplicates=len(dups),
    )


def test_sender_memory_flat_during_outage(make_streamer: Callable[..., Streamer], spool: str) -> None:
    """200k events logged with the API down: they go to disk; the sender's RSS stays flat."""
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    s = make_streamer(url, max_attempts=1, buffer_size=1000, request_timeout=1.0)
    for i in range(20000):  # warm up: enter the outage, spool a first time
        s.log("n", i)
    assert s.flush(30)
    assert s.stats()["spooled"] == 20000
    pid = sender_pid(s)
    before = rss_kb(pid)
    for i in range(20000, 220000):
        s.log("n", i)
    assert s.flush(60)
    after = rss_kb(pid)
    st = s.stats()
    assert st["spooled"] == 220000 and st["dropped"] == {}
    assert spool_events(spool) == 220000
    assert after - before < 8 * 1024, "sender RSS grew from %d kB to %d kB" % (before, after)
    with FaultServer(port=port) as server:
        assert server.wait_events(220000, timeout=60)
        st = wait_stat(s, "replayed", 220000)
        assert_exactly_once(server, list(range(220000)))
        FIGURES["outage 220k (RSS)"] = dict(
            logged=220000,
            delivered=len(server.values()),
            spooled=st["spooled"],
            replayed=st["replayed"],
            rejected=0,
            duplicates=0,
            rss_before_kb=before,
            rss_after_kb=after,
        )  # type: ignore


SHORT_WRITE_SCRIPT = """
import itertools, json, resource, signal, sys
from isstreamer.sender.spool import ReplayFile, SpoolWriter, pending_files, streams
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
w = SpoolWriter(sys.argv[1], clock=itertools.count(0, 100).__next__)  # a clock past every error backoff
def write(i):
    body = json.dumps([{"key": "n", "value": "%d-%s" % (i, "x" * 2900)}]).encode()
    try:
        w.write("http://api", "bk", "b", "fp", body)
        return "ok"
    except OSError as exc:
        return "error"
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (10000, hard))  # room for 3 lines and part of a 4th
results = [write(i) for i in range(5)]
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
results.append(write(99))
w.close_all()
(m,) = streams(sys.argv[1])
values, torn = [], 0
for f in pending_files(m.path):
    rf = ReplayFile(f)
    values += [json.loads(body)[0]["value"].split("-")[0] for _, body in rf.lines()]
    torn += rf.torn
print(json.dumps({"results": results, "values": values, "torn": torn}))
"""


def test_spool_write_cut_short_leaves_whole_lines(tmp_path: Any) -> None:
    """A spool write cut short (file size limit, as on a full disk) fails and leaves no partial line."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", SHORT_WRITE_SCRIPT, str(tmp_path / "spool")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["results"] == ["ok", "ok", "ok", "error", "error", "ok"]
    assert out["values"] == ["0", "1", "2", "99"], "a batch reported as spooled is unreadable"
    assert out["torn"] == 0


# --------------------------------------------------------------------------- isstreamer replay


def run_replay(cwd: Any, *args: str, key: Optional[str] = ACCESS_KEY) -> subprocess.CompletedProcess:
    """``python -m isstreamer.cli replay ARGS`` in ``cwd`` (also HOME); ``key`` goes in the environment."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), HOME=str(cwd))
    env.pop("ISSTREAMER_ACCESS_KEY", None)
    if key is not None:
        env["ISSTREAMER_ACCESS_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "isstreamer.cli", "replay", "--no-progress", "--backoff-max", "0.2", *args],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_replay_cli(server: FaultServer, spool: str, tmp_path: Any) -> None:
    """Whole spool: 503s retried, 429 waited for, one poisoned event rejected, another key untouched."""
    mine_a = make_spool_file(spool, server.url, "bk-a", [list(range(0, 100)), list(range(100, 200))])
    mine_b = make_spool_file(spool, server.url, "bk-b", [list(range(200, 300)) + ["poison"]], seq=2)
    other = make_spool_file(spool, server.url, "bk-a", [["other"]], access_key="someone-else")
    server.fail_next(2, 503)
    server.rate_limit(retry_after=0.5, times=1)
    server.poison("poison")
    p = run_replay(tmp_path, spool)
    assert p.returncode == 0, p.stderr
    assert_exactly_once(server, list(range(300)))
    assert "3 batches, 300 events delivered, 1 rejected, 0 left" in p.stdout, p.stdout
    assert "2 files" in p.stdout
    assert [r["event"]["value"] for r in rejected(spool)] == ["poison"]
    assert not os.path.exists(mine_a) and not os.path.exists(mine_b)
    assert os.path.exists(other) and "another access key" in p.stderr
    assert server.statuses()[503] == 2
    assert {b["bucket"] for b in server.buckets} == {"bk-a", "bk-b"}
    assert set(server.access_keys) == {ACCESS_KEY}
    FIGURES["cli replay"] = dict(
        logged=301, delivered=len(server.values()), spooled=301, replayed=300, rejected=1, duplicates=0
    )


def test_replay_cli_one_file_other_api_base(server: FaultServer, spool: str, tmp_path: Any) -> None:
    """PATH = one .jsonl file; --api-base overrides the (dead) base recorded; key from isstreamer.ini."""
    dead = "http://127.0.0.1:%d" % free_port()
    first = make_spool_file(spool, dead, "bk-a", [list(range(0, 50))], seq=1)
    second = make_spool_file(spool, dead, "bk-a", [list(range(50, 100))], seq=2)
    p = run_replay(tmp_path, first, "--api-base", server.url, key=None)
    assert p.returncode == 2 and "no access key" in p.stderr, (p.stdout, p.stderr)
    (tmp_path / "isstreamer.ini").write_text("[isstreamer.client_config]\naccess_key = %s\n" % ACCESS_KEY)
    p = run_replay(tmp_path, first, "--api-base", server.url, key=None)
    assert p.returncode == 0, p.stderr
    assert_exactly_once(server, list(range(50)))
    assert not os.path.exists(first) and os.path.exists(second)
    assert "1 file, 1 batch, 50 events delivered, 0 rejected, 0 left" in p.stdout


def test_replay_cli_outage_and_401_keep_everything(server: FaultServer, spool: str, tmp_path: Any) -> None:
    """API down, then key refused: nothing sent twice, nothing removed, exit 1; then all goes once."""
    path = make_spool_file(spool, server.url, "bk-a", [list(range(0, 100)), list(range(100, 200))])
    dead = "http://127.0.0.1:%d" % free_port()
    p = run_replay(
        tmp_path,
        spool,
        "--api-base",
        dead,
        "--max-attempts",
        "2",
        "--access-key",
        ACCESS_KEY,
        key="wrong-key-overridden-by-the-option",
    )
    assert p.returncode == 1 and "0 events delivered, 0 rejected, 200 left" in p.stdout, (p.stdout, p.stderr)
    assert "2 failed requests in a row (last: ConnectionError" in p.stderr, p.stderr
    server.unauthorized(True)
    p = run_replay(tmp_path, spool)
    assert p.returncode == 1 and "200 left" in p.stdout and "HTTP 401" in p.stderr, (p.stdout, p.stderr)
    assert os.path.exists(path) and server.values() == []
    server.unauthorized(False)
    p = run_replay(tmp_path, spool)
    assert p.returncode == 0 and "200 events delivered" in p.stdout, (p.stdout, p.stderr)
    assert_exactly_once(server, list(range(200)))
    assert not os.path.exists(path)


def test_replay_cli_resumes_a_cut_split(server: FaultServer, spool: str, tmp_path: Any) -> None:
    """A 413 split whose second half fails for good: the first half is not sent again on the next run."""
    path = make_spool_file(spool, server.url, "bk-a", [list(range(0, 40)), list(range(40, 80))])
    server.max_body(1500)  # a 40-event line is ~2 kB: it is split in two
    server.fail_next(2, 503, after=2)  # the line (413), its first half (ok), then the second half fails
    p = run_replay(tmp_path, spool, "--max-attempts", "2")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "20 events delivered, 0 rejected, 60 left" in p.stdout, p.stdout
    assert sorted(server.values()) == list(range(20))
    p = run_replay(tmp_path, spool)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "60 events delivered, 0 rejected, 0 left" in p.stdout, p.stdout
    assert_exactly_once(server, list(range(80)))
    assert not os.path.exists(path)
