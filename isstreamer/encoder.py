"""Turns the records of a ring segment into JSON batches for the events API.

The C encoder (``iss_encode_batch``) is used when the extension is available; otherwise the
records are decoded with ``struct`` and serialised with orjson (or the stdlib ``json`` when
orjson is missing). Both produce strict JSON: ``[{"key":..,"value":..,"epoch":..}, ...]``, the
epoch as the shortest decimal that reads back as the float given (``repr``), byte for byte alike.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from . import layout as L
from .ring import Ring, _ffi, _lib

try:
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover - orjson is a dependency; this is the pure-Python path

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


# Bytes one event can take at most once escaped: the C encoder's bound.
WORST_EVENT = 96 + 6 * L.KEY_MAX + 6 * L.STR_MAX
MIN_BATCH_BYTES = WORST_EVENT + 2

_REC = struct.Struct("=IBBHHHId")
_PADHDR = struct.Struct("=IB")
_Q = struct.Struct("=Q")
_F64 = struct.Struct("=d")
_I64 = struct.Struct("=q")


@dataclass
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

    def __init__(self, ring: Optional[Ring], max_batch_bytes: int, native: bool) -> None:
        self.ring = ring  # the default ring of next_batch()
        self.cap = max(int(max_batch_bytes), MIN_BATCH_BYTES)
        self.native = bool(native and _lib is not None and (ring is None or ring.ptr is not None))
        if self.native:
            assert _ffi is not None
            self._out = _ffi.new("char[]", self.cap)
            self._info = _ffi.new("iss_batch *")
        self._next: Callable[[Ring, int, int, int], Batch] = (
            self._next_native if self.native else self._next_python
        )

    def next_batch(self, seg: int, start: int, max_events: int, ring: Optional[Ring] = None) -> Batch:
        """The records of segment ``seg`` from byte ``start`` (at most ``max_events``), encoded."""
        r = ring if ring is not None else self.ring
        assert r is not None
        return self._next(r, seg, start, max_events)

    def _next_native(self, ring: Ring, seg: int, start: int, max_events: int) -> Batch:
        n = _lib.iss_encode_batch(ring.ptr, ring.size, seg, start, max_events,
                                  self._out, self.cap, self._info)
        if n < 0:
            raise ValueError("isstreamer: encoder refused segment %d (code %d)" % (seg, n))
        i = self._info
        return Batch(_ffi.buffer(self._out, n)[:], seg, start, i.end, i.nevents, i.bucket,
                     bool(i.corrupt), i.skipped)

    def _next_python(self, ring: Ring, seg: int, start: int, max_events: int) -> Batch:
        mm = ring.mm
        base = ring.seg_offset(seg)
        data = base + L.SEG_HDR_SIZE
        ds = ring.seg_data_size
        if not 0 <= seg < ring.nsegs or data + ds > len(mm):
            # a header whose sizes do not fit the mapping: refused, as the C encoder does
            raise ValueError("isstreamer: encoder refused segment %d (code %d)" % (seg, L.EINVAL))
        head = ring.load(base + L.S_HEAD)
        if start > head or head - start > ds or start % 8:
            return Batch(b"[]", seg, start, head, 0, 0, True, 0)
        parts: List[bytes] = []  # each event serialised on its own: the batch size is exact
        pos, used, skipped = start, 1, 0
        bucket = -1
        bad = False
        while pos < head and len(parts) < max_events:
            off = pos % ds
            contig = ds - off
            size, rtype = _PADHDR.unpack_from(mm, data + off)
            if rtype == L.T_PAD:
                if size != contig or pos + contig > head:
                    bad = True
                    break
                pos += contig
                continue
            if size < L.REC_HDR_SIZE or size % 8 or size > contig or size > L.REC_MAX or pos + size > head:
                bad = True
                break
            _, rtype, _, rbucket, klen, _, vlen, epoch = _REC.unpack_from(mm, data + off)
            numeric = rtype in (L.T_F64, L.T_I64)
            body = L.REC_HDR_SIZE + (8 if numeric else 0) + klen + vlen
            if (rtype < L.T_F64 or rtype > L.T_FALSE or klen == 0 or klen > L.KEY_MAX
                    or vlen > L.STR_MAX or body > size or (rtype != L.T_STR and vlen)):
                bad = True
                break
            if bucket >= 0 and rbucket != bucket:
                break
            if used + WORST_EVENT + 1 > self.cap:  # room for this event, a comma and "]"
                break
            p = data + off + L.REC_HDR_SIZE
            value: Any
            if rtype == L.T_F64:
                value = _F64.unpack_from(mm, p)[0]
                p += 8
                if not math.isfinite(value):
                    skipped += 1
                    pos += size
                    continue
            elif rtype == L.T_I64:
                value = _I64.unpack_from(mm, p)[0]
                p += 8
            key = bytes(mm[p: p + klen]).decode("utf-8", "replace")
            p += klen
            if rtype == L.T_STR:
                value = bytes(mm[p: p + vlen]).decode("utf-8", "replace")
            elif rtype == L.T_TRUE:
                value = True
            elif rtype == L.T_FALSE:
                value = False
            if bucket < 0:
                bucket = rbucket
            part = _dumps({"key": key, "value": value})
            if math.isfinite(epoch) and epoch > 0:
                # the float as given, shortest round-trip text: what the C encoder writes
                part = part[:-1] + b',"epoch":' + repr(epoch).encode("ascii") + b"}"
            parts.append(part)
            used += len(part) + 1
            pos += size
        if bad and not parts:
            # unreadable record: skip what is left of the segment (counted by the sender)
            return Batch(b"[]", seg, start, head, 0, 0, True, skipped)
        body = b"[" + b",".join(parts) + b"]"
        return Batch(body, seg, start, pos, len(parts), max(bucket, 0), False, skipped)
