"""Byte layout of the shared ring, mirrored from ``csrc/isstreamer.h``.

A test compares these numbers with the compiled C structs. Counter and drop-reason indices
name the 64-bit slots of the ring header that ``Streamer.stats()`` reports.
"""
from __future__ import annotations

MAGIC = 0x315347524E525349
LAYOUT_VERSION = 1

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
H_NBUCKETS_USED = 80
H_COUNTERS = 128
H_DROPS = 384

# segment header field offsets (relative to the segment)
S_STATE = 0
S_OWNER_PID = 8
S_OWNER_TOKEN = 16
S_LOCK = 24
S_HEAD = 64
S_LOGGED = 72
S_DROPS = 80
S_TAIL = 256
S_CONSUMED = 264

SEG_FREE = 0
SEG_OWNED = 1
SEG_RELEASED = 2

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
)
D = {name: i for i, name in enumerate(DROP_REASONS)}
assert len(DROP_REASONS) <= NDROPS and len(COUNTERS) <= NCOUNTERS


def layout_size(nsegs: int, seg_data_size: int, nbuckets: int) -> int:
    """Bytes needed for a ring with these dimensions."""
    return HDR_SIZE + nbuckets * BUCKET_SIZE + nsegs * (SEG_HDR_SIZE + seg_data_size)


def seg_offset(nbuckets: int, seg_data_size: int, index: int) -> int:
    """Byte offset of segment ``index``."""
    return HDR_SIZE + nbuckets * BUCKET_SIZE + index * (SEG_HDR_SIZE + seg_data_size)


def bucket_offset(index: int) -> int:
    """Byte offset of bucket slot ``index``."""
    return HDR_SIZE + index * BUCKET_SIZE
