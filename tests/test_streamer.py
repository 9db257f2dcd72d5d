"""The core: the drop-in API through the ring and the sender into a real local collector.

Every test runs twice: with the C extension and with the pure-Python fallback.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal

import pytest

from support import int_values_summary, pid_gone, run_script, script_env, wait_until, write_script

import isstreamer


@pytest.fixture
def make_streamer(backend, collector, tmp_path):
    """Streamer factory bound to the collector; every Streamer is closed at teardown."""
    made = []

    def make(**kw):
        kw.setdefault("access_key", "test-key")
        kw.setdefault("api_base", collector.url)
        kw.setdefault("spool_dir", str(tmp_path / "spool"))
        kw.setdefault("flush_interval", 0.2)
        s = isstreamer.Streamer(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close(timeout=10)


def test_backend_is_the_one_asked_for(make_streamer, backend):
    s = make_streamer(bucket_key="b")
    assert s.stats()["backend"] == backend


def test_readme_example_verbatim(tmp_path, collector, backend):
    """The seed README's example, unchanged, through the ISStreamer compatibility import."""
    path = write_script(
        tmp_path,
        "example.py",
        '''
        from ISStreamer.Streamer import Streamer
        # create or append to a Streamer instance
        streamer = Streamer(bucket_name="Some Bucket Name", bucket_key="bucket_key", access_key="YourAccessKey")
        # send some data
        streamer.log("test", "hi")
        streamer.log("temperature", 32)
        # flush data (force the buffer to empty and send)
        streamer.flush()
        # close the stream
        streamer.close()
    ''',
    )
    env = script_env(backend, ISSTREAMER_API_BASE=collector.url, ISSTREAMER_SPOOL_DIR=str(tmp_path / "spool"))
    r = run_script(path, env)
    assert r.returncode == 0, r.stderr
    events = collector.events("bucket_key")
    assert [(e["key"], e["value"]) for e in events] == [("test", "hi"), ("temperature", 32)]
    b = [b for b in collector.buckets() if b["key"] == "bucket_key"][0]
    assert b["name"] == "Some Bucket Name" and not b["auto_created"]
    assert "YourAccessKey" not in r.stdout + r.stderr


def test_values_keep_type_and_full_precision(make_streamer, collector):
    s = make_streamer(bucket_key="types")
    floats = [21.5, 0.1, 1 / 3, 1e-300, 123456789.12345679, -2.5e17, 5e-324, 1.7976931348623157e308, 3.0, -0.0]
    for i, f in enumerate(floats):
        s.log("f%d" % i, f)
    ints = [0, -1, 2**63 - 1, -(2**63), 42]
    for i, v in enumerate(ints):
        s.log("i%d" % i, v)
    strs = ["hi", "", "h\u00e9 \"quoted\" \\ back\nnew\ttab\x01", "\U0001f600 emoji", "x" * 2000]
    for i, v in enumerate(strs):
        s.log("s%d" % i, v)
    s.log("t", True)
    s.log("fa", False)
    assert s.flush(30)
    got = {e["key"]: e["value"] for e in collector.events("types")}
    for i, f in enumerate(floats):
        assert (
            type(got["f%d" % i]) is float
            and got["f%d" % i] == f
            and math.copysign(1, got["f%d" % i]) == math.copysign(1, f)
        )
    for i, v in enumerate(ints):
        assert type(got["i%d" % i]) is int and got["i%d" % i] == v
    for i, v in enumerate(strs):
        assert got["s%d" % i] == v
    assert got["t"] is True and got["fa"] is False
    assert s.stats()["rejected"] == 0


def test_epochs(make_streamer, collector):
    s = make_streamer(bucket_key="epochs")
    s.log("given", 1, epoch=1700000000.25)
    s.log("millis", 2, epoch=1700000000250)
    aware = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    s.log("datetime", 3, epoch=aware)
    before = time.time()
    s.log("bad", 4, epoch="yesterday")
    s.log("now", 5)
    assert s.flush(30)
    got = {e["key"]: e["epoch"] for e in collector.events("epochs")}
    assert got["given"] == 1700000000.25
    assert got["millis"] == 1700000000.25
    assert got["datetime"] == aware.timestamp()
    assert got["bad"] >= before - 1 and got["now"] >= before - 1
    conv = s.stats()["converted"]
    assert conv["epoch_ms"] == 1 and conv["epoch_invalid"] == 1


