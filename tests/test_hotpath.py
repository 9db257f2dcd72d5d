"""The C hot path (csrc/py/hotpath.c, isstreamer.hotpath) against the Python path it stands for.

A native Streamer's ``log``, its series handles and log_object's flat dicts run in C; anything
uncommon is handed back to Python. Each test sends the same calls through the C path and
through the Python path (a subclass with a ``log()`` of its own has no C path) into a real
collector, and compares what arrived, what was counted and what was raised.
"""

from __future__ import annotations

import gc
import inspect
import math
import types
import weakref
from decimal import Decimal
from typing import Any, List, Tuple

import pytest

import isstreamer
from isstreamer import hotpath
from isstreamer.ring import native_available
from isstreamer.streamer import Streamer


class PythonPathStreamer(Streamer):
    """A subclass with a log() of its own: the Python path everywhere (log, series, log_object)."""

    def log(self, key: Any, value: Any, epoch: Any = None) -> None:
        return Streamer.log(self, key, value, epoch)


class FloatSub(float):
    pass


class IntSub(int):
    pass


NOW = object()  # an epoch the put took from the clock

# (args, kwargs) of log(): every type, each edge of the fast path's tests, wrong calls
CALLS: List[Tuple[tuple, dict]] = [
    (("f", 1.5), {}),
    (("i", 7), {}),
    (("imin", -(2**63)), {}),
    (("imax", 2**63 - 1), {}),
    (("big", 2**63), {}),
    (("b", True), {}),
    (("b", False), {}),
    (("s", "text"), {}),
    (("u", "\u00e9\u2713"), {}),
    (("sur", "a\ud800b"), {}),
    (("long", "x" * 2001), {}),
    (("edge", "y" * 2000), {}),
    (("nan", math.nan), {}),
    (("inf", math.inf), {}),
    (("fsub", FloatSub(2.5)), {}),
    (("isub", IntSub(3)), {}),
    (("none", None), {}),
    (("dec", Decimal("1.25")), {}),
    ((1, 2.0), {}),
    (("", 1.0), {}),
    (("k" * 300, 1.0), {}),
    (("ep", 1.0, 1700000000.5), {}),
    (("ep", 2.0, None), {}),
    (("epint", 1.0, 1700000000), {}),
    (("epneg", 1.0, -5.0), {}),
    (("epbig", 1.0, 1e12), {}),
    (("epstr", 1.0, "x"), {}),
    (("kw",), {"value": 2.0}),
    (("kw2", 3.0), {"epoch": 1700000001.0}),
    ((), {"key": "kw3", "value": 4}),
    (("only",), {}),
    (("a", 1, 2, 3), {}),
    (("a", 1), {"nope": 1}),
]


@pytest.fixture
def pair(collector, tmp_path, monkeypatch):
    """(the C path's Streamer, the Python path's Streamer), each in a bucket of its own."""
    if not native_available():
        pytest.fail("the C extension is not built (python isstreamer/_build_native.py)")
    monkeypatch.delenv("ISSTREAMER_NO_EXTENSION", raising=False)
    opts = dict(access_key="k", api_base=collector.url, spool_dir=str(tmp_path / "spool"), flush_interval=0.2)
    hot = isstreamer.Streamer(bucket_key="hot", **opts)
    ref = PythonPathStreamer(bucket_key="ref", **opts)
    yield hot, ref
    hot.close()
    ref.close()


def _outcome(fn, *a, **kw):
    try:
        fn(*a, **kw)
        return None
    except Exception as exc:  # noqa: BLE001 - compared between the paths
        return (type(exc), str(exc))


def _events(collector, bucket):
    out = []
    for e in collector.events(bucket):
        ep = e["epoch"] if e["epoch"] < 1.75e9 else NOW  # explicit epochs here are from 2023
        out.append((e["key"], repr(e["value"]), ep))
    return sorted(out, key=repr)


def _counts(s):
    st = s.stats()
    return st["logged"], st["dropped"], st["converted"]


def test_the_hot_path_is_c_where_the_extension_is(pair):
    hot, ref = pair
    assert isinstance(hot.__dict__["log"], types.BuiltinFunctionType)
    assert isinstance(hot.series("t").log, types.BuiltinFunctionType)
    assert "log" not in ref.__dict__ and ref.series("t").log.__class__ is types.FunctionType
    assert hotpath.module() is not None
    assert str(inspect.signature(hot.log)) == "(key, value, epoch=None)"
    assert str(inspect.signature(hot.series("t").log)) == "(value, epoch=None)"


def test_log_calls_arrive_count_and_raise_as_the_python_path(pair, collector):
    hot, ref = pair
    for _ in range(2):  # the second round finds every key interned: the C path's own puts
        for a, kw in CALLS:
            assert _outcome(hot.log, *a, **kw) == _outcome(Streamer.log, ref, *a, **kw), (a, kw)
    assert hot.flush(30) and ref.flush(30)
    assert _events(collector, "hot") == _events(collector, "ref")
    assert _counts(hot) == _counts(ref)
    assert _counts(hot)[0] > 40


