"""The one Python reader of ring records (the twin of the record walk in csrc/encode.c).

A record is ``iss_rec`` (csrc/isstreamer.h) followed by the 8 value bytes of a number, the key
and a string value, padded to 8 bytes; a PAD record fills the data area to its end before a
record that would not fit. :func:`read` decodes the record at one position and checks it the
way the C encoder does; the pure-Python encoder and the aggregation kernel's twin both walk a
segment with it, and the pure-Python producer writes with :data:`REC`.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Optional, Tuple

from . import layout as L

REC = struct.Struct("=IBBHHHId")  # size type flags bucket keylen reserved vallen epoch
PAD_HDR = struct.Struct("=IB")
F64 = struct.Struct("=d")
I64 = struct.Struct("=q")

# (size, type, bucket, key bytes, value, epoch); value is None for a non-finite float (skipped)
Record = Tuple[int, int, int, bytes, Any, float]


def start_ok(start: int, head: int, data_size: int) -> bool:
    """True when a walk may start at ``start`` (8-aligned, at most one lap behind ``head``)."""
    return start <= head and head - start <= data_size and start % 8 == 0


def read(mm: Any, data: int, data_size: int, pos: int, head: int) -> Optional[Record]:
    """The record at position ``pos`` of a segment whose data area starts at byte ``data`` of
    ``mm``, published up to ``head``; None when it is unreadable (sizes or type out of range, or
    past ``head``). A PAD record comes back as ``(size, T_PAD, 0, b"", None, 0.0)``."""
    off = pos % data_size
    contig = data_size - off
    size, rtype = PAD_HDR.unpack_from(mm, data + off)
    if rtype == L.T_PAD:
        if size != contig or contig > head - pos:
            return None
        return size, L.T_PAD, 0, b"", None, 0.0
    if size < L.REC_HDR_SIZE or size % 8 or size > contig or size > L.REC_MAX or size > head - pos:
        return None
    _, rtype, _, bucket, klen, _, vlen, epoch = REC.unpack_from(mm, data + off)
    numeric = rtype in (L.T_F64, L.T_I64)
    body = L.REC_HDR_SIZE + (8 if numeric else 0) + klen + vlen
    if (
        rtype < L.T_F64
        or rtype > L.T_FALSE
        or klen == 0
        or klen > L.KEY_MAX
        or vlen > L.STR_MAX
        or body > size
        or (rtype != L.T_STR and vlen)
    ):
        return None
    p = data + off + L.REC_HDR_SIZE
    value: Any
    if rtype == L.T_F64:
        value = F64.unpack_from(mm, p)[0]
        p += 8
        if not math.isfinite(value):
            value = None
    elif rtype == L.T_I64:
        value = I64.unpack_from(mm, p)[0]
        p += 8
    key = bytes(mm[p : p + klen])
    p += klen
    if rtype == L.T_STR:
        value = bytes(mm[p : p + vlen]).decode("utf-8", "replace")
    elif rtype == L.T_TRUE:
        value = True
    elif rtype == L.T_FALSE:
        value = False
    return size, rtype, bucket, key, value, epoch


def event_json(dumps: Any, key: str, value: Any, epoch: float) -> bytes:
    """One event as the C encoder writes it: ``{"key":..,"value":..[,"epoch":..]}``, the epoch
    as the shortest text that reads back as the float given (none unless finite and positive)."""
    part = dumps({"key": key, "value": value})
    if math.isfinite(epoch) and epoch > 0:
        part = part[:-1] + b',"epoch":' + repr(epoch).encode("ascii") + b"}"
    return part
