"""The shared-memory ring: a table file and one segment file per producer process.

Layout and record format are defined in ``csrc/isstreamer.h`` (numbers in :mod:`.layout`); this
package is the only reader of those bytes. A Streamer's ring is

- a **table** file (:mod:`.table`): counters, the bucket table, the producers' registry (slots)
  and the non-secret settings an adopter of an orphaned ring needs;
- one **segment** file per producer process (:mod:`.segment`), created on demand
  (:mod:`.attachment`), so the number of producers has no fixed limit and one producer alone can
  use the whole ``ring_size``. Its pages are reserved (``fallocate``) by its producer ahead of
  the head, so a full file system is a counted drop, never a SIGBUS, and returned by the sender
  (``MADV_REMOVE``) once consumed, behind a commit journal that survives its death.

Ownership is what the kernel says (:mod:`.files`: record locks). Every file is created
``O_EXCL`` and opened ``O_NOFOLLOW``, then checked (a regular file of ours, mode 0600, and for
pickled handles the same inode). Mappings hold no file descriptor (:mod:`.mapping`); a
producer's segment is unmapped only after its guard is closed (no put of the process touches it
after that) and Python-side access goes through a gate (:mod:`.mapped`).

Two backends write the same bytes (:mod:`.backend`): the cffi extension and the pure-Python
twin (:mod:`.twin`).

Every module of this package imports what it needs at module level, never inside a function: a
fork child whose parent was importing a module in another thread at the fork would wait forever
on that module's import lock.
"""

from . import layout
from .attachment import RESERVE_CHUNK, Attachment
from .backend import (
    ENV_FORCE_FALLBACK,
    ENV_NO_EXTENSION,
    check_fallback_safe,
    fallback_reason,
    ffi,
    lib,
    native_available,
    use_native,
)
from .files import RingClosed, RingRefused, default_ring_dir, lock_held_elsewhere, open_private, segment_owner_alive
from .mapped import Mapped
from .segment import Segment
from .table import Table
from .twin import PyProducer, SegmentState, after_fork_in_child, after_fork_in_parent, before_fork, logs_for, puts_for

__all__ = [
    "Attachment",
    "ENV_FORCE_FALLBACK",
    "ENV_NO_EXTENSION",
    "Mapped",
    "PyProducer",
    "RESERVE_CHUNK",
    "RingClosed",
    "RingRefused",
    "Segment",
    "SegmentState",
    "Table",
    "after_fork_in_child",
    "after_fork_in_parent",
    "before_fork",
    "check_fallback_safe",
    "default_ring_dir",
    "fallback_reason",
    "ffi",
    "layout",
    "lib",
    "lock_held_elsewhere",
    "logs_for",
    "native_available",
    "open_private",
    "puts_for",
    "segment_owner_alive",
    "use_native",
]