def test_series_handles_arrive_count_and_raise_as_the_python_path(pair, collector):
    hot, ref = pair
    values = [1.5, 7, 2**63, -(2**63), True, "s", "a\ud800", None, math.nan, FloatSub(1.0), IntSub(2), Decimal(1)]
    for s in (hot, ref):
        t = s.series("t")
        for _ in range(2):
            for v in values:
                t.log(v)
            t.log(3.0, 1700000000.5)
            t.log(4.0, epoch=1700000000.25)
        assert _outcome(t.log) is not None and _outcome(t.log, 1.0, 2.0, 3.0) is not None
    assert _outcome(hot.series("t").log) == _outcome(ref.series("t").log)
    assert hot.flush(30) and ref.flush(30)
    assert _events(collector, "hot") == _events(collector, "ref")
    assert _counts(hot) == _counts(ref)


def test_log_object_arrives_and_counts_as_the_python_path(pair, collector):
    hot, ref = pair
    objs = [
        ({"temp": 21.5, "hum": 40, "ok": True, "label": "a"}, None),
        ({"temp": 22.5, "hum": 41, "ok": False, "label": "b"}, "sensor"),
        ({"temp": 1.0}, ""),
        ({1: 1.0, "x": 2.0}, "mixed"),  # a non-str key: the Python path
        ({"nested": {"a": 1}, "x": 2}, "nest"),  # not flat
        ({"bad": math.nan, "good": 1.0}, "bad"),
        ({"none": None, "v": 1}, "none"),
        ({"sub": FloatSub(1.0), "v": IntSub(2)}, "sub"),
        ({}, "empty"),
    ]
    for _ in range(2):
        for obj, prefix in objs:
            hot.log_object(obj, key_prefix=prefix, epoch=1700000000.0)
            ref.log_object(obj, key_prefix=prefix, epoch=1700000000.0)
        hot.log_object({"now": 1.0})
        ref.log_object({"now": 1.0})
    assert hot.flush(30) and ref.flush(30)
    assert _events(collector, "hot") == _events(collector, "ref")
    assert _counts(hot) == _counts(ref)


def test_the_c_path_steps_aside_for_debug_sync_and_closed(collector, tmp_path, capsys):
    opts = dict(access_key="k", api_base=collector.url, spool_dir=str(tmp_path / "spool"), flush_interval=0.2)
    echo = isstreamer.Streamer(bucket_key="echo", debug_level=1, **opts)
    sync = isstreamer.Streamer(bucket_key="sync", use_async=False, buffer_size=1, **opts)
    try:
        for s in (echo, sync):
            assert not isinstance(s.__dict__["log"], types.BuiltinFunctionType)
        t = echo.series("t")
        t.log(1.5)
        t.log(2.5)
        echo.log_object({"a": 3.5}, key_prefix="")
        out = capsys.readouterr().out
        assert "t 1.5" in out and "t 2.5" in out and "a 3.5" in out
        sync.series("t").log(1.0)  # use_async=False, buffer_size=1: delivered before it returns
        assert [e["value"] for e in collector.events("sync")] == [1.0]
    finally:
        echo.close()
        sync.close()
    log, t = echo.log, echo.series("t")
    log("x", 1.0)
    t.log(1.0)
    echo.log_object({"a": 1.0})
    assert echo.stats()["dropped"]["closed"] == 3


def test_a_log_kept_from_before_close_counts_as_closed(pair):
    hot, _ = pair
    log, t = hot.log, hot.series("t")
    log("x", 1.0)
    t.log(1.0)
    hot.close()
    log("x", 2.0)  # the C method kept from before close(): its producer is the closed one
    t.log(2.0)
    hot.log_object({"a": 1.0})
    assert hot.stats()["dropped"]["closed"] == 3


def test_streamers_and_their_handles_are_collected(collector, tmp_path):
    """The C objects take part in garbage collection: no Streamer is kept alive by its log()."""
    opts = dict(access_key="k", api_base=collector.url, spool_dir=str(tmp_path / "spool"), flush_interval=0.2)
    refs = []
    for i in range(20):
        s = isstreamer.Streamer(bucket_key="gc%d" % i, **opts)
        t = s.series("t")
        s.log("a", 1.0)
        t.log(2.0)
        s.close()
        refs.append(weakref.ref(s))
        del s, t
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_the_c_objects_cannot_be_made_directly():
    mod = hotpath.module()
    assert mod is not None
    with pytest.raises(TypeError):
        mod.Logger()
    with pytest.raises(TypeError):
        mod.Series()
    with pytest.raises(TypeError):
        mod.logger([], None, None, 1, 1)  # keys must be a dict


def test_many_threads_log_through_the_c_path(pair, collector):
    import threading

    hot, _ = pair
    n = 2000

    def work(i):
        t = hot.series("t%d" % i)
        for j in range(n):
            hot.log("k%d" % i, j)
            t.log(float(j))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert hot.flush(60)
    assert hot.stats()["logged"] == 4 * 2 * n and not hot.stats()["dropped"]
    assert len(collector.events("hot")) == 4 * 2 * n