def test_log_object_rules(make_streamer, collector):
    s = make_streamer(bucket_key="objects")
    Point = collections.namedtuple("Point", "x y")

    @dataclasses.dataclass
    class Reading:
        temp: float
        ok: bool

    class Sensor:
        def __init__(self):
            self.level = 7
            self._hidden = 1

        @property
        def doubled(self):
            return self.level * 2

    s.log_object([1, 2])
    s.log_object((3,), key_prefix="tup")
    s.log_object({"a": 1, "b": {"c": "deep"}}, key_prefix="some_dict")
    s.log_object(collections.OrderedDict(z=9), key_prefix="")
    s.log_object(Point(1.5, 2.5))
    s.log_object(Reading(20.5, True), key_prefix="r")
    s.log_object(Sensor(), key_prefix="sensor", epoch=1700000000.0)
    assert s.flush(30)
    events = collector.events("objects")
    got = {e["key"]: e["value"] for e in events}
    assert got == {
        "list_0": 1,
        "list_1": 2,
        "tup_0": 3,
        "some_dict_a": 1,
        "some_dict_b_c": "deep",
        "z": 9,
        "Point_x": 1.5,
        "Point_y": 2.5,
        "r_temp": 20.5,
        "r_ok": True,
        "sensor_level": 7,
        "sensor_doubled": 14,
    }
    # one epoch per log_object call
    assert len({e["epoch"] for e in events if e["key"].startswith("some_dict")}) == 1
    assert {e["epoch"] for e in events if e["key"].startswith("sensor")} == {1700000000.0}


def test_set_bucket_routes_and_creates_first(make_streamer, collector):
    s = make_streamer(bucket_name="Starting Bucket", bucket_key="start")
    s.log("key1", "starting")
    s.set_bucket(bucket_name="New Bucket")
    new_key = s.BucketKey
    assert new_key != "start"
    s.log("key1", "starting")
    s.log("key2", 2)
    assert s.flush(30)
    assert [(e["key"], e["value"]) for e in collector.events("start")] == [("key1", "starting")]
    assert [(e["key"], e["value"]) for e in collector.events(new_key)] == [("key1", "starting"), ("key2", 2)]
    buckets = {b["key"]: b for b in collector.buckets()}
    assert buckets["start"]["name"] == "Starting Bucket" and not buckets["start"]["auto_created"]
    assert buckets[new_key]["name"] == "New Bucket" and not buckets[new_key]["auto_created"]


def test_bad_input_is_counted_and_skipped(make_streamer, collector):
    s = make_streamer(bucket_key="bad")
    s.log("none", None)
    s.log("nan", float("nan"))
    s.log("inf", float("-inf"))
    s.log("dict", {"a": 1})
    s.log("", 1)
    s.log(None, 1)
    s.log("big", 2**70)
    s.log("bytes", b"caf\xc3\xa9")
    s.log("long", "y" * 2500)
    s.log("surrogate", "a\ud800b")
    s.log("k" * 300, 1)
    s.log(17, "int key")
    s.log("dec", Decimal("2.5"))
    s.log("when", datetime.date(2024, 5, 6))
    s.log("good", 1)
    assert s.flush(30)
    got = {e["key"]: e["value"] for e in collector.events("bad")}
    assert got == {
        "big": str(2**70),
        "bytes": "caf\u00e9",
        "long": "y" * 2000,
        "surrogate": "a\ufffdb",
        "k" * 250: 1,
        "17": "int key",
        "dec": 2.5,
        "when": "2024-05-06",
        "good": 1,
    }
    st = s.stats()
    assert st["dropped"] == {"none_value": 1, "non_finite": 2, "container_value": 1, "empty_key": 2}
    assert st["converted"] == {
        "int_out_of_range": 1,
        "bytes_decoded": 1,
        "value_truncated": 1,
        "invalid_unicode": 1,
        "key_truncated": 1,
        "key_not_str": 1,
        "datetime_to_str": 1,
    }
    assert st["rejected"] == 0


@pytest.mark.parametrize(
    "value, exc",
    [
        (None, TypeError),
        (float("nan"), ValueError),
        ({"a": 1}, TypeError),
        (b"x", TypeError),
        (2**70, ValueError),
        ("z" * 2001, ValueError),
    ],
    ids=["none", "nan", "dict", "bytes", "bigint", "long-str"],
)
def test_bad_input_raises_at_debug_level_2(make_streamer, collector, value, exc, capsys):
    s = make_streamer(bucket_key="strict", debug_level=2)
    with pytest.raises(exc, match="isstreamer"):
        s.log("k", value)
    with pytest.raises((TypeError, ValueError)):
        s.log("", 1)
    s.log("neighbour", 1)
    assert s.flush(30)
    assert [(e["key"], e["value"]) for e in collector.events("strict")] == [("neighbour", 1)]


