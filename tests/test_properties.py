"""Property tests: whatever is logged, the collector receives strict JSON it accepts, with every
event the value rules keep exactly once, as the rules say it should look.

The expected outcome is predicted in the test with ``isstreamer.values.coerce_*`` (non-strict)
and ``flatten_object``; the collector (a real local server) is the judge. Both backends, several
threads, and one test from two processes. Examples are bounded so the file runs in ~1 minute.
"""

from __future__ import annotations

import datetime as dt
import math
import multiprocessing
import os
import threading
import time
import uuid
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import isstreamer
from isstreamer.ring import layout as L
from isstreamer.flatten import flatten_object
from isstreamer.values import Skip, coerce_epoch, coerce_key, coerce_value

SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------------------ strategies

any_char = st.characters(exclude_categories=())  # surrogates and control characters included
text = st.text(any_char, max_size=12)
long_text = st.builds(lambda c, n: c * n, any_char, st.integers(1995, 2005))
keys = st.one_of(
    st.text(any_char, min_size=1, max_size=12),
    st.sampled_from(["", " ", "\t\n", "temp", "temp", "\ud800x", "caf\u00e9", "\x00\x1f"]),
    st.builds(lambda c, n: c * n, any_char, st.integers(248, 260)),  # around the 250-char limit
    st.integers(-5, 5),  # not a str: converted
)
ints = st.one_of(st.integers(), st.sampled_from([2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**1999, 10**2001]))
scalars = st.one_of(
    st.booleans(),
    ints,
    st.floats(),
    text,
    long_text,
    st.binary(max_size=12),
    st.none(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from([Decimal("1e400"), Decimal("-0.0")]),
    st.datetimes(timezones=st.sampled_from([None, dt.timezone.utc])),
    st.dates(),
    st.times(),
)
values = st.one_of(
    scalars,
    st.recursive(
        st.one_of(st.integers(-3, 3), text, st.none(), st.floats()),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=6,
    ),
)
epochs = st.one_of(
    st.none(),
    st.floats(),
    st.integers(-2, 2 * 10**18),
    st.sampled_from([1.7e9, 1.7e12, 1.7e15, 1.7e18, 1e21, 0.0, -1.0, 1e-7, 99999999999.0, 1700000000.1234567]),
    st.datetimes(min_value=dt.datetime(1971, 1, 1), timezones=st.sampled_from([None, dt.timezone.utc])),
    st.dates(min_value=dt.date(1971, 1, 1)),
)
calls = st.lists(st.tuples(keys, values, epochs), min_size=1, max_size=30)
objects = st.recursive(
    st.one_of(scalars, st.lists(scalars, max_size=3)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.one_of(text, st.integers(0, 9)), inner, max_size=4),
    max_leaves=12,
)
prefixes = st.one_of(st.none(), st.just(""), st.text(any_char, max_size=6))

# Every kind of input at least once, whatever the random examples are.
NASTY = [
    ("t", 21.5, None),
    ("t", -0.0, 1700000000.5),
    ("t", 5e-324, 1.7e12),
    ("t", 1.7976931348623157e308, 1.7e15),
    ("t", float("nan"), None),
    ("t", float("inf"), None),
    ("t", -float("inf"), 1.7e18),
    ("i", 2**63 - 1, None),
    ("i", -(2**63), None),
    ("i", 2**63, None),
    ("i", 10**2001, None),
    ("i", True, None),
    ("s", "h\u00e9 \"q\" \\ \n\t\x00\x1f\x7f \U0001f600", None),
    ("s", "lone \ud800 \udfff", None),
    ("s", "\ud83d\ude00 pair", None),
    ("s", "x" * 2001, None),
    ("s", "\U0001f600" * 2000, None),
    ("b", b"\xff\xfe bytes", None),
    ("n", None, None),
    ("c", [1, 2], None),
    ("c", {"a": 1}, None),
    ("d", Decimal("1.1"), None),
    ("d", Decimal("NaN"), None),
    ("d", Decimal("1e400"), None),
    ("dt", dt.datetime(2024, 1, 2, 3, 4, 5, 6), dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)),
    ("date", dt.date(2024, 1, 2), dt.date(2024, 1, 2)),
    ("time", dt.time(1, 2, 3), None),
    ("", 1, None),
    ("   ", 1, None),
    ("k" * 300, 1, None),
    ("\ud800", 1, None),
    (7, 1, None),
    ("e", 1, float("nan")),
    ("e", 1, -5),
    ("e", 1, 0),
    ("e", 1, 1e21),
    ("e", 1, "yesterday"),
    ("e", 1, True),
    ("e", 1, 99999999999.0),
    ("e", 1, 1e-7),
]

