"""The aggregation kernel: the C kernel (csrc/aggregate.c) and its Python twin fold the same ring
into the same events, to the last bit; a batch read again is not folded twice; windows close by
the clock in a running sender."""

from __future__ import annotations

import math
import random
from typing import Any, List

import orjson
import pytest

import isstreamer
from isstreamer import Deadband, OnChange, Window
from isstreamer.ring import layout as L
from isstreamer.sender.aggregate import MAX_TAKEN, NativeKernel, PyKernel, rule_args
from isstreamer.ring import Attachment, Segment, native_available, puts_for
from support import pid_gone, wait_until

needs_native = pytest.mark.skipif(not native_available(), reason="needs the C extension")
RULES = [
    ("w", Window(0.25, ("mean", "min", "max", "last", "first", "count", "sum"))),
    ("d", Deadband(absolute=0.3, heartbeat=2.0)),
    ("r", Deadband(relative=0.05)),
    ("c", OnChange(1.0)),
]


def _fill(ring: Segment, rng: random.Random, n: int) -> List[Any]:
    att = Attachment(ring, 0, 1)
    p = att.new_producer(0)
    f64, i64, bl, st = puts_for(True)
    logged = []
    for i in range(n):
        key = rng.choice(["w", "d", "r", "c", "plain", "w\u00e9\"x"])
        ep = 1.7e9 + i * 0.01 + rng.random() * 0.5  # out of order inside a window's reach
        kind = rng.randrange(6)
        kb = key.encode()
        if kind == 0:
            v: Any = rng.randrange(-50, 50)
            assert i64(p, kb, len(kb), v, ep) == L.OK
        elif kind == 1:
            v = rng.choice(["a", "b", "\u00e9"])
            sb = v.encode()
            assert st(p, kb, len(kb), sb, len(sb), ep) == L.OK
        elif kind == 2:
            v = rng.random() < 0.5
            assert bl(p, kb, len(kb), v, ep) == L.OK
        else:
            v = rng.choice([rng.gauss(0, 1), rng.gauss(1e6, 1e3), rng.uniform(-1e-9, 1e-9)])
            assert f64(p, kb, len(kb), v, ep) == L.OK
        logged.append((key, v, ep))
    return logged


def _run(kern: Any, ring: Segment, rules, reread: bool) -> List[Any]:
    """Drain the segment through the kernel like the sender does (binding keys on a miss);
    with ``reread``, every batch is read a second time before it moves on."""
    from isstreamer.rules import RuleSet, normalize_rules

    rs = RuleSet(normalize_rules(rules))
    for r in rs.rules:
        kern.add_rule(*rule_args(r))
    head = ring.head(0)
    pos, folded_to, passed = 0, 0, []
    while pos < head:
        b, taken, miss = kern.encode(ring, pos, 7, max(pos, folded_to), False, MAX_TAKEN, 1.0)
        folded_to = max(folded_to, b.end)
        if miss is not None:
            kern.bind(miss[0], miss[1], rs.lookup(miss[1].decode("utf-8", "replace")))
        if reread and b.end > pos and miss is None:
            again, taken2, _ = kern.encode(ring, pos, 7, folded_to, False, MAX_TAKEN, 1.0)
            assert (again.body, again.end, taken2) == (b.body, b.end, taken)
        passed += orjson.loads(b.body)
        pos = b.end
    kern.close(float("inf"))
    out = list(passed)
    for bucket in kern.buckets():
        while kern.pending(bucket):
            body, n = kern.take(bucket, 100)
            out += orjson.loads(body)
    return out


@needs_native
@pytest.mark.parametrize("seed", range(4))
def test_c_kernel_and_python_twin_emit_the_same_events(tmp_path, seed):
    ring = Segment.create(1 << 20, 1, directory=str(tmp_path), native=True)
    _fill(ring, random.Random(seed), 3000)
    c = _run(NativeKernel(1 << 16), ring, RULES, reread=seed % 2 == 1)
    py = _run(PyKernel(1 << 16), ring, RULES, reread=seed % 2 == 0)
    key = lambda e: (e["key"], e.get("epoch", 0), repr(e["value"]))  # noqa: E731
    assert sorted(c, key=key) == sorted(py, key=key)
    for a, b in zip(sorted(c, key=key), sorted(py, key=key)):
        assert type(a["value"]) is type(b["value"])
        if isinstance(a["value"], float):
            assert math.copysign(1, a["value"]) == math.copysign(1, b["value"])
    assert any(e["key"] == "w_count" for e in c) and any(e["key"] == "plain" for e in c)
    ring.close()


def test_windows_close_by_the_clock(collector, tmp_path, backend):
    """Live epochs (log() stamps them): windows whose end passed arrive while the Streamer is
    still open; at close() every event is in exactly one window, and each window is sent once
    (neither the sender's first, forced, turn nor close() splits one)."""
    s = isstreamer.Streamer(
        bucket_key="clock",
        access_key="k",
        api_base=collector.url,
        spool_dir=str(tmp_path / "spool"),
        flush_interval=0.2,
        rules={"t": Window(0.5, ("count",))},
    )
    n = 0
    while True:  # log until a window has arrived by the clock (no flush): no timing assertion
        for _ in range(50):
            s.log("t", 1.0)
            n += 1
        if collector.event_count("clock"):
            break
        assert n < 10_000_000
    pid = s.sender_pid
    s.close(60)
    assert wait_until(lambda: pid_gone(pid), 120)
    counts = [(e["epoch"], e["value"]) for e in collector.events("clock")]
    assert sum(v for _, v in counts) == n
    assert len({ep for ep, _ in counts}) == len(counts)  # no window split: each sent once
    assert all(ep * 2 == int(ep * 2) for ep, _ in counts)  # window ends: multiples of 0.5 s


def test_a_backlog_of_past_epochs_is_not_cut_into_pieces(collector, tmp_path, backend):
    """Epochs in the past (a buffered loop catching up): every window's end has passed while its
    events are still being folded. A window closes only once no event came for it for a moment,
    so each arrives whole (a producer stalled mid-window for longer than that would cut one: at
    most a couple are allowed for a loaded machine), and nothing is lost."""
    import collections
    import time as _time

    s = isstreamer.Streamer(
        bucket_key="backlog",
        access_key="k",
        api_base=collector.url,
        spool_dir=str(tmp_path / "spool"),
        flush_interval=0.2,
        rules={"b": Window(1.0, ("count",))},
    )
    t0 = float(int(_time.time()) - 300)
    n = 60000
    for i in range(n):
        s.log("b", 1.0, t0 + i * 0.004)  # 240 s of epochs, all in the past
    pid = s.sender_pid
    s.close(60)
    assert wait_until(lambda: pid_gone(pid), 120)
    got = collections.defaultdict(list)
    for e in collector.events("backlog"):
        got[e["epoch"]].append(e["value"])
    want = collections.Counter(math.floor((t0 + i * 0.004) / 1.0) + 1.0 for i in range(n))
    assert {ep: sum(v) for ep, v in got.items()} == dict(want)
    assert sum(len(v) - 1 for v in got.values()) <= 2, {ep: v for ep, v in got.items() if len(v) > 1}


@needs_native
def test_flush_done_is_where_the_c_header_has_it():
    from isstreamer import ring as R

    assert R.ffi.offsetof("iss_ring_hdr", "flush_done") == L.H_FLUSH_DONE
    assert L.H_FLUSH_DONE + 8 <= L.H_COUNTERS and "unfit" in L.COUNTERS and len(L.COUNTERS) <= L.NCOUNTERS