def test_debug_level_1_echoes_like_2_0_0_without_the_key(make_streamer, collector, capsys):
    s = make_streamer(bucket_key="echo", debug_level=1, access_key="sekret-key-123")
    s.log("temperature", 21.5, epoch=1700000000.5)
    s.flush(30)
    out = capsys.readouterr()
    expected = datetime.datetime.fromtimestamp(1700000000.5).strftime("%Y-%m-%d %H:%M:%S.%f")
    assert "%s: temperature 21.5" % expected in out.out
    assert "sekret-key-123" not in out.out + out.err


def test_log_after_close(make_streamer, collector):
    s = make_streamer(bucket_key="closed")
    s.log("a", 1)
    s.close()
    s.close()  # idempotent
    assert s.IsClosed
    s.log("b", 2)
    assert s.stats()["dropped"]["closed"] == 1
    strict = make_streamer(bucket_key="closed2", debug_level=2)
    strict.close()
    with pytest.raises(isstreamer.StreamerClosedError):
        strict.log("b", 2)
    assert [(e["key"], e["value"]) for e in collector.events("closed")] == [("a", 1)]


def test_context_manager_and_attributes(make_streamer, collector):
    with make_streamer(bucket_name="Ctx", bucket_key="ctx", buffer_size=3) as s:
        assert (s.BucketName, s.BucketKey, s.BufferSize, s.DebugLevel, s.Offline, s.IsClosed) == (
            "Ctx",
            "ctx",
            3,
            0,
            False,
            False,
        )
        assert s.AccessKey == "test-key"
        s.log("x", 1)
    assert s.IsClosed
    assert collector.event_count("ctx") == 1


