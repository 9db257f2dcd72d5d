"""The ring format: the C and pure-Python backends write and read the same bytes."""

from __future__ import annotations

import orjson
import pytest

from isstreamer.ring import layout as L
from isstreamer.sender.encoder import Encoder
from isstreamer.ring import Attachment, Segment, native_available, puts_for

pytestmark = pytest.mark.skipif(not native_available(), reason="needs the C extension to compare")

NAN = float("nan")
EVENTS = [("f", 21.5), ("i", -(2**63)), ("s", "h\u00e9\n\"x\""), ("t", True), ("b", False), ("big", "z" * 2000)]


def _write(ring: Segment, native: bool, seg: int, epoch: float = 1700000000.5) -> None:
    att = Attachment(ring, seg, 1)
    ring.native, saved = native, ring.native
    p = att.new_producer(0)
    ring.native = saved
    f64, i64, bl, st = puts_for(native)
    for k, v in EVENTS:
        kb = k.encode()
        if isinstance(v, bool):
            assert bl(p, kb, len(kb), v, epoch) == L.OK
        elif isinstance(v, int):
            assert i64(p, kb, len(kb), v, epoch) == L.OK
        elif isinstance(v, float):
            assert f64(p, kb, len(kb), v, epoch) == L.OK
        else:
            sb = v.encode()
            assert st(p, kb, len(kb), sb, len(sb), epoch) == L.OK


@pytest.mark.parametrize("writer", ["native", "python"])
@pytest.mark.parametrize("reader", ["native", "python"])
def test_backends_agree(tmp_path, writer, reader):
    ring = Segment.create(64 * 1024 * 2, 2, directory=str(tmp_path), native=True)
    _write(ring, writer == "native", 1)
    enc = Encoder(ring, 1 << 20, native=reader == "native")
    b = enc.next_batch(1, 0, 1000)
    assert b.nevents == len(EVENTS) and not b.corrupt
    got = orjson.loads(b.body)
    assert [(e["key"], e["value"]) for e in got] == EVENTS
    assert all(e["epoch"] == 1700000000.5 for e in got)
    assert b.end == ring.seg_field(1, L.S_HEAD)
    assert ring.seg_field(1, L.S_LOGGED) == len(EVENTS)


@pytest.mark.parametrize("native", [True, False])
def test_wraparound_with_records_of_every_size(tmp_path, native):
    """Records from 1 to 2000 characters wrap the segment many times; none is torn or lost."""
    ring = Segment.create(L.SEG_DATA_MIN, 1, directory=str(tmp_path), native=True)
    att = Attachment(ring, 0, 1)
    ring.native = native
    p = att.new_producer(0)
    _, _, _, put_str = puts_for(native)
    enc = Encoder(ring, 1 << 20, native=native)
    seen = []
    sizes = list(range(0, 2001, 7)) * 3
    i = 0
    while i < len(sizes):
        v = ("%d:" % i + "x" * sizes[i]).encode()
        rc = put_str(p, b"k", 1, v, len(v), 1700000000.0)
        if rc == L.FULL:  # drain, as the sender would
            tail = ring.seg_field(0, L.S_TAIL)
            b = enc.next_batch(0, tail, 1000)
            assert not b.corrupt
            seen += [e["value"] for e in orjson.loads(b.body)]
            ring.store(ring.seg_offset(0) + L.S_TAIL, b.end)
            continue
        assert rc == L.OK
        i += 1
    while ring.seg_field(0, L.S_TAIL) != ring.seg_field(0, L.S_HEAD):
        b = enc.next_batch(0, ring.seg_field(0, L.S_TAIL), 1000)
        seen += [e["value"] for e in orjson.loads(b.body)]
        ring.store(ring.seg_offset(0) + L.S_TAIL, b.end)
    assert seen == [("%d:" % i + "x" * n) for i, n in enumerate(sizes)]
    assert ring.seg_field(0, L.S_HEAD) > 3 * ring.seg_data_size  # it really wrapped


@pytest.mark.parametrize("native", [True, False])
def test_corrupt_record_skips_to_head_and_never_stalls(tmp_path, native):
    ring = Segment.create(L.SEG_DATA_MIN, 1, directory=str(tmp_path), native=True)
    _write(ring, True, 0)
    data = ring.seg_offset(0) + L.SEG_HDR_SIZE
    ring.mm[data : data + 4] = (999999).to_bytes(4, "little")  # size beyond the segment
    enc = Encoder(ring, 1 << 20, native=native)
    b = enc.next_batch(0, 0, 1000)
    assert b.corrupt and b.nevents == 0 and b.end == ring.seg_field(0, L.S_HEAD)
    assert b.body == b"[]"


def test_c_rejects_oversized_and_nonfinite(tmp_path):
    ring = Segment.create(L.SEG_DATA_MIN, 1, directory=str(tmp_path), native=True)
    p = Attachment(ring, 0, 1).new_producer(0)
    f64, _, _, st = puts_for(True)
    assert f64(p, b"k", 1, NAN, NAN) == L.EINVAL
    assert f64(p, b"k", 1, float("inf"), NAN) == L.EINVAL
    big = b"x" * (L.STR_MAX + 1)
    assert st(p, b"k", 1, big, len(big), NAN) == L.ETOOBIG
    assert f64(p, b"", 0, 1.0, NAN) == L.ETOOBIG
    assert ring.seg_field(0, L.S_HEAD) == 0
