"""Fuzz findings, replayed through cffi and the Python encoder (csrc/fuzz/, .ci/fuzz.sh).

Every input of ``csrc/fuzz/corpus/encode`` (seeds and ``regress-*`` crash files) is decoded as
fuzz_encode.c does and run through both encoders: the output must be strict JSON with exactly
``nevents`` events, ``end`` must stay in ``[from, head]`` and the encoder must make progress.
The ``put`` corpus is replayed through both producers. Under ``.ci/sanitize.sh`` these also run
with ASan, which turns the old out-of-bounds reads into failures.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any, List, Optional, Tuple

import orjson
import pytest

from isstreamer.ring import layout as L
from isstreamer.sender.encoder import MIN_BATCH_BYTES, Encoder
from isstreamer.ring import Attachment, Segment, ffi as _ffi, lib as _lib, native_available, puts_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "csrc", "fuzz", "corpus")
PREAMBLE = struct.Struct("<BQIHH5I")
OP = struct.Struct("<BBHHQHI")
U64 = 1 << 64

needs_native = pytest.mark.skipif(not native_available(), reason="needs the C extension")


def _files(target: str, hostile: Optional[bool] = None) -> List[str]:
    """Corpus files of a target; for ``encode``, only those with (or without) a hostile header."""
    d = os.path.join(CORPUS, target)
    out = []
    for f in sorted(os.listdir(d)):
        if f.startswith("."):
            continue
        with open(os.path.join(d, f), "rb") as fh:
            first = fh.read(1)
        if hostile is None or bool(first and first[0] & 1) == hostile:
            out.append(os.path.join(d, f))
    return out


def _preamble(data: bytes) -> Tuple[Tuple[int, ...], bytes]:
    """The 37-byte preamble (zero-extended) and the payload, as fuzz_encode.c reads them."""
    head = data[: PREAMBLE.size].ljust(PREAMBLE.size, b"\0")
    return PREAMBLE.unpack(head), data[PREAMBLE.size :]


def check_batch(body: bytes, nevents: int) -> List[Any]:
    """Strict JSON event array of exactly ``nevents`` events, as the events API takes it."""
    events = orjson.loads(body)  # orjson refuses NaN/Infinity, lone surrogates, bad UTF-8
    assert isinstance(events, list) and len(events) == nevents
    for ev in events:
        assert set(ev) in ({"key", "value"}, {"key", "value", "epoch"})
        assert isinstance(ev["key"], str) and ev["key"]
        assert isinstance(ev["value"], (str, bool, int, float))
        if isinstance(ev["value"], float):
            assert math.isfinite(ev["value"])
        if "epoch" in ev:
            assert isinstance(ev["epoch"], (int, float)) and math.isfinite(ev["epoch"])
    return events


def _normal_ring(tmp_path, fields: Tuple[int, ...], payload: bytes) -> Tuple[Segment, int, int]:
    """A 2-segment ring laid out like fuzz_encode.c's normal mode; returns (ring, from, head)."""
    flags, frm, delta = fields[0], fields[1], fields[2]
    ds = L.SEG_DATA_MIN + 8 * ((flags >> 1) & 7)
    ring = Segment.create(2 * ds, 2, nbuckets=1, directory=str(tmp_path), native=native_available())
    assert ring.seg_data_size == ds
    data = ring.seg_offset(1) + L.SEG_HDR_SIZE
    for k, byte in enumerate(payload[:ds]):
        ring.mm[data + (frm + k) % ds] = byte
    head = (frm + delta) % U64
    ring.store(ring.seg_offset(1) + L.S_HEAD, head)
    ring.store(ring.seg_offset(1) + L.S_TAIL, frm)
    return ring, frm, head


