"""Exact epochs (issue 10, item 7): the epoch is sent as the float given, as the shortest decimal
that reads back as exactly that float, and both encoders write the same bytes.

``time.time()`` = 1796396556.4154694 used to go out as 1796396556.41547 (C encoder) and
1796396556.415469 (fallback); ``floor(epoch*1e6+0.5)`` also mis-rounded ties.
"""

from __future__ import annotations

import math
import random
import struct
import time
from typing import Any, Iterator, List

import orjson
import pytest

from isstreamer.ring import layout as L
from isstreamer.sender.encoder import Encoder
from isstreamer.ring import Attachment, Segment, native_available, puts_for

try:
    from faultserver import FaultServer
except ImportError:  # tests/ made a package
    from .faultserver import FaultServer  # type: ignore[no-redef]


def _f(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def epochs() -> List[float]:
    """The issue's value, time.time() now and around it, ties, and positive floats of every size."""
    rnd = random.Random(20261204)
    now = time.time()
    vals = [
        1796396556.4154694,
        1700000000.0,
        1700000000.5,
        1700000000.0000005,
        1764270000.1234565,
        1764270000.1234575,
        0.1,
        1e-300,
        5e-324,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        1e16,
        1e11,
        99999999999.99998,
        1.0e-4,
        9.999999999999999e-5,
        now,
    ]
    vals += [now + rnd.uniform(-1e6, 1e6) for _ in range(3000)]  # time.time()-like
    vals += [_f(struct.unpack("<Q", struct.pack("<d", now))[0] + i) for i in range(-200, 200)]  # its neighbours
    vals += [rnd.uniform(1e9, 4e9) for _ in range(3000)]
    vals += [round(rnd.uniform(1e9, 2e9), 6) + 5e-7 for _ in range(500)]  # microsecond ties
    while len(vals) < 12000:
        v = _f(rnd.getrandbits(63))  # positive, every exponent
        if math.isfinite(v) and v > 0:
            vals.append(v)
    return vals


def _encode_all(tmp_path: Any, writer_native: bool, reader_native: bool, values: List[float]) -> List[bytes]:
    tmp_path.mkdir()
    ring = Segment.create(64 * 1024, 1, directory=str(tmp_path), native=True)
    try:
        att = Attachment(ring, 0, 1)
        ring.native = writer_native
        p = att.new_producer(0)
        put_f64 = puts_for(writer_native)[0]
        enc = Encoder(ring, 1 << 20, native=reader_native)
        bodies: List[bytes] = []

        def drain() -> None:
            while ring.seg_field(0, L.S_TAIL) != ring.seg_field(0, L.S_HEAD):
                b = enc.next_batch(0, ring.seg_field(0, L.S_TAIL), 1000)
                assert not b.corrupt
                bodies.append(b.body)
                ring.store(ring.seg_offset(0) + L.S_TAIL, b.end)

        i = 0
        while i < len(values):
            rc = put_f64(p, b"k", 1, float(i), values[i])
            if rc == L.FULL:
                drain()
                continue
            assert rc == L.OK
            i += 1
        drain()
        return bodies
    finally:
        ring.close()


@pytest.mark.skipif(not native_available(), reason="compares the C encoder with the fallback: needs the extension")
def test_both_encoders_write_the_same_exact_epochs(tmp_path: Any) -> None:
    values = epochs()
    native = _encode_all(tmp_path / "n", True, True, values)
    python = _encode_all(tmp_path / "p", True, False, values)
    assert b"".join(native) == b"".join(python), "the C encoder and the fallback disagree"
    events = [e for body in native for e in orjson.loads(body)]
    assert [e["value"] for e in events] == [float(i) for i in range(len(values))]
    got = [e["epoch"] for e in events]
    bad = [(v, g) for v, g in zip(values, got) if g != v]
    assert not bad, "%d epoch(s) changed, e.g. %r" % (len(bad), bad[:5])
    text = b"".join(native)
    assert b'"epoch":1796396556.4154694}' in text
    for v in values[:50]:
        assert (b'"epoch":%s}' % repr(v).encode()) in text  # the shortest round-trip text


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer().start()
    yield srv
    srv.stop()


def test_epochs_arrive_exactly(server: FaultServer, tmp_path: Any, backend: str) -> None:
    """End to end on each backend: what the API stores is the float each log() was given."""
    from isstreamer.streamer import Streamer

    rnd = random.Random(7)
    values = [1796396556.4154694] + [time.time() + rnd.uniform(-1e5, 1e5) for _ in range(1999)]
    s = Streamer(
        "epochs",
        "bk-epochs",
        "key",
        api_base=server.url,
        spool_dir=str(tmp_path / "spool"),
        flush_interval=0.05,
        close_timeout=3,
    )
    try:
        assert s.stats()["backend"] == backend
        for i, v in enumerate(values):
            s.log("n", i, epoch=v)
        assert s.flush(30)
    finally:
        s.close(5)
    got = {e["value"]: e["epoch"] for e in server.events}
    assert len(got) == len(values)
    bad = [(values[i], got[i]) for i in range(len(values)) if got[i] != values[i]]
    assert not bad, "%d epoch(s) changed on the %s backend, e.g. %r" % (len(bad), backend, bad[:5])
