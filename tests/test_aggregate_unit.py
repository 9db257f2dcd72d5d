"""The aggregator inside one process: a real segment (real file, real mapping) written by this
process, a fake sender (:class:`FakeHost`, the ``Host`` protocol) and a fake clock. When windows
close (by time, on a cut, at exit; never on a plain flush), that a backfill of one key holds back
no other key's window, and that what the kernel cannot send reaches stats() (the real-process,
real-collector cases are in tests/test_aggregate.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any, List

import orjson
import pytest

from isstreamer.ring import Attachment, Segment, layout as L, puts_for
from isstreamer.sender.aggregate import Aggregator
from isstreamer.sender.encoder import Batch

T = 4.0e9  # a multiple of every window length below


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeHost:
    """The sender, as the aggregator sees it: one segment, cut and exit switches, what it was
    given to deliver, the counters and drops it was told about, its reports."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.cut = 0
        self.exit = False
        self.sent: List[Any] = []
        self.counters: Counter = Counter()
        self.drops: Counter = Counter()
        self.reports: List[str] = []

    def segments(self) -> List[Segment]:
        return [self.seg]

    def cut_seq(self) -> int:
        return self.cut

    def exiting(self) -> bool:
        return self.exit

    def deliver(self, batch: Batch, force: bool) -> bool:
        self.sent += orjson.loads(batch.body)
        return True

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def count_drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] += n

    def report(self, message: str) -> None:
        self.reports.append(message)

    def held_backlog(self) -> int:
        return 0

    def windows(self) -> List[Any]:
        """(key, epoch, value) of what was delivered, in order."""
        return [(e["key"], e.get("epoch"), e["value"]) for e in self.sent]


class Rig:
    """A producer's segment, the aggregator of ``rules`` on it, a fake host and clocks."""

    def __init__(self, tmp_path: Any, native: bool, rules: List[Any], debug_level: int = 0) -> None:
        tmp_path.mkdir(mode=0o700)
        self.seg = Segment.create(1 << 22, 1, directory=str(tmp_path), native=native)
        self.p = Attachment(self.seg, 0, 1).new_producer(0)
        self.put_f64 = puts_for(native)[0]
        self.host = FakeHost(self.seg)
        self.wall = Clock(T)
        self.mono = Clock(1000.0)
        self.agg = Aggregator(
            self.host, rules, 1 << 20, 10000, 0.5, native, clock=self.mono, wall=self.wall, debug_level=debug_level
        )

    def log(self, key: str, values: List[float], epochs: List[float]) -> None:
        kb = key.encode()
        for v, ep in zip(values, epochs):
            assert self.put_f64(self.p, kb, len(kb), v, ep) == L.OK

    def at(self, wall: float) -> None:
        """Move both clocks to ``wall`` (the monotonic one by as much)."""
        self.mono.t += wall - self.wall.t
        self.wall.t = wall

    def turn(self, force: bool = False) -> None:
        """One sender turn: the aggregator's, then the segment drained (as Sender._pump does),
        then what the rules emitted handed over at once (not after flush_interval)."""
        self.agg.turn(force)
        seg = self.seg
        while seg.tail() != seg.head():
            b = self.agg.next_batch(seg, seg.tail(), 10000)
            assert self.agg.before_commit(0, force)
            if b.nevents:
                self.host.deliver(b, force)
            seg.release(0, b.start, b.end, seg.consumed() + b.nevents + b.skipped + b.folded)
        self.agg.deliver(0, True)

    def close(self) -> None:
        self.seg.close()


@pytest.fixture
def make_rig(tmp_path, backend):
    """``make_rig(rules, debug_level=0)``: a Rig on this test's backend."""
    made: List[Rig] = []

    def make(rules: List[Any], debug_level: int = 0) -> Rig:
        r = Rig(tmp_path / ("rig%d" % len(made)), backend == "native", rules, debug_level)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


COUNT = {"kind": "window", "seconds": 1.0, "stats": ["count"]}