@pytest.mark.parametrize("path", _files("encode", hostile=False), ids=os.path.basename)
@pytest.mark.parametrize("backend", ["native", "python"])
def test_encode_corpus(tmp_path, path, backend):
    """Each kept input gives strict JSON and sane positions with both encoders."""
    if backend == "native" and not native_available():
        pytest.skip("needs the C extension")
    with open(path, "rb") as f:
        fields, payload = _preamble(f.read())
    ring, frm, head = _normal_ring(tmp_path, fields, payload)
    max_events, out_extra = fields[3], fields[4]
    try:
        enc = Encoder(ring, MIN_BATCH_BYTES + out_extra, native=backend == "native")
        b = enc.next_batch(1, frm, max_events)
        check_batch(b.body, b.nevents)
        assert len(b.body) <= enc.cap and b.nevents <= max_events
        if b.corrupt:
            assert b.end == head and b.nevents == 0
        else:
            assert frm <= b.end <= head and b.end % 8 == 0
            if frm < head and max_events > 0:
                assert b.end > frm, "the encoder made no progress"
    finally:
        ring.close()


def test_head_near_2_64_never_moves_end_backwards(tmp_path):
    """regress-head-near-2-64: a record ending past head (pos + size wrapped) is corrupt."""
    with open(os.path.join(CORPUS, "encode", "regress-head-near-2-64"), "rb") as f:
        fields, payload = _preamble(f.read())
    ring, frm, head = _normal_ring(tmp_path, fields, payload)
    try:
        for native in ([True] if native_available() else []) + [False]:
            b = Encoder(ring, MIN_BATCH_BYTES + fields[4], native=native).next_batch(1, frm, 1000)
            # the first record is good; the second runs past head: delivered alone, end stays put
            assert b.nevents == 1 and b.end == frm + 32 and not b.corrupt, native
    finally:
        ring.close()


def _hostile_buf(fields: Tuple[int, ...], payload: bytes) -> bytearray:
    """A mapping whose header claims fields' sizes, laid out like fuzz_encode.c's hostile mode
    (payload over everything after the header, head = from + delta where the segment would be)."""
    _, frm, delta, _, _, nsegs, sds, nbuckets, seg_index, map_sel = fields
    map_size = (L.HDR_SIZE + map_sel % 262144) & ~7
    buf = bytearray(map_size)
    for k in range(L.HDR_SIZE, map_size):
        buf[k] = payload[(k - L.HDR_SIZE) % len(payload)] if payload else 0
    struct.pack_into("=QIIIIIIQ", buf, 0, L.MAGIC, L.LAYOUT_VERSION, L.HDR_SIZE, nsegs, sds, nbuckets, L.BUCKET_SIZE, 0)
    seg_off = (L.HDR_SIZE + nbuckets * L.BUCKET_SIZE + seg_index * (L.SEG_HDR_SIZE + sds)) % U64
    if seg_off + L.SEG_HDR_SIZE <= map_size:
        struct.pack_into("=Q", buf, seg_off + L.S_HEAD, (frm + delta) % U64)
    return buf


def _hostile_file(tmp_path, fields: Tuple[int, ...], payload: bytes) -> Tuple[str, int]:
    """_hostile_buf written to a ring file; returns (path, segment index)."""
    path = str(tmp_path / "hostile.ring")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(_hostile_buf(fields, payload))
    return path, fields[8]


@pytest.mark.parametrize("backend", ["native", "python"])
def test_hostile_header_is_refused(tmp_path, backend):
    """regress-hostile-layout-wraps: sizes whose layout wraps 2^64 must not be read past the map.

    The C encoder used to trust the wrapped size and read ~4 KB past an 8 KiB mapping.
    """
    if backend == "native" and not native_available():
        pytest.skip("needs the C extension")
    with open(os.path.join(CORPUS, "encode", "regress-hostile-layout-wraps"), "rb") as f:
        fields, payload = _preamble(f.read())
    path, seg = _hostile_file(tmp_path, fields, payload)
    ring = Segment.open(path, native=backend == "native")
    try:
        with pytest.raises(ValueError, match="refused segment"):
            Encoder(ring, MIN_BATCH_BYTES, native=backend == "native").next_batch(seg, fields[1], 1000)
    finally:
        ring.close()


