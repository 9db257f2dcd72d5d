"""The sender's draining, batching, retrying, spilling and commit recovery inside one process:
a real table and segment (real files, real mappings), a fake transport, a fake clock and a
producer that is this process (its liveness given) handed to
:class:`~isstreamer.sender.loop.Sender` (the real-process, real-server cases are in
tests/test_delivery.py, test_streamer.py and the others)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Union

import orjson
import pytest

from isstreamer.ring import Attachment, Table, layout as L, puts_for
from isstreamer.sender.loop import Sender
from isstreamer.sender.spool import pending_files, streams
from isstreamer.sender.transport import Answer
from isstreamer.settings import SenderSettings


class Clock:
    """Monotonic seconds that move when the test (or the sender's sleep) says so."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


Reply = Union[Answer, Callable[[], Answer]]


class FakeTransport:
    """What the delivery talks to: records every request, answers from a script (204 by default)."""

    api_base = "http://fake.invalid"

    def __init__(self) -> None:
        self.posts: List[Any] = []
        self.buckets: List[str] = []
        self.replies: List[Reply] = []

    def post_events(self, bucket_key: str, body: bytes, timeout: Optional[float] = None) -> Answer:
        self.posts.append(orjson.loads(body))
        if self.replies:
            r = self.replies.pop(0)
            return r() if callable(r) else r
        return Answer(204, {}, "")

    def create_bucket(self, bucket_key: str, bucket_name: str, timeout: Optional[float] = None) -> Answer:
        self.buckets.append(bucket_key)
        return Answer(201, {}, "")

    def close(self) -> None:
        pass

    def sent(self) -> List[Any]:
        return [ev["value"] for batch in self.posts for ev in batch]


class Rig:
    """A ring with one segment written by this process, and a sender on it."""

    def __init__(self, tmp_path, native: bool, **settings: Any) -> None:
        ring_dir = tmp_path / "rings"
        ring_dir.mkdir(mode=0o700, parents=True)
        self.table = Table.create(1 << 20, {"created": 0, "wake": "t"}, directory=str(ring_dir), native=native)
        self.bucket = self.table.add_bucket("bk", "Bucket")
        self.att = Attachment.create(self.table, 1 << 20, native)
        self.p = self.att.new_producer(self.bucket)
        self.put_f64 = puts_for(native)[0]
        self.clock = Clock()
        self.wall = Clock(1.7e9 + 0.5)  # the time of day (the windows of downsampling rules)
        self.transport = FakeTransport()
        self.spool_dir = str(tmp_path / "spool")
        s = dict(
            ring_path=self.table.path,
            api_base=FakeTransport.api_base,
            access_key="k",
            spool_dir=self.spool_dir,
            native=native,
            buffer_size=10,
            flush_interval=1.0,
        )
        s.update(settings)
        self.settings = SenderSettings(**s)
        self.native = native
        self.senders: List[Sender] = []
        self.sender = self.new_sender()
        self.n = 0

    def new_sender(self) -> Sender:
        """A sender on this ring (as a restarted sender process would be)."""
        s = Sender(
            self.settings,
            Table.open(self.table.path, native=self.native),
            self.transport,
            clock=self.clock,
            sleep=self.clock.sleep,
            owner_alive=lambda table, seg_id: True,
            wall=self.wall,
        )
        self.senders.append(s)
        return s

    def log(self, count: int) -> None:
        for _ in range(count):
            rc = self.put_f64(self.p, b"v", 1, float(self.n), 1.7e9)
            assert rc in (L.OK, L.WAKE, L.CHECK), rc
            self.n += 1

    def close(self) -> None:
        """Close the senders' wake-up sockets (the files are the test's tmp_path)."""
        for sender in self.senders:
            sender.bell.close()

    def spooled(self) -> List[Any]:
        out: List[Any] = []
        for m in streams(self.spool_dir):
            for path in pending_files(m.path):
                with open(path, "rb") as f:
                    out += [ev["value"] for line in f if line.strip() for ev in orjson.loads(line)]
        return out


@pytest.fixture
def make_rig(tmp_path, backend):
    """``make_rig(**settings)``: a Rig on this test's backend (its senders' sockets closed at teardown)."""
    made: List[Rig] = []

    def make(**settings: Any) -> Rig:
        r = Rig(tmp_path / ("rig%d" % len(made)), backend == "native", **settings)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_a_lone_event_waits_for_flush_interval_then_goes(make_rig):
    r = make_rig()
    r.sender.turn()  # a new sender's first turn sends whatever waits: nothing yet
    r.log(3)
    r.sender.turn()
    assert r.transport.posts == []  # fewer than buffer_size, and not yet flush_interval old
    r.clock.t += 1.01
    r.sender.turn()
    assert r.transport.sent() == [0.0, 1.0, 2.0] and r.transport.buckets == ["bk"]
    assert r.att.tail() == r.att.head()


def test_buffer_size_and_max_batch_events_cut_batches(make_rig):
    r = make_rig(max_batch_events=10)
    r.log(25)
    r.sender.turn()
    assert [len(b) for b in r.transport.posts] == [10, 10, 5]
    assert r.transport.sent() == [float(i) for i in range(25)]


def test_transient_failures_back_off_then_spool_after_max_attempts(make_rig):
    r = make_rig(max_attempts=3)
    r.transport.replies = [Answer(503, {}, "busy")] * 3
    r.log(12)
    for _ in range(3):
        r.sender.turn()
        r.clock.t += 31.0  # past any backoff
    assert len(r.transport.posts) == 3  # three attempts at the same batch
    assert r.spooled() == [float(i) for i in range(12)]  # then spooled, released from the ring
    assert r.att.tail() == r.att.head() and r.sender.table.counter("spooled") == 12


def test_429_sends_nothing_before_retry_after(make_rig):
    r = make_rig()
    r.transport.replies = [Answer(429, {"Retry-After": "2"}, "")]
    r.log(10)
    r.sender.turn()
    assert len(r.transport.posts) == 1
    r.clock.t += 1.0
    r.sender.turn()
    assert len(r.transport.posts) == 1  # still inside Retry-After
    r.clock.t += 1.1
    r.sender.turn()
    assert len(r.transport.posts) == 2 and r.transport.sent()[10:] == [float(i) for i in range(10)]


def test_a_request_that_hangs_is_spilled_and_its_copy_removed_when_it_succeeds(make_rig):
    r = make_rig()
    r.log(10)

    def hang_then_succeed() -> Answer:
        r.clock.t += Sender.SPILL_AFTER + 0.1
        r.sender.while_request_out(r.clock.t - Sender.SPILL_AFTER - 0.1)  # the HTTP worker's waiter
        assert r.spooled() == [float(i) for i in range(10)]  # copied while out, released from the ring
        assert r.att.tail() == r.att.head()
        return Answer(204, {}, "")

    r.transport.replies = [hang_then_succeed]
    r.sender.turn()
    assert r.transport.sent() == [float(i) for i in range(10)]
    assert r.spooled() == []  # delivered after all: the copy is gone


@pytest.mark.parametrize("step", ["journal_end", "pages"])
def test_a_half_done_commit_is_finished_by_the_next_sender(make_rig, step):
    """The journal of issue 16 item 1, in one process: the commit of a batch stops after the
    journal (or after its pages are returned); a new Sender finishes it instead of reading the
    returned pages, and sends only what follows."""
    r = make_rig(max_batch_events=5000)
    r.log(6000)
    seg = r.att.ring
    tail, head = seg.tail(), seg.head()
    b = r.sender.encoder.next_batch(0, tail, 5000, ring=seg)
    assert b.nevents == 5000
    base = seg.seg_offset(0)
    seg.store(base + L.S_REL_CONSUMED, 5000)
    seg.store(base + L.S_REL_END, b.end)
    if step == "pages":
        seg.release_pages(0, b.start, b.end)
    again = r.new_sender()
    again.turn()
    assert r.transport.sent() == [float(i) for i in range(5000, 6000)]
    assert again.table.counter("recovered_commits") == 1 and seg.tail() == head
    assert seg.consumed() == 6000


def test_a_flush_closes_no_window_a_cut_closes_them_and_is_served_after(make_rig):
    """Issue 19: ``flush()`` (and a closing process) ask for what waits to be sent: the events of
    a ruled key are folded and its window stays open; ``flush(timeout)`` asks for a cut: every
    open window is closed and delivered before the sender says the flush is served."""
    r = make_rig(rules=[["v", {"kind": "window", "seconds": 1.0, "stats": ["count"]}]])
    table = r.sender.table
    r.log(5)
    seq = table.request_flush()
    r.sender.turn()
    assert r.transport.posts == [] and table.flush_done == seq and r.att.tail() == r.att.head()
    r.log(5)
    seq = table.request_cut()
    r.sender.turn()
    assert r.transport.posts == [[{"key": "v_count", "value": 10, "epoch": 1.7e9 + 1.0}]]
    assert table.flush_done == seq and table.counter("windows") == 1
    r.log(2)
    table.request_flush()
    r.sender.turn()
    assert len(r.transport.posts) == 1  # the cut was served once: the new window stays open
