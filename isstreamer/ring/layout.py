"""Byte layout of the shared ring, mirrored from ``csrc/isstreamer.h``.

A test compares these numbers with the compiled C structs. Counter and drop-reason indices
name the 64-bit slots of the ring header that ``Streamer.stats()`` reports.
"""

from __future__ import annotations

import struct
from typing import Any

MAGIC = 0x315347524E525349  # a ring-format file (a producer's segment file)
TABLE_MAGIC = 0x3142415452525349  # a Streamer's table file
LAYOUT_VERSION = 3

HDR_SIZE = 4096
BUCKET_SIZE = 2048
BUCKET_KEY_MAX = 1000
BUCKET_NAME_MAX = 1000
SEG_HDR_SIZE = 320
REC_HDR_SIZE = 24
KEY_MAX = 1024
STR_MAX = 8192
REC_MAX = REC_HDR_SIZE + 8 + KEY_MAX + STR_MAX
SEG_DATA_MIN = 4 * REC_MAX
NCOUNTERS = 32
NDROPS = 16

# ring header field offsets
H_MAGIC = 0
H_VERSION = 8
H_NSEGS = 16
H_SEG_DATA_SIZE = 20
H_NBUCKETS = 24
H_BUCKET_SIZE = 28
H_TOTAL_SIZE = 32
H_SENDER_PID = 40
H_FLUSH_SEQ = 64
H_FLUSH_DONE = 96  # table: the last flush_seq the sender fully served (flush() with downsampling rules waits for it)
H_CUT_SEQ = 104  # table: bumped by flush(timeout) with downsampling rules (every open window closes now)
H_NBUCKETS_USED = 80
H_NSLOTS_USED = 88
H_CLOSING = 48  # table: set by the sender when it removes the ring
H_SLEEPING = 56  # table: set by an idle sender before it blocks (producers then wake it)
H_CLOSE_BY = 72  # table: CLOCK_MONOTONIC ns until which a closing producer waits for delivery
H_META = 1024  # table: u32 length + JSON of the non-secret settings (orphan adoption)
META_MAX = HDR_SIZE - H_META - 4
H_COUNTERS = 128
H_DROPS = 384

# segment header field offsets (relative to the segment)
S_HEAD = 64
S_LOGGED = 72
S_DROPS = 80
S_RESERVED = 208  # producer: position up to which the data pages are allocated (no SIGBUS)
S_TAIL = 256
S_CONSUMED = 264
S_REL_END = 272  # the sender's commit journal (see csrc/isstreamer.h, iss_seg_hdr)
S_REL_CONSUMED = 280
S_LOST = 288  # records the sender found unreadable and skipped

# producer slots of the table file (after the bucket table)
SLOT_SIZE = 64
SL_STATE = 0
SL_SEG_ID = 8
SL_OWNER_PID = 16
SL_DATA_SIZE = 24
SLOT_FREE = 0
SLOT_OWNED = 1
SLOT_RELEASED = 2

# POSIX record locks: byte offsets locked in the table file (no data lives there) and in a
# segment file. The kernel drops them when their process dies; fork children do not inherit them.
LOCK_TABLE = 0  # short critical sections: bucket table, slot registry
LOCK_SENDER = 1  # held by the live sender for its whole life
LOCK_SPAWN = 2  # held by the process starting a sender
LOCK_OWNER = 0  # segment file: held by its producer process for its whole life

# record types
T_PAD = 1
T_F64 = 2
T_I64 = 3
T_STR = 4
T_TRUE = 5
T_FALSE = 6

# put() return codes
OK = 0
FULL = 1
ETOOBIG = -1
DROPPED = 2  # full (or no reserved pages), in a drop episode: already counted by the put
WAKE = 3  # published; the sender sleeps and should be woken
CHECK = 4  # published; time to check that the sender lives
RESERVE = 5  # not written: reserve the pages ahead of head first
CLOSED = 6  # not written: the segment is being released (close() raced this put)
EINVAL = -2