# ------------------------------------------------------------------------------ prediction


class Expected:
    """Events the rules keep, keyed by (key, canonical value); and the drops they predict."""

    def __init__(self) -> None:
        self.events: Dict[Tuple[str, str], List[Optional[float]]] = defaultdict(list)
        self.dropped: Counter = Counter()
        self.converted: Counter = Counter()

    def add(self, key: Any, value: Any, epoch: Any) -> None:
        """What log(key, value, epoch) should do, by the documented rules (non-strict)."""
        try:
            k, kr = coerce_key(key, False)
            v, vr = coerce_value(value, False, key=k)
            e, er = coerce_epoch(epoch, False, key=k)
        except Skip as skip:
            self.dropped[skip.reason if skip.reason in L.D else "invalid_input"] += 1
            return
        self.converted.update(r for r in (kr, vr, er) if r)
        self.events[(k, canon(v))].append(e)

    def merge(self, other: "Expected") -> None:
        """Add another prediction (another thread or process)."""
        for k, eps in other.events.items():
            self.events[k].extend(eps)
        self.dropped.update(other.dropped)
        self.converted.update(other.converted)


def canon(v: Any) -> str:
    """A type-exact text of a value: 1, 1.0, True and "1" differ; -0.0 differs from 0.0."""
    if isinstance(v, float):
        return "f:" + v.hex()
    return "%s:%r" % (type(v).__name__, v)


def check_received(collector: Any, bucket: str, want: Expected, t0: float, t1: float) -> None:
    """The collector holds exactly the predicted events: keys, values (type-exact), epochs."""
    got: Dict[Tuple[str, str], List[float]] = defaultdict(list)
    for e in collector.events(bucket):
        got[(e["key"], canon(e["value"]))].append(e["epoch"])
    assert set(got) == set(want.events), "missing: %r\nunexpected: %r" % (
        sorted(set(want.events) - set(got))[:5],
        sorted(set(got) - set(want.events))[:5],
    )
    for k, expected in want.events.items():
        received = sorted(got[k])
        assert len(received) == len(expected), (k, received, expected)
        for e in sorted((x for x in expected if x is not None), key=lambda x: -x):
            tol = 1e-6 + 4 * math.ulp(e)  # microsecond epochs on the wire
            match = [r for r in received if abs(r - e) <= tol]
            assert match, "epoch %r of %r not received (got %r)" % (e, k, received)
            received.remove(match[0])
        for r in received:  # events logged without an epoch are stamped "now"
            assert t0 - 1 <= r <= t1 + 1, (k, r)
    statuses = collector.status_counts()
    assert set(statuses) <= {200, 201, 204}, "the API refused something: %r" % statuses


def _streamer(collector: Any, tmp_path: Any, bucket: str) -> isstreamer.Streamer:
    return isstreamer.Streamer(
        bucket_key=bucket,
        access_key="prop-key",
        api_base=collector.url,
        spool_dir=str(tmp_path / "spool"),
        flush_interval=0.02,
    )


@pytest.fixture
def prop_collector(collector_factory) -> Any:
    """A collector that keeps old timestamps as sent (the rules allow any epoch after 1970)."""
    return collector_factory(ignore_old_timestamps=False)


def _finish(s: isstreamer.Streamer) -> Dict[str, Any]:
    assert s.flush(timeout=60), "events were not delivered in time"
    stats = s.stats()
    s.close(timeout=30)
    return stats


def _dropped(stats: Dict[str, Any]) -> Counter:
    return Counter({k: v for k, v in stats["dropped"].items() if v})


# ------------------------------------------------------------------------------ properties


@settings(max_examples=25, **SETTINGS)
@given(seq=calls)
@example(seq=NASTY)
@pytest.mark.slow
def test_log_sequences_single_thread(prop_collector, tmp_path, backend, seq):
    """log() of anything: what the rules keep arrives once, as the rules say; drops and
    conversions are counted by reason."""
    bucket = uuid.uuid4().hex
    want = Expected()
    s = _streamer(prop_collector, tmp_path, bucket)
    t0 = time.time()
    for key, value, epoch in seq:
        want.add(key, value, epoch)
        s.log(key, value, epoch)
    stats = _finish(s)
    check_received(prop_collector, bucket, want, t0, time.time())
    assert _dropped(stats) == +want.dropped
    assert Counter(stats["converted"]) == +want.converted
    assert stats["rejected"] == 0 and stats["sent"] == sum(len(v) for v in want.events.values())