def test_a_window_closes_when_due_a_flush_closes_none_a_cut_or_the_exit_closes_all(make_rig):
    r = make_rig([["v", COUNT]])
    r.at(T + 0.5)
    r.log("v", [1.0] * 10, [T + 0.04 * i for i in range(10)])
    r.turn(force=True)  # a flush: what waits is sent now, the window stays open
    r.log("v", [1.0] * 5, [T + 0.6 + 0.04 * i for i in range(5)])
    r.turn(force=True)
    assert r.host.sent == [] and r.agg.kernel.counts["open"] == 1
    r.at(T + 1.0 + Aggregator.GRACE - 0.01)
    r.turn()
    assert r.host.sent == []  # its end has passed, not its grace
    r.at(T + 1.0 + Aggregator.GRACE)
    r.turn()
    assert r.host.windows() == [("v_count", T + 1.0, 15)]  # whole
    r.log("v", [1.0] * 3, [T + 1.1, T + 1.2, T + 1.3])
    r.host.cut += 1  # flush(timeout): every open window now, once per request
    r.turn(force=True)
    r.log("v", [1.0] * 2, [T + 1.4, T + 1.5])
    r.turn(force=True)
    assert r.host.windows()[1:] == [("v_count", T + 2.0, 3)] and r.agg.kernel.counts["open"] == 1
    r.host.exit = True
    r.turn(force=True)
    assert r.host.windows()[2:] == [("v_count", T + 2.0, 2)]
    assert r.host.counters == {"folded": 20, "windows": 3, "aggregated": 3}


def test_a_backfill_holds_back_no_other_key_s_window(make_rig):
    """The live key's window is due at its end plus the grace; a day of history folded just
    before it is due at the time it was folded plus the grace: each goes at its own time."""
    r = make_rig([["live", COUNT], ["hist", {"kind": "window", "seconds": 1.0, "stats": ["mean", "count"]}]])
    r.at(T + 0.5)
    r.log("live", [1.0] * 50, [T + 0.01 * i for i in range(50)])
    r.turn()
    r.at(T + 1.1)
    n = 20000
    r.log("hist", [float(i % 60) for i in range(n)], [T - 86400.0 + i + 0.5 for i in range(n)])
    r.turn()
    assert r.agg.kernel.counts["open"] == n + 1
    r.at(T + 1.0 + Aggregator.GRACE)
    r.turn()
    assert r.host.windows() == [("live_count", T + 1.0, 50)]
    r.at(T + 1.1 + Aggregator.GRACE)
    r.turn()
    hist = r.host.windows()[1:]
    assert len(hist) == 2 * n and r.agg.kernel.counts["open"] == 0
    assert hist[:4] == [
        ("hist", T - 86399.0, 0.0),
        ("hist_count", T - 86399.0, 1),
        ("hist", T - 86398.0, 1.0),
        ("hist_count", T - 86398.0, 1),
    ]
    assert [ep for _, ep, _ in hist[::2]] == [T - 86399.0 + i for i in range(n)]  # in time order


@pytest.mark.parametrize("debug_level", [0, 2])
def test_what_cannot_be_sent_is_counted_as_dropped_and_reported_at_debug_level_2(make_rig, debug_level):
    r = make_rig([["*", {"kind": "window", "seconds": 1.0, "stats": ["mean", "sum"]}]], debug_level)
    r.at(T + 0.5)
    r.log("a", [1.5e308, 1.5e308], [T + 0.1, T + 0.2])
    r.log("b", [1e308, 1e308, -1e308], [T + 0.1, T + 0.2, T + 0.3])
    r.host.cut += 1
    r.turn(force=True)
    assert sorted(r.host.windows()) == [("a", T + 1.0, 1.5e308), ("b", T + 1.0, 1e308 / 3), ("b_sum", T + 1.0, 1e308)]
    assert r.host.drops == {"overflow": 1}
    if debug_level < 2:
        assert r.host.reports == []
    else:
        assert len(r.host.reports) == 1
        msg = r.host.reports[0]
        assert "a_sum" in msg and repr(T + 1.0) in msg and "stats()['dropped']['overflow']" in msg, msg