@needs_native
@pytest.mark.parametrize("path", _files("encode", hostile=True), ids=os.path.basename)
def test_hostile_corpus_through_cffi(path):
    """Hostile-header inputs straight through cffi on a heap buffer (ASan sees overreads)."""
    with open(path, "rb") as f:
        fields, payload = _preamble(f.read())
    _, frm, _, max_events, out_extra, _, _, _, seg_index, _ = fields
    buf = _hostile_buf(fields, payload)
    map_size = len(buf)
    cap = MIN_BATCH_BYTES + out_extra
    out = _ffi.new("char[]", cap)
    info = _ffi.new("iss_batch *")
    ptr = _ffi.cast("uint8_t *", _ffi.from_buffer(buf))
    rc = _lib.iss_encode_batch(ptr, map_size, seg_index, frm, max_events, out, cap, info)
    if rc != L.EINVAL:
        assert 2 <= rc <= cap
        check_batch(_ffi.buffer(out, rc)[:], info.nevents)


@pytest.mark.parametrize("backend", ["native", "python"])
def test_batch_never_exceeds_max_batch_bytes(tmp_path, backend):
    """Escaping can grow a string 6x: the Python encoder used to count raw bytes and sent
    batches of several MB for max_batch_bytes=200000 (the C encoder counts what it writes)."""
    if backend == "native" and not native_available():
        pytest.skip("needs the C extension")
    native = backend == "native"
    ring = Segment.create(1 << 22, 1, directory=str(tmp_path), native=native)
    try:
        p = Attachment(ring, 0, 1).new_producer(0)
        put_str = puts_for(native)[3]
        value = b"\x01" * 2000  # 12000 bytes once escaped
        for i in range(300):
            key = b"k%d" % i
            assert put_str(p, key, len(key), value, len(value), 1.7e9) == L.OK
        enc = Encoder(ring, 200_000, native=native)
        tail, seen = 0, 0
        while tail < ring.seg_field(0, L.S_HEAD):
            b = enc.next_batch(0, tail, 1000)
            assert len(b.body) <= 200_000
            seen += len(check_batch(b.body, b.nevents))
            tail = b.end
        assert seen == 300
    finally:
        ring.close()


# --------------------------------------------------------------------------- put corpus


def _expected_text(raw: bytes) -> str:
    """The encoder's policy for invalid UTF-8: well-formed sequences kept, U+FFFD per bad byte."""
    out, i = [], 0
    while i < len(raw):
        for n in (1, 2, 3, 4):
            try:
                out.append(raw[i : i + n].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            i += n
            break
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


@pytest.mark.parametrize("path", _files("put"), ids=os.path.basename)
@pytest.mark.parametrize("backend", ["native", "python"])
def test_put_corpus(tmp_path, path, backend):
    """fuzz_put.c's operations through a producer: every event comes back once, in order."""
    if backend == "native" and not native_available():
        pytest.skip("needs the C extension")
    native = backend == "native"
    with open(path, "rb") as f:
        data = f.read()
    ring = Segment.create(L.SEG_DATA_MIN, 1, nbuckets=4, directory=str(tmp_path), native=native)
    p = Attachment(ring, 0, 1).new_producer(0)
    f64, i64, boolean, string = puts_for(native)
    enc = Encoder(ring, MIN_BATCH_BYTES, native=native)
    want: List[Tuple[str, Any]] = []
    got: List[Tuple[str, Any]] = []

    def drain() -> None:
        while ring.seg_field(0, L.S_TAIL) < ring.seg_field(0, L.S_HEAD):
            b = enc.next_batch(0, ring.seg_field(0, L.S_TAIL), 1000)
            assert not b.corrupt
            got.extend((e["key"], e["value"]) for e in check_batch(b.body, b.nevents))
            ring.store(ring.seg_offset(0) + L.S_TAIL, b.end)

    def cyc(pos: int, n: int) -> bytes:
        return bytes(data[(pos + k) % len(data)] for k in range(n))

    try:
        for at in range(0, len(data), OP.size):
            op, aux, klen, slen, bits, _esel, pos = OP.unpack(data[at : at + OP.size].ljust(OP.size, b"\0"))
            kind, klen, slen = op % 8, klen % 1100, slen % 8400
            if kind == 4:
                p.bucket = aux % 4
                continue
            if kind == 5:
                continue
            key = cyc(pos, klen)
            if kind in (0, 6):
                v = struct.unpack("=d", struct.pack("=Q", bits))[0]
                if kind == 6:
                    v = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308][aux % 6]
                args, fn, value = (v,), f64, v
            elif kind == 1:
                v = struct.unpack("=q", struct.pack("=Q", bits))[0]
                args, fn, value = (v,), i64, v
            elif kind == 2:
                args, fn, value = (aux & 1,), boolean, bool(aux & 1)
            else:
                s = cyc(pos + klen, slen % 64 if kind == 3 else slen)
                args, fn, value = (s, len(s)), string, None
            call = lambda fn=fn, key=key, args=args: fn(p, key, len(key), *args, 1.7e9)  # noqa: E731
            if native and aux & 0x80 and 0 < len(key) <= L.KEY_MAX:
                key_id = _lib.iss_key_intern(key, len(key))  # the hot path's interned keys
                assert key_id >= 0 or key_id == L.EINVAL
                if key_id >= 0:
                    at = {
                        f64: _lib.iss_log_f64_at,
                        i64: _lib.iss_log_i64_at,
                        boolean: _lib.iss_log_bool_at,
                        string: _lib.iss_log_str_at,
                    }[fn]
                    call = lambda at=at, key_id=key_id, args=args: at(p, key_id, *args, 1.7e9)  # noqa: E731
            rc = call()
            if rc == L.FULL:
                drain()
                rc = call()
            if isinstance(value, float) and not math.isfinite(value):
                assert rc == L.EINVAL
            elif not 0 < len(key) <= L.KEY_MAX or (fn is string and len(args[0]) > L.STR_MAX):
                assert rc == L.ETOOBIG
            else:
                assert rc == L.OK
                want.append((_expected_text(key), _expected_text(args[0]) if fn is string else value))
        drain()
        assert len(got) == len(want)
        for (gk, gv), (wk, wv) in zip(got, want):
            assert gk == wk
            if isinstance(wv, float):
                assert struct.pack("=d", gv) == struct.pack("=d", wv)  # bit-exact, -0.0 too
            else:
                assert gv == wv and type(gv) is type(wv)
    finally:
        ring.close()