@settings(max_examples=15, **SETTINGS)
@given(seqs=st.lists(calls, min_size=2, max_size=4))
@example(seqs=[NASTY, NASTY[::-1], NASTY[5:]])
@pytest.mark.slow
def test_log_sequences_from_threads(prop_collector, tmp_path, backend, seqs):
    """Several threads log into one Streamer at once: every kept event arrives exactly once."""
    bucket = uuid.uuid4().hex
    s = _streamer(prop_collector, tmp_path, bucket)
    wants = [Expected() for _ in seqs]
    for want, seq in zip(wants, seqs):
        for key, value, epoch in seq:
            want.add(key, value, epoch)
    barrier = threading.Barrier(len(seqs))
    errors: List[BaseException] = []

    def work(seq: List[Tuple[Any, Any, Any]]) -> None:
        try:
            barrier.wait()
            for key, value, epoch in seq:
                s.log(key, value, epoch)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t0 = time.time()
    threads = [threading.Thread(target=work, args=(seq,)) for seq in seqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    stats = _finish(s)
    want = Expected()
    for w in wants:
        want.merge(w)
    check_received(prop_collector, bucket, want, t0, time.time())
    assert _dropped(stats) == +want.dropped


@settings(max_examples=15, **SETTINGS)
@given(obj=objects, prefix=prefixes, epoch=epochs)
@example(
    obj={"a": [1, {"b": float("nan")}], "c": None, 3: [b"x", Decimal("2.5")], "": "\ud800"}, prefix=None, epoch=None
)
def test_log_object(prop_collector, tmp_path, backend, obj, prefix, epoch):
    """log_object(): each flattened leaf follows the value rules, all with the one epoch."""
    bucket = uuid.uuid4().hex
    want = Expected()
    s = _streamer(prop_collector, tmp_path, bucket)
    t0 = time.time()
    s.log_object(obj, key_prefix=prefix, epoch=epoch)
    for key, value in flatten_object(obj, prefix):
        want.add(key, value, epoch)
    stats = _finish(s)
    check_received(prop_collector, bucket, want, t0, time.time())
    assert _dropped(stats) == +want.dropped


def _child_logs(s: isstreamer.Streamer, seq: List[Tuple[Any, Any, Any]]) -> None:
    """Body of the forked child: log, deliver, close (its drops are counted where the parent's
    stats() sees them: see test_drops_of_a_child_before_it_attached_are_counted)."""
    for key, value, epoch in seq:
        s.log(key, value, epoch)
    ok = s.flush(timeout=60)
    s.close(timeout=30)
    os._exit(0 if ok else 3)


@settings(max_examples=6, **SETTINGS)
@given(parent_seq=calls, child_seq=calls)
@example(parent_seq=NASTY, child_seq=NASTY[::-1])
def test_log_sequences_from_two_processes(prop_collector, tmp_path, backend, parent_seq, child_seq):
    """A forked child and its parent log through one Streamer at once (the child claims its own
    ring segment): both processes' kept events arrive exactly once."""
    bucket = uuid.uuid4().hex
    s = _streamer(prop_collector, tmp_path, bucket)
    want = Expected()
    for key, value, epoch in parent_seq + child_seq:
        want.add(key, value, epoch)
    t0 = time.time()
    child = multiprocessing.get_context("fork").Process(target=_child_logs, args=(s, child_seq))
    child.start()
    for key, value, epoch in parent_seq:
        s.log(key, value, epoch)
    child.join(120)
    assert child.exitcode == 0
    stats = _finish(s)
    check_received(prop_collector, bucket, want, t0, time.time())
    assert _dropped(stats) == +want.dropped


def _child_drops_one(s: isstreamer.Streamer) -> None:
    s.log("", 1)  # dropped (empty key) before this process ever wrote to the ring
    s.close(timeout=30)
    os._exit(0)


def test_drops_of_a_child_before_it_attached_are_counted(prop_collector, tmp_path, backend):
    """stats() covers every process of a Streamer: a forked child's first, dropped event too."""
    s = _streamer(prop_collector, tmp_path, uuid.uuid4().hex)
    try:
        s.log("ok", 1)
        child = multiprocessing.get_context("fork").Process(target=_child_drops_one, args=(s,))
        child.start()
        child.join(120)
        assert child.exitcode == 0
        assert s.flush(timeout=60)
        assert s.stats()["dropped"].get("empty_key", 0) == 1
    finally:
        s.close(timeout=30)
