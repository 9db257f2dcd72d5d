"""A Streamer's table file: counters, the bucket table, the producers' registry (slots) and the
non-secret settings an adopter of an orphaned ring needs; its record locks (the table's short
critical sections, the live sender's, the starter's) and the sender's wake-up socket.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .. import ids, lazy, reentry, safefile
from . import layout as L
from . import mapping as M
from .backend import use_native
from .files import (
    RingClosed,
    RingRefused,
    default_ring_dir,
    lock_held_elsewhere,
    open_private,
    record_lock,
    record_unlock,
)
from .mapped import Mapped, create_file
from .segment import Segment, map_checked

_Q = struct.Struct("=Q")
_I = struct.Struct("=I")
_BUCKET_HDR = struct.Struct("=IHH")


class Table(Mapped):
    """A Streamer's table file: counters, buckets, the producers' registry and the settings an
    adopter needs (no secret). Its record locks: ``LOCK_TABLE`` for short critical sections,
    ``LOCK_SENDER`` held by the live sender, ``LOCK_SPAWN`` by a process starting one."""

    NSLOTS = 4096
    NBUCKETS = 1024

    def __init__(self, path: str, fd: int, mp: M.Mapping, native: bool) -> None:
        super().__init__(path, fd, mp, native)
        self.nslots = _I.unpack_from(self.mm, L.H_NSEGS)[0]
        self.seg_data_size = _I.unpack_from(self.mm, L.H_SEG_DATA_SIZE)[0]
        self.nbuckets = _I.unpack_from(self.mm, L.H_NBUCKETS)[0]
        if L.table_size(self.nbuckets, self.nslots) > self.size or self.nbuckets > 65535:
            raise RingRefused("isstreamer: refusing %s: inconsistent table header" % path)
        self.base = path[:-5] if path.endswith(".ring") else path
        token = self.meta().get("wake", "")
        # the idle sender's datagram socket: its name carries a random token recorded in the
        # (private) table, so no other user can take the name before the sender binds it
        self.wake_path = "%s.%s.wake" % (self.base, token) if token else self.base + ".wake"
        self._wake_sock: Any = None

    @classmethod
    def create(
        cls, seg_data_size: int, meta: Dict[str, Any], directory: Optional[str] = None, native: Optional[bool] = None
    ) -> "Table":
        """Create a new table file (0600, ``O_EXCL``, every page allocated first: a full file
        system raises ENOSPC, never a SIGBUS) in ``directory`` (default /dev/shm)."""
        native = use_native() if native is None else native
        if not L.SEG_DATA_MIN <= seg_data_size < 1 << 32:
            raise ValueError(
                "isstreamer: ring_size must be between %d and %d bytes, not %d"
                % (L.SEG_DATA_MIN, (1 << 32) - 8, seg_data_size)
            )
        blob = cls.meta_blob(meta)
        size = L.table_size(cls.NBUCKETS, cls.NSLOTS)
        path = os.path.join(directory or default_ring_dir(), "isstreamer-%d-%s.ring" % (os.getpid(), ids.token_hex(6)))
        fd = create_file(path, size, size)
        try:
            mp = M.Mapping(fd, size)
            cls.format(mp, seg_data_size, blob)
            return cls(path, fd, mp, native)
        except BaseException:
            safefile.discard(fd, path)
            raise

    @staticmethod
    def meta_blob(meta: Dict[str, Any]) -> bytes:
        """The settings as the table records them (ValueError when too long for the header)."""
        blob = json.dumps(meta, sort_keys=True).encode()
        if len(blob) > L.META_MAX:
            raise ValueError("isstreamer: settings too long to record in the ring")
        return blob

    @classmethod
    def format(cls, mp: M.Mapping, seg_data_size: int, blob: bytes) -> None:
        """Write a new table's header (the magic last) into zeroed memory ``mp``."""
        L.pack_header(mp.mm, cls.NSLOTS, seg_data_size // 8 * 8, cls.NBUCKETS, L.table_size(cls.NBUCKETS, cls.NSLOTS))
        struct.pack_into("=I", mp.mm, L.H_META, len(blob))
        mp.mm[L.H_META + 4 : L.H_META + 4 + len(blob)] = blob
        _Q.pack_into(mp.mm, L.H_MAGIC, L.TABLE_MAGIC)

    @classmethod
    def open(cls, path: str, native: Optional[bool] = None, identity: Optional[Tuple[int, int]] = None) -> "Table":
        """Map an existing table file of ours; RingClosed when gone, RingRefused when not ours."""
        native = use_native() if native is None else native
        fd = open_private(path)
        try:
            mp = map_checked(fd, path, L.TABLE_MAGIC, identity)
        except BaseException:
            os.close(fd)
            raise
        try:
            return cls(path, fd, mp, native)
        except BaseException:
            mp.close()
            os.close(fd)
            raise

    # ---- header ------------------------------------------------------------------------------
    def counter(self, name: str) -> int:
        """Value of a header counter (see layout.COUNTERS)."""
        return self.load(L.H_COUNTERS + 8 * L.C[name])

    def count(self, name: str, n: int = 1) -> None:
        """Add to a header counter."""
        if n:
            self.add(L.H_COUNTERS + 8 * L.C[name], n)

    def drops(self) -> List[int]:
        """Drops folded in from reclaimed segments (and drops counted on the ring), by reason."""
        return [self.load(L.H_DROPS + 8 * i) for i in range(len(L.DROP_REASONS))]

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Count events dropped where every stats() sees them (the sender's spool_full, a producer
        that got no segment)."""
        if n:
            self.add(L.H_DROPS + 8 * L.D[reason], n)

    # ---- scheduling words ------------------------------------------------------------------------
    @property
    def flush_seq(self) -> int:
        """Bumped by every flush() (and full-ring nudge): send partial batches now."""
        return self.load(L.H_FLUSH_SEQ)

    def request_flush(self, wake: bool = False) -> int:
        """Ask the sender to send what waits now, waking it if it sleeps (``wake``: in any case,
        for a caller that waits: a sender pausing between polls of a busy ring hears it too);
        returns the flush_seq of this request (the sender has served it once ``flush_done``
        reaches it)."""
        seq = self.add(L.H_FLUSH_SEQ, 1)
        if wake or self.load(L.H_SLEEPING):
            self.wake()
        return seq

    @property
    def cut_seq(self) -> int:
        """Bumped by every cut request (``flush(timeout)`` with downsampling rules)."""
        return self.load(L.H_CUT_SEQ)

    def request_cut(self) -> int:
        """Ask the sender to close every open window now and send what waits: the cut is counted
        before the flush is requested, so the sender that serves this flush has seen the cut.
        Returns the flush_seq of the request (see :meth:`request_flush`)."""
        self.add(L.H_CUT_SEQ, 1)
        return self.request_flush(wake=True)

    @property
    def flush_done(self) -> int:
        """The last flush_seq the sender fully served: with downsampling rules, flush() waits
        for it (its events may all be folded while their windows are still open)."""
        return self.load(L.H_FLUSH_DONE)

    def set_flush_done(self, seq: int) -> None:
        """(Sender) every event and window of flush request ``seq`` is out."""
        self.store(L.H_FLUSH_DONE, seq)

    def sleep_begin(self, seq: int) -> None:
        """(Sender) announce an idle sleep numbered ``seq`` (nonzero, new to each sleep), then a
        full barrier: the sender's re-check of the heads cannot be ordered before this store
        (Dekker with the producers' put: see csrc/ring.c)."""
        self.store(L.H_SLEEPING, seq)
        self.add(L.H_SLEEPING, 0)

    def sleep_end(self) -> None:
        """(Sender) awake again."""
        self.store(L.H_SLEEPING, 0)

    @property
    def close_by(self) -> float:
        """The latest CLOCK_MONOTONIC time (seconds) until which a closing producer waits."""
        return self.load(L.H_CLOSE_BY) / 1e9

    def extend_close_by(self, until: float) -> None:
        """(A closing producer) the sender should keep retrying, not spool, until ``until``."""
        ns = int(until * 1e9)
        if self.load(L.H_CLOSE_BY) < ns:
            self.store(L.H_CLOSE_BY, ns)

    @property
    def sender_pid(self) -> int:
        """Pid the live sender recorded (informational: liveness is its lock), 0 if none."""
        return self.load(L.H_SENDER_PID)

    def set_sender_pid(self, pid: int) -> None:
        """(Sender) record its pid (``0``: clear)."""
        self.store(L.H_SENDER_PID, pid)

    def mark_closing(self) -> None:
        """(Under :meth:`locked`) no producer may join any more: the ring's files are going."""
        self.store(L.H_CLOSING, 1)

    def meta(self) -> Dict[str, Any]:
        """The non-secret settings recorded at creation (for an adopter of an orphaned ring)."""
        with self.live():
            n = _I.unpack_from(self.mm, L.H_META)[0]
            blob = bytes(self.mm[L.H_META + 4 : L.H_META + 4 + min(n, L.META_MAX)])
        try:
            out = json.loads(blob)
        except ValueError:
            return {}
        return out if isinstance(out, dict) else {}

    @property
    def closing(self) -> bool:
        """True once the sender has decided to remove the ring (no new producer may join)."""
        return self.load(L.H_CLOSING) != 0

    # ---- record locks -------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across threads (a process-local lock, reset in fork children) and processes (a
        record lock: never inherited by a fork child, dropped by the kernel if the holder dies).
        A signal handler that logs while this thread holds it has its event deferred (reentry)."""
        with reentry.held(self._tlock):
            if self.fd < 0:
                raise RingClosed(errno.EBADF, "isstreamer: the ring is closed", self.path)
            record_lock(self.fd, L.LOCK_TABLE, wait=True)
            try:
                yield
            finally:
                record_unlock(self.fd, L.LOCK_TABLE)

    def sender_alive(self) -> bool:
        """True when a sender process holds the sender lock (the kernel's word, not a pid)."""
        fd = self.fd
        return fd >= 0 and lock_held_elsewhere(fd, L.LOCK_SENDER)

    def hold_sender_lock(self, patience: float = 1.0) -> bool:
        """(Sender) take the sender lock for the life of this process; False if another sender
        holds it (``patience`` seconds of retries outlast any momentary holder)."""
        deadline = time.monotonic() + patience
        while not record_lock(self.fd, L.LOCK_SENDER, wait=False):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Held while checking for a sender and starting one: one starter at a time."""
        with reentry.held(self._spawn_tlock):
            if self.fd < 0:
                raise RingClosed(errno.EBADF, "isstreamer: the ring is closed", self.path)
            record_lock(self.fd, L.LOCK_SPAWN, wait=True)
            try:
                yield
            finally:
                record_unlock(self.fd, L.LOCK_SPAWN)

    # ---- producer slots -----------------------------------------------------------------------------
    def slot_offset(self, index: int) -> int:
        """Byte offset of producer slot ``index``."""
        return L.slot_offset(self.nbuckets, index)

    def seg_path(self, seg_id: int) -> str:
        """Path of the segment file ``seg_id`` (beside the table, named after it)."""
        return "%s.%016x.seg" % (self.base, seg_id)

    def open_segment(self, seg_id: int) -> Segment:
        """Map segment ``seg_id`` for reading and releasing (the sender, stats()): no descriptor
        kept. RingClosed when it is gone, RingRefused when the file is not ours."""
        return Segment.open(self.seg_path(seg_id), native=self.native, keep_fd=False)

    def segment_exists(self, seg_id: int) -> bool:
        """True while segment ``seg_id``'s file exists."""
        return os.path.exists(self.seg_path(seg_id))

    def forget_segment(self, seg_id: int) -> None:
        """Remove segment ``seg_id``'s file (its mappings stay valid until unmapped)."""
        with contextlib.suppress(OSError):
            os.unlink(self.seg_path(seg_id))

    def wake(self) -> bool:
        """Wake an idle sender (it set ``sleeping``): one datagram, never blocking, never SIGPIPE.
        False when nobody listens (no sender bound, or it died): the caller may check on it."""
        sock = self._wake_sock
        if sock is None:
            socket = lazy.load("socket")  # only where a wake is needed (start-up time)
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError:
                return True
            sock.setblocking(False)
            self._wake_sock = sock
        try:
            sock.sendto(b"\0", self.wake_path)
        except (ConnectionRefusedError, FileNotFoundError):  # nobody bound there
            return False
        except OSError:  # its queue is full, or the path is too long
            pass
        return True

    def close(self) -> None:
        """Unmap, close the descriptor (dropping this process's locks) and the wake socket."""
        if self._wake_sock is not None:
            with contextlib.suppress(OSError):
                self._wake_sock.close()
            self._wake_sock = None
        super().close()

    def free_slot_left(self) -> bool:
        """True when a producer slot is free now (a cheap look before a segment file is made)."""
        if self.load(L.H_NSLOTS_USED) < self.nslots:
            return True
        return any(self.load(self.slot_offset(i) + L.SL_STATE) == L.SLOT_FREE for i in range(self.nslots))

    def claim_slot(self, seg_id: int, data_size: int) -> int:
        """Register segment file ``seg_id`` (already created and locked) for this process."""
        with self.locked():
            if self.closing:
                raise RingClosed(errno.ENOENT, "isstreamer: the ring is closed", self.path)
            used = self.load(L.H_NSLOTS_USED)
            for i in range(self.nslots):
                off = self.slot_offset(i)
                if self.load(off + L.SL_STATE) == L.SLOT_FREE:
                    self.store(off + L.SL_SEG_ID, seg_id)
                    self.store(off + L.SL_OWNER_PID, os.getpid())
                    self.store(off + L.SL_DATA_SIZE, data_size)
                    self.store(off + L.SL_STATE, L.SLOT_OWNED)
                    if i >= used:
                        self.store(L.H_NSLOTS_USED, i + 1)
                    return i
        raise RingRefused("isstreamer: every one of the ring's %d producer slots is in use" % self.nslots)

    def release_slot(self, index: int, seg_id: int) -> None:
        """Hand a segment back (close): the sender drains it, then frees it."""
        with self.locked():
            off = self.slot_offset(index)
            if self.load(off + L.SL_SEG_ID) == seg_id and self.load(off + L.SL_STATE) == L.SLOT_OWNED:
                self.store(off + L.SL_STATE, L.SLOT_RELEASED)

    def free_slot(self, index: int, seg_id: int, seg: Optional[Segment]) -> bool:
        """(Sender) fold a drained segment's counters into the header, free its slot, remove its file."""
        with self.locked():
            off = self.slot_offset(index)
            if self.load(off + L.SL_SEG_ID) != seg_id or self.load(off + L.SL_STATE) == L.SLOT_FREE:
                return False
            if seg is not None:
                if seg.head() != seg.tail():
                    return False
                self.count("logged_reclaimed", seg.logged())
                self.count("consumed_reclaimed", seg.consumed())
                for r, n in enumerate(seg.drop_counts()):
                    if n:
                        self.add(L.H_DROPS + 8 * r, n)
            self.forget_segment(seg_id)
            for f in (L.SL_SEG_ID, L.SL_OWNER_PID, L.SL_DATA_SIZE):
                self.store(off + f, 0)
            self.store(off + L.SL_STATE, L.SLOT_FREE)
            return True

    def slots(self) -> Iterator[Tuple[int, int, int, int]]:
        """(index, state, segment id, data size) of every slot in use."""
        for i in range(min(self.load(L.H_NSLOTS_USED), self.nslots)):
            off = self.slot_offset(i)
            st = self.load(off + L.SL_STATE)
            if st != L.SLOT_FREE:
                yield i, st, self.load(off + L.SL_SEG_ID), self.load(off + L.SL_DATA_SIZE)

    def remove_files(self) -> None:
        """(Under :meth:`locked`, with the ring marked closing) remove every file of the ring:
        registered segment files, the wake socket, the table itself."""
        for _, _, seg_id, _ in list(self.slots()):
            self.forget_segment(seg_id)
        for path in (self.wake_path, self.path):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def data_in_use(self) -> int:
        """Bytes of segment data registered (the cap a new producer's segment must fit in)."""
        return sum(size for _, _, _, size in self.slots())

    # ---- buckets ------------------------------------------------------------------------------
    def add_bucket(self, key: str, name: str) -> int:
        """Index of bucket (key, name) in the table, adding it if new."""
        kb = key.encode("utf-8", "surrogatepass")[: L.BUCKET_KEY_MAX]
        nb = name.encode("utf-8", "replace")[: L.BUCKET_NAME_MAX]
        with self.locked():
            used = self.load(L.H_NBUCKETS_USED)
            for i in range(used):
                if self.bucket(i) == (kb.decode("utf-8", "replace"), nb.decode("utf-8", "replace")):
                    return i
            if used >= self.nbuckets:
                raise RuntimeError("isstreamer: too many buckets for this Streamer (%d)" % self.nbuckets)
            off = L.bucket_offset(used)
            with self.live():
                self.mm[off + 16 : off + 16 + len(kb)] = kb
                self.mm[off + 16 + L.BUCKET_KEY_MAX : off + 16 + L.BUCKET_KEY_MAX + len(nb)] = nb
                _BUCKET_HDR.pack_into(self.mm, off, 2, len(kb), len(nb))
            self.store(L.H_NBUCKETS_USED, used + 1)
            return used

    def bucket(self, index: int) -> Optional[Tuple[str, str]]:
        """(key, name) of bucket ``index``, or None if that slot is not filled."""
        if not 0 <= index < self.nbuckets:
            return None
        off = L.bucket_offset(index)
        with self.live():
            state, klen, nlen = _BUCKET_HDR.unpack_from(self.mm, off)
            if state != 2 or klen > L.BUCKET_KEY_MAX or nlen > L.BUCKET_NAME_MAX:
                return None
            key = bytes(self.mm[off + 16 : off + 16 + klen]).decode("utf-8", "replace")
            name = bytes(self.mm[off + 16 + L.BUCKET_KEY_MAX : off + 16 + L.BUCKET_KEY_MAX + nlen]).decode(
                "utf-8", "replace"
            )
        return key, name

    def buckets_used(self) -> int:
        """Number of filled bucket slots."""
        return self.load(L.H_NBUCKETS_USED)