# header counters: index -> name (written by the sender)
COUNTERS = (
    "logged_reclaimed",  # records of segments already reclaimed
    "consumed_reclaimed",
    "sent",  # events accepted by the API (2xx)
    "batches",  # batches delivered
    "requests",  # HTTP requests made for events
    "retries",
    "failed_batches",
    "failed",  # events the sender could not deliver nor spool
    "spooled",
    "replayed",
    "rejected",  # events the API refused (400), written to the rejected file
    "buckets_created",
    "http_errors",
    "corrupt_records",
    "skipped_records",
    "folded",  # records folded by a downsampling rule (isstreamer.aggregate)
    "windows",  # windows closed and sent
    "aggregated",  # events the rules emitted (window statistics, deadband / change reports)
    "unfit",  # 1 once the stream was found not to fit max_events_per_second / monthly_budget / rate limit
    "fallback",  # 1 once the fallback rule applies to keys without a rule
    "space_short",  # times a producer found the ring directory full (no page to reserve): spool now
    "recovered_commits",  # commits a killed sender left half done, finished by its successor
)
C = {name: i for i, name in enumerate(COUNTERS)}

# drop reasons: index -> name (producer side, per segment; folded into the header on reclaim)
DROP_REASONS = (
    "ring_full",
    "closed",
    "no_segment",
    "none_value",
    "non_finite",
    "container_value",
    "unsupported_type",
    "empty_key",
    "invalid_input",
    "too_large",
    "spool_full",
    "no_space",  # the ring directory's file system is full: no page could be reserved (csrc: 11)
    "corrupt",  # records the sender found unreadable (counted with their number, never skipped silently)
    "overflow",  # window statistics not sent: not representable as a float (a sum beyond 1.8e308)
    "no_memory",  # events a downsampling rule emitted that the sender had no memory to keep
)
D = {name: i for i, name in enumerate(DROP_REASONS)}
assert len(DROP_REASONS) <= NDROPS and len(COUNTERS) <= NCOUNTERS and D["no_space"] == 11


# the header's first fields after the magic (H_VERSION .. H_TOTAL_SIZE): layout version, header
# size, segments (a table: slots), segment data size, buckets, bucket size, file size
_HEADER = struct.Struct("=IIIIIIQ")
assert H_VERSION + _HEADER.size == H_TOTAL_SIZE + 8 and H_NSEGS == H_VERSION + 8


def pack_header(buf: Any, count: int, seg_data_size: int, nbuckets: int, size: int) -> None:
    """Write the fixed header fields of a segment file (``count`` segments) or a table
    (``count`` slots) into ``buf``; the caller writes the magic last."""
    _HEADER.pack_into(buf, H_VERSION, LAYOUT_VERSION, HDR_SIZE, count, seg_data_size, nbuckets, BUCKET_SIZE, size)


def layout_size(nsegs: int, seg_data_size: int, nbuckets: int) -> int:
    """Bytes needed for a ring with these dimensions."""
    return HDR_SIZE + nbuckets * BUCKET_SIZE + nsegs * (SEG_HDR_SIZE + seg_data_size)


def seg_offset(nbuckets: int, seg_data_size: int, index: int) -> int:
    """Byte offset of segment ``index``."""
    return HDR_SIZE + nbuckets * BUCKET_SIZE + index * (SEG_HDR_SIZE + seg_data_size)


def slot_offset(nbuckets: int, index: int) -> int:
    """Byte offset of producer slot ``index`` in a table file."""
    return HDR_SIZE + nbuckets * BUCKET_SIZE + index * SLOT_SIZE


def table_size(nbuckets: int, nslots: int) -> int:
    """Bytes of a table file."""
    return HDR_SIZE + nbuckets * BUCKET_SIZE + nslots * SLOT_SIZE


def bucket_offset(index: int) -> int:
    """Byte offset of bucket slot ``index``."""
    return HDR_SIZE + index * BUCKET_SIZE