@pytest.mark.parametrize("backend", ["native", "python"])
def test_small_max_batch_bytes_still_delivers(tmp_path, collector, monkeypatch, backend):
    """Found by replaying the corpus: with a batch cap at the minimum the Python encoder took
    no event at all (it counted 2 bytes of brackets before the first event), so the sender
    spun on an empty batch forever and nothing was delivered."""
    import isstreamer

    if backend == "native" and not native_available():
        pytest.skip("needs the C extension")
    if backend == "python":
        monkeypatch.setenv("ISSTREAMER_NO_EXTENSION", "1")
    else:
        monkeypatch.delenv("ISSTREAMER_NO_EXTENSION", raising=False)
    s = isstreamer.Streamer(
        bucket_key="tiny-batches",
        access_key="k",
        api_base=collector.url,
        spool_dir=str(tmp_path / "spool"),
        max_batch_bytes=1,
        flush_interval=0.1,
    )
    try:
        for i in range(20):
            s.log("n", i)
        assert s.flush(timeout=60)
    finally:
        s.close(timeout=10)
    assert sorted(e["value"] for e in collector.events("tiny-batches")) == list(range(20))


@needs_native
def test_ring_check_refuses_a_layout_that_wraps():
    """The header of regress-hostile-layout-wraps claims 2^32-8 segments of 2^32-312 bytes:
    the product wraps to a few KB, which an 8 KiB mapping seems to hold."""
    buf = bytearray(8192)
    struct.pack_into(
        "=QIIIIIIQ", buf, 0, L.MAGIC, L.LAYOUT_VERSION, L.HDR_SIZE, 2**32 - 8, 2**32 - 312, 1, L.BUCKET_SIZE, 0
    )
    ptr = _ffi.cast("uint8_t *", _ffi.from_buffer(buf))
    p = _ffi.new("iss_producer *")
    assert _lib.iss_ring_check(ptr, len(buf)) == L.EINVAL
    assert _lib.iss_producer_attach(p, ptr, len(buf), 0) == L.EINVAL