def test_threads_share_one_streamer(make_streamer, collector):
    s = make_streamer(bucket_key="threads")
    n, per = 4, 5000

    def work(t):
        for i in range(per):
            s.log("t%d" % t, i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.flush(60)
    for t in range(n):
        count, distinct, lo, hi, _ = int_values_summary(collector.db_path, "threads", "t%d" % t)
        assert (count, distinct, lo, hi) == (per, per, 0, per - 1)


def test_pickle_gives_a_handle_on_the_same_ring(make_streamer, collector):
    s = make_streamer(bucket_key="pickled")
    s.log("from", "original")
    twin = pickle.loads(pickle.dumps(s))
    assert twin.BucketKey == "pickled" and twin.ring_path == s.ring_path
    twin.log("from", "twin")
    assert twin.flush(30) and s.flush(30)
    assert sorted(e["value"] for e in collector.events("pickled")) == ["original", "twin"]


def test_fork_child_gets_its_own_segment(make_streamer, collector):
    s = make_streamer(bucket_key="forked")
    s.log("who", "parent-before")
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            for i in range(1000):
                s.log("child", i)
            code = 0 if s.flush(30) else 2
        finally:
            os._exit(code)
    for i in range(1000):
        s.log("parent", i)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert s.flush(30)
    assert int_values_summary(collector.db_path, "forked", "child")[:2] == (1000, 1000)
    assert int_values_summary(collector.db_path, "forked", "parent")[:2] == (1000, 1000)


@pytest.mark.slow
def test_a_million_events_exactly_once(make_streamer, collector):
    s = make_streamer(bucket_key="million", buffer_size=1000)
    n = 1_000_000
    log = s.log
    for i in range(n):
        log("i", i)
    assert s.flush(300)
    st = s.stats()
    assert st["logged"] == n and st["sent"] == n and st["pending"] == 0 and not st["dropped"]
    count, distinct, lo, hi, total = int_values_summary(collector.db_path, "million")
    assert (count, distinct, lo, hi, total) == (n, n, 0, n - 1, n * (n - 1) // 2)


def test_full_ring_is_counted_never_silent(make_streamer, collector):
    """With the sender stopped (SIGSTOP), a full ring under on_full='drop' counts its drops."""
    s = make_streamer(bucket_key="full", ring_size=256 * 1024, on_full="drop")
    s.log("warmup", 0)
    assert s.flush(30)
    sender = s.sender_pid
    os.kill(sender, signal.SIGSTOP)
    try:
        n = 20000
        for i in range(n):
            s.log("i", i)
        dropped = s.stats()["dropped"].get("ring_full", 0)
        assert dropped > 0
    finally:
        os.kill(sender, signal.SIGCONT)
    assert s.flush(60)
    count, distinct, _, _, _ = int_values_summary(collector.db_path, "full", "i")
    assert count == distinct == n - dropped
    assert s.stats()["logged"] == n - dropped + 1


def test_offline_mode_writes_csv(backend, tmp_path):
    out = tmp_path / "offline.csv"
    s = isstreamer.Streamer(bucket_name="Off", access_key="k", offline=True, offline_file=str(out))
    s.log("temperature", 21.5, epoch=1700000000.5)
    s.log("door", "open")
    s.close()
    rows = out.read_text().splitlines()
    assert rows[0] == "1700000000.5,temperature,21.5"
    assert rows[1].split(",")[1:] == ["door", "open"]


# ---- processes --------------------------------------------------------------------------------

PRODUCER = '''
import os, sys, time
from isstreamer import Streamer
s = Streamer(bucket_name="Proc", bucket_key=sys.argv[1], access_key="k", flush_interval=0.2)
n = int(sys.argv[2])
for i in range(n):
    s.log("i", i)
print(s.sender_pid, s.ring_path, flush=True)
if sys.argv[3] == "hang":
    time.sleep(3600)
'''


def _spawn_producer(tmp_path, collector, backend, bucket, n, mode):
    path = write_script(tmp_path, "producer.py", PRODUCER)
    env = script_env(backend, ISSTREAMER_API_BASE=collector.url, ISSTREAMER_SPOOL_DIR=str(tmp_path / "spool"))
    return subprocess.Popen([sys.executable, path, bucket, str(n), mode], env=env, stdout=subprocess.PIPE, text=True)


def test_sigkill_of_the_producer_loses_nothing(tmp_path, collector, backend):
    n = 50000
    p = _spawn_producer(tmp_path, collector, backend, "killed", n, "hang")
    sender_pid, ring_path = p.stdout.readline().split()
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert wait_until(lambda: collector.event_count("killed") >= n, 120)
    assert int_values_summary(collector.db_path, "killed")[:2] == (n, n)
    assert wait_until(lambda: pid_gone(int(sender_pid)), 60), "the sender outlived its producer"
    assert not os.path.exists(ring_path)


def test_exit_without_close_delivers_everything(tmp_path, collector, backend):
    n = 20000
    p = _spawn_producer(tmp_path, collector, backend, "noclose", n, "exit")
    sender_pid, ring_path = p.stdout.readline().split()
    assert p.wait(120) == 0
    assert int_values_summary(collector.db_path, "noclose")[:2] == (n, n)
    assert wait_until(lambda: pid_gone(int(sender_pid)), 60)
    assert not os.path.exists(ring_path)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("churn", [False, True], ids=["steady", "maxtasksperchild1"])
def test_pools_deliver_every_event(make_streamer, collector, method, churn):
    import multiprocessing

    import poolworkers

    s = make_streamer(bucket_key="pool-%s-%s" % (method, churn))
    ctx = multiprocessing.get_context(method)
    tasks, per = 8, 2000
    with ctx.Pool(2, initializer=poolworkers.init, initargs=(s,), maxtasksperchild=1 if churn else None) as pool:
        results = pool.map(poolworkers.log_range, [(t, per) for t in range(tasks)])
    assert all(results)
    s.log("parent", 1)
    assert s.flush(60)
    bucket = "pool-%s-%s" % (method, churn)
    assert wait_until(lambda: collector.event_count(bucket) >= tasks * per + 1, 60)
    for t in range(tasks):
        assert int_values_summary(collector.db_path, bucket, "task%d" % t)[:2] == (per, per)
    # worker churn leaks no segment: the dead workers' segments come back
    assert wait_until(lambda: s.stats()["producers"] == 1, 30)


def test_works_from_stdin_script_with_threads_and_no_main_guard(collector, backend, tmp_path):
    """Like an interactive session or notebook: no __main__ file, threads already running."""
    code = (
        "import threading, time\n"
        "stop = threading.Event()\n"
        "t = threading.Thread(target=stop.wait, daemon=True); t.start()\n"
        "from isstreamer import Streamer\n"
        "s = Streamer(bucket_key='stdin', access_key='k')\n"
        "for i in range(100): s.log('i', i)\n"
        "print('flushed', s.flush(30))\n"
        "print('runs once')\n"
    )
    env = script_env(backend, ISSTREAMER_API_BASE=collector.url, ISSTREAMER_SPOOL_DIR=str(tmp_path / "spool"))
    r = subprocess.run([sys.executable, "-"], input=code, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("runs once") == 1 and "flushed True" in r.stdout
    assert int_values_summary(collector.db_path, "stdin")[:2] == (100, 100)


def test_use_async_false_flushes_every_buffer(make_streamer, collector):
    s = make_streamer(bucket_key="sync", use_async=False, buffer_size=5, flush_interval=60)
    for i in range(5):
        s.log("i", i)
    # the fifth log() flushed synchronously: all five are on the server without flush()
    assert collector.event_count("sync") == 5


def test_a_series_handle_logs_as_log_does(make_streamer, collector):
    """Issue 21: ``series(key).log(v)`` is ``log(key, v)``: every type, epochs, the fast path
    after the first event, out-of-range ints through the full path, a bad value counted."""
    s = make_streamer(bucket_key="series")
    t = s.series("temperature")
    assert t.key == "temperature" and repr(t) == "Series('temperature')"
    for v in (21.5, 22.0, 7, 2**63 - 1, 2**70, "warm", True):
        t.log(v)
    t.log(1.25, epoch=1700000000.5)
    t.log(None)  # not a loggable value: counted, the rest unharmed
    t.log(float("nan"))  # through the fast path: counted as log() counts it
    c = s.series("count")
    for i in range(1000):
        c.log(i)
    assert s.flush(30)
    got = [(e["key"], e["value"]) for e in collector.events("series") if e["key"] != "count"]
    assert got == [
        ("temperature", 21.5),
        ("temperature", 22.0),
        ("temperature", 7),
        ("temperature", 2**63 - 1),
        ("temperature", str(2**70)),
        ("temperature", "warm"),
        ("temperature", True),
        ("temperature", 1.25),
    ]
    assert [e["epoch"] for e in collector.events("series") if e["value"] == 1.25] == [1700000000.5]
    assert int_values_summary(collector.db_path, "series", "count")[:4] == (1000, 1000, 0, 999)
    assert sum(s.stats()["dropped"].values()) == 2
    s.close()
    t.log(1.5)  # after close: counted as log() counts it
    assert s.stats()["dropped"]["closed"] == 1


def test_a_series_handle_in_a_fork_child_and_through_pickle(make_streamer, collector):
    s = make_streamer(bucket_key="series-fork")
    t = s.series("v")
    t.log(0.5)  # the parent's fast path is armed before the fork
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            for i in range(500):
                t.log(float(i))
            code = 0 if s.flush(30) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    twin = pickle.loads(pickle.dumps(t))
    assert twin.key == "v"
    twin.log(-1.0)
    assert s.flush(30)
    values = sorted(e["value"] for e in collector.events("series-fork"))
    assert values == sorted([-1.0, 0.5] + [float(i) for i in range(500)])


def test_a_series_handle_echoes_at_debug_level_1(make_streamer, collector, capsys):
    s = make_streamer(bucket_key="series-echo", debug_level=1)
    t = s.series("temperature")
    t.log(21.5)
    t.log(22.5)
    assert s.flush(30)
    out = capsys.readouterr().out
    assert "temperature 21.5" in out and "temperature 22.5" in out


def test_log_object_of_a_flat_dict_keys_as_flatten_does(make_streamer, collector):
    """Issue 21: the flat-dict path of log_object (names kept between calls) sends exactly the
    keys flatten_object makes, for every prefix form and key type, hash-equal keys included."""
    from isstreamer.flatten import flatten_object

    s = make_streamer(bucket_key="flat")
    cases = [
        ({"temp": 21.5, "ok": True, "state": "idle", "rpm": 1200}, None),
        ({"temp": 22.5, "ok": False}, None),  # the same names again, from the kept ones
        ({1: 1.5, "1": 2.5}, ""),
        ({True: "t"}, "p"),  # hash-equal to 1: must not take 1's name
        ({1.0: 3}, 7),
        ({"x": 1, "nested": {"y": 2}}, "n"),  # not flat: the walk
    ]
    want = []
    for obj, prefix in cases:
        s.log_object(obj, key_prefix=prefix, epoch=1700000000.0)
        want += flatten_object(obj, prefix)
    assert s.flush(30)
    got = [(e["key"], e["value"]) for e in collector.events("flat")]
    assert got == want
    assert ("p_True", "t") in got and ("1", 1.5) in got and ("7_1.0", 3) in got
