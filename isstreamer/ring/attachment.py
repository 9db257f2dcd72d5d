"""This process's segment of a ring (shared by every Streamer of the process on that ring):
created on first use, its pages reserved ahead of the head, its producer handles (C or the
Python twin), and its closing: the guard first, then the slot, then the mapping.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from typing import Any, List, Optional

from .. import ids
from . import layout as L
from . import mapping as M
from .backend import ffi as _ffi, lib as _lib
from .files import RingClosed, RingRefused, record_lock
from .segment import Segment
from .local import LocalTable
from .table import Table
from .twin import PyProducer, SegmentState


RESERVE_CHUNK = 256 * 1024  # bytes of a segment's pages reserved ahead of its head at a time
RESERVE_RETRY = 0.1  # seconds between reservation attempts while the file system is full
_GUARDS: List[Any] = []  # every iss_guard ever made: a stale handle in another thread may point at one


class Attachment:
    """This process's segment of a ring, shared by every Streamer object of the process.

    ``slot`` and ``seg_id`` name its registration in the table (None for a bare ring file). The
    guard (C: ``iss_guard``; fallback: ``state``) lets :meth:`close` wait out a put in progress
    and refuse the later ones, so the mapping can then be unmapped."""

    def __init__(
        self,
        ring: Segment,
        seg_index: int = 0,
        token: int = 0,
        slot: Optional[int] = None,
        table: Optional[Table] = None,
    ) -> None:
        self.ring = ring
        self.table = table  # whose ``sleeping`` flag the producers check after each put
        self.seg_index = seg_index
        self.seg_id = token
        self.slot = slot
        self.pid = os.getpid()
        self.refs = 0
        self.state = SegmentState()  # pure-Python producers' lock and re-entry guard
        self.guard: Any = None
        if ring.native:
            assert _ffi is not None
            self.guard = _ffi.new("iss_guard *")
            _GUARDS.append(self.guard)
        self._reserve_lock = threading.Lock()
        self.chunk = min(ring.seg_data_size, RESERVE_CHUNK)

    @classmethod
    def create(cls, table: Table, data_size: int, native: bool) -> "Attachment":
        """A new segment file for this process: created 0600 ``O_EXCL``, owner-locked, its first
        pages reserved, registered. ENOSPC (or any OSError) leaves nothing behind."""
        if data_size >= 1 << 32:
            data_size = (1 << 32) - 8
        seg_id = ids.random_id63()
        path = table.seg_path(seg_id)
        ring = Segment.create(data_size, 1, nbuckets=1, native=native, path=path)
        att = None
        try:
            if not record_lock(ring.fd, L.LOCK_OWNER, wait=False):
                raise RingRefused("isstreamer: refusing %s: locked by another process" % path)
            att = cls(ring, 0, seg_id, None, table)
            if not att.reserve():
                raise OSError(errno.ENOSPC, "no space to reserve the segment's first pages", path)
            att.slot = table.claim_slot(seg_id, ring.seg_data_size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            ring.close()
            raise
        return att

    @classmethod
    def create_local(cls, table: "LocalTable", data_size: int, native: bool) -> "Attachment":
        """(The thread mode) a new segment in this process's memory, registered in ``table``."""
        seg_id, ring = table.create_segment(min(data_size, (1 << 32) - 8))
        att = cls(ring, 0, seg_id, None, table)
        try:
            att.slot = table.claim_slot(seg_id, ring.seg_data_size)
        except BaseException:
            table.forget_segment(seg_id)
            ring.close()
            raise
        return att

    def new_producer(self, bucket: int, check_every: float = 0.0):  # -> cdata iss_producer * | PyProducer
        """A producer handle with its own current bucket on this segment; ``check_every``
        seconds: the put returns CHECK once per interval (the caller checks the sender lives).
        A registered segment file has its pages reserved ahead of the head (memory of this
        process, in the thread mode, needs none)."""
        reserve = self.slot is not None and self.ring.fd >= 0
        if self.ring.native:
            assert _ffi is not None and _lib is not None
            p = _ffi.new("iss_producer *")
            p.bucket = bucket
            with self.ring.live():
                rc = _lib.iss_producer_attach(p, self.ring.ptr, self.ring.size, self.seg_index)
            if rc != 0:
                raise ValueError("isstreamer: cannot attach to ring segment (code %d)" % rc)
            p.guard = self.guard
            p.reserve = 1 if reserve else 0
            p.check_every = int(check_every * 1e9)
            p.check_at = int((time.monotonic() + check_every) * 1e9)
            p.retry_ns = int(RESERVE_RETRY * 1e9)
            if self.table is not None and self.table.ptr is not None:
                p.wake = _ffi.cast("const uint64_t *", self.table.ptr + L.H_SLEEPING)
            return p
        pp = PyProducer(self.ring, self.seg_index, self.state, bucket)
        pp.reserve = reserve
        pp.check_every = check_every
        pp.check_at = time.monotonic() + check_every
        pp.retry_s = RESERVE_RETRY
        if self.table is not None:
            pp.wake_q = self.table.q
        return pp

    def reserve(self) -> Optional[bool]:
        """(Slow path, after a put returned RESERVE) allocate the segment's pages ahead of its
        head, up to RESERVE_CHUNK (never past ``tail + data size``), then publish ``reserved``.
        True when done (or nothing to do), False when the file system is full, None when another
        thread of this process is reserving right now (try again shortly).

        Only bytes no put writes before ``reserved`` moves past them are touched (their previous
        lap is consumed), and the sender returns only pages behind ``tail``: see
        ``Ring.release``."""
        if not self._reserve_lock.acquire(blocking=False):
            return None
        try:
            ring = self.ring
            base = ring.seg_offset(self.seg_index)
            ds = ring.seg_data_size
            with ring.live():
                tail = ring.load(base + L.S_TAIL)
                have = ring.load(base + L.S_RESERVED)
                target = min(tail + ds, max(have, ring.load(base + L.S_HEAD)) + self.chunk)
                if target <= have:
                    return True
                data = base + L.SEG_HDR_SIZE
                at, n = have % ds, target - have
                first = min(n, ds - at)
                try:
                    M.reserve(ring.fd, data + at, first)
                    if n > first:
                        M.reserve(ring.fd, data, n - first)
                except OSError:
                    return False
                ring.store(base + L.S_RESERVED, target)
            return True
        except RingClosed:
            return True  # closed meanwhile: the put that follows says so
        finally:
            self._reserve_lock.release()

    def count_drop(self, reason: int) -> None:
        """Count one refused event on this segment (reported by stats())."""
        if self.ring.native:
            self.ring.add(self.ring.seg_offset(self.seg_index) + L.S_DROPS + 8 * reason, 1)
        else:
            PyProducer(self.ring, self.seg_index, self.state).count_drop(reason)

    def head(self) -> int:
        """Bytes published on this segment so far."""
        return self.ring.seg_field(self.seg_index, L.S_HEAD)

    def tail(self) -> int:
        """Bytes the sender has finished with (delivered or handed to the failure path)."""
        return self.ring.seg_field(self.seg_index, L.S_TAIL)

    def lost(self) -> int:
        """Records of this segment the sender found unreadable (counted as dropped)."""
        return self.ring.lost(self.seg_index)

    def fill(self) -> float:
        """Fraction of the segment's data area holding events not yet consumed."""
        return (self.head() - self.tail()) / self.ring.seg_data_size

    def close(self, table: Optional[Table], unmap: bool = True) -> bool:
        """Close the guard (a put in progress finishes first, later ones get CLOSED and are
        counted by the caller), then hand the segment back to the sender (its slot marked
        released: it drains and removes it; no event can land after that), unmap it and close
        its file (dropping the owner lock). True when unmapped. ``unmap=False`` (the thread
        mode, whose sender reads this very memory): :meth:`unmap` once the sender is done.

        A signal handler that closes while its thread is inside a fallback put cannot wait for
        that put: the segment (and its table) are then left mapped, closed to every later put."""
        if self.guard is not None:
            _lib.iss_guard_close(self.guard)  # type: ignore[union-attr]
        st = self.state
        interrupted = st.interrupted()
        if interrupted:
            st.closed = True  # (read under the lock by the interrupted put's successors)
        else:
            st.run(setattr, st, "closed", True)
        if table is not None and self.slot is not None:
            with contextlib.suppress(RingClosed, OSError):
                table.release_slot(self.slot, self.seg_id)
        if interrupted or not unmap:
            self.ring.drop_fd()
            return False
        self.ring.close()
        return True

    def unmap(self) -> None:
        """Release the segment's memory (after :meth:`close` with ``unmap=False``)."""
        self.ring.close()

    def forget_after_fork(self) -> None:
        """(fork child) The parent's segment: never written here; unmap it and close the file
        (the owner lock is the parent's: a child never holds it, closing changes nothing)."""
        self.state = SegmentState()
        self.state.closed = True
        self.ring.reset_after_fork()
        self.ring.close()
