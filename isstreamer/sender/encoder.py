"""Turns the records of a ring segment into JSON batches for the events API.

The C encoder (``iss_encode_batch``) is used when the extension is available; otherwise the
records are decoded with ``struct`` and serialised with orjson (or the stdlib ``json`` when
orjson is missing). Both produce strict JSON: ``[{"key":..,"value":..,"epoch":..}, ...]``, the
epoch as the shortest decimal that reads back as the float given (``repr``), byte for byte alike.
"""

from __future__ import annotations

import json
from typing import Any, Callable, List, Optional

from .. import lazy
from ..ring import Segment
from ..ring import layout as L
from ..ring import records
from ..record import record
from ..ring.backend import ffi as _ffi, lib as _lib


def _json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


_dumps_impl: Optional[Callable[[Any], bytes]] = None


def _dumps(obj: Any) -> bytes:
    """``orjson.dumps`` (the stdlib's json where orjson is missing), imported on first use: orjson
    imports dataclasses, uuid and more, ~10 ms of the sender's start-up that the C encoder's
    batches never need."""
    global _dumps_impl
    if _dumps_impl is None:
        try:
            _dumps_impl = lazy.load("orjson").dumps
        except ImportError:  # pragma: no cover - orjson is a dependency; this is the pure-Python path
            _dumps_impl = _json_dumps
    return _dumps_impl(obj)


# Bytes one event can take at most once escaped: the C encoder's bound.
WORST_EVENT = 96 + 6 * L.KEY_MAX + 6 * L.STR_MAX
MIN_BATCH_BYTES = WORST_EVENT + 2


@record()
class Batch:
    """One encoded batch taken from a segment, not yet released back to the ring."""

    body: bytes
    seg: int
    start: int
    end: int
    nevents: int
    bucket: int
    corrupt: bool
    skipped: int
    folded: int = 0  # records taken by a downsampling rule (isstreamer.aggregate), released with it


class Encoder:
    """Encodes batches from a ring, with the C encoder or the fallback."""

    def __init__(self, ring: Optional[Segment], max_batch_bytes: int, native: bool) -> None:
        self.ring = ring  # the default ring of next_batch()
        self.cap = max(int(max_batch_bytes), MIN_BATCH_BYTES)
        self.native = bool(native and _lib is not None and (ring is None or ring.ptr is not None))
        if self.native:
            assert _ffi is not None
            self._out = _ffi.new("char[]", self.cap)
            self._info = _ffi.new("iss_batch *")
        self._next: Callable[[Segment, int, int, int], Batch] = self._next_native if self.native else self._next_python

    def next_batch(self, seg: int, start: int, max_events: int, ring: Optional[Segment] = None) -> Batch:
        """The records of segment ``seg`` from byte ``start`` (at most ``max_events``), encoded."""
        r = ring if ring is not None else self.ring
        assert r is not None
        return self._next(r, seg, start, max_events)

    def _next_native(self, ring: Segment, seg: int, start: int, max_events: int) -> Batch:
        n = _lib.iss_encode_batch(ring.ptr, ring.size, seg, start, max_events, self._out, self.cap, self._info)
        if n < 0:
            raise ValueError("isstreamer: encoder refused segment %d (code %d)" % (seg, n))
        i = self._info
        return Batch(_ffi.buffer(self._out, n)[:], seg, start, i.end, i.nevents, i.bucket, bool(i.corrupt), i.skipped)

    def _next_python(self, ring: Segment, seg: int, start: int, max_events: int) -> Batch:
        return encode_batch(ring, seg, start, max_events, self.cap)


# a filter's verdict on one record (csrc/encode_filter.h): encode it, take it (consumed, not
# encoded), skip it (not consumed now), or stop the batch before it
ENCODE, TAKE, SKIP, STOP = 0, 1, 2, 3
Filter = Callable[[int, int, bytes, Any, float, int], int]  # (type, bucket, key, value, epoch, pos)


def encode_batch(
    ring: Segment, seg: int, start: int, max_events: int, cap: int, keep: Optional[Filter] = None
) -> Batch:
    """The Python twin of ``iss_encode_batch_filtered``: the records of segment ``seg`` from
    ``start`` (at most ``max_events``, one bucket, within ``cap`` bytes) as a JSON array; with
    ``keep``, each record is first put to it (see ENCODE / TAKE / SKIP / STOP)."""
    mm = ring.mm
    data = ring.seg_offset(seg) + L.SEG_HDR_SIZE
    ds = ring.seg_data_size
    if not 0 <= seg < ring.nsegs or data + ds > len(mm):
        # a header whose sizes do not fit the mapping: refused, as the C encoder does
        raise ValueError("isstreamer: encoder refused segment %d (code %d)" % (seg, L.EINVAL))
    head = ring.head(seg)
    if not records.start_ok(start, head, ds):
        return Batch(b"[]", seg, start, head, 0, 0, True, 0)
    parts: List[bytes] = []  # each event serialised on its own: the batch size is exact
    pos, used, skipped = start, 1, 0
    bucket = -1
    bad = False
    while pos < head and len(parts) < max_events:
        rec = records.read(mm, data, ds, pos, head)
        if rec is None:
            bad = True
            break
        size, rtype, rbucket, key, value, epoch = rec
        if rtype == L.T_PAD:
            pos += size
            continue
        if value is None:  # a non-finite float: skipped (counted by the sender)
            skipped += 1
            pos += size
            continue
        if keep is not None:
            verdict = keep(rtype, rbucket, key, value, epoch, pos)
            if verdict == STOP:
                break
            if verdict != ENCODE:
                pos += size
                continue
        if bucket >= 0 and rbucket != bucket:
            break
        if used + WORST_EVENT + 1 > cap:  # room for this event, a comma and "]"
            break
        if bucket < 0:
            bucket = rbucket
        part = records.event_json(_dumps, key.decode("utf-8", "replace"), value, epoch)
        parts.append(part)
        used += len(part) + 1
        pos += size
    if bad and not parts:
        # unreadable record: skip what is left of the segment (counted by the sender)
        return Batch(b"[]", seg, start, head, 0, 0, True, skipped)
    return Batch(b"[" + b",".join(parts) + b"]", seg, start, pos, len(parts), max(bucket, 0), False, skipped)
