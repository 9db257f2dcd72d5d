"""The shared-memory ring: a table file and one segment file per producer process.

Layout and record format are defined in ``csrc/isstreamer.h`` (numbers in :mod:`layout`); this
module is the only reader of those bytes. A Streamer's ring is

- a **table** file (:class:`Table`): counters, the bucket table, the producers' registry (slots)
  and the non-secret settings an adopter of an orphaned ring needs;
- one **segment** file per producer process (a one-segment :class:`Ring`), created on demand, so
  the number of producers has no fixed limit and one producer alone can use the whole
  ``ring_size``. Its pages are committed as they are written and returned by the sender
  (``MADV_REMOVE``) once consumed.

Ownership is what the kernel says: a producer holds a POSIX record lock on its segment file for
as long as it lives (dropped by the kernel when the process dies, never inherited by a fork
child, immune to pid reuse and pid namespaces); the sender holds one on the table for its life.
Every file is created ``O_EXCL`` and opened ``O_NOFOLLOW``, then checked (a regular file of ours,
mode 0600, and for pickled handles the same inode). Mappings used by producers are never
unmapped while the process lives (a C call may be running in another thread with the GIL
released): closing one replaces its pages with anonymous memory instead.

Two backends write the same bytes: the cffi extension (``isstreamer._native``) and a
pure-Python one (``struct`` and a uint64 memoryview) for installs without a compiler, refused
on weakly ordered CPUs unless forced (see :func:`check_fallback_safe`).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import mmap
import os
import platform
import secrets
import socket
import struct
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import layout as L
from . import safefile

# Every module this one needs is imported here, never inside a function: a fork child whose
# parent was importing a module in another thread at the fork would wait forever on that
# module's import lock.

try:  # the C extension is optional
    from ._native import ffi as _ffi, lib as _lib  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - exercised by installs without a compiler
    _ffi = None
    _lib = None

_Q = struct.Struct("=Q")
_I = struct.Struct("=I")
_REC = struct.Struct("=IBBHHHId")  # size type flags bucket keylen reserved vallen epoch
_F64 = struct.Struct("=d")
_I64 = struct.Struct("=q")
_BUCKET_HDR = struct.Struct("=IHH")

ENV_NO_EXTENSION = "ISSTREAMER_NO_EXTENSION"
ENV_FORCE_FALLBACK = "ISSTREAMER_FORCE_FALLBACK"
_STRONGLY_ORDERED = ("x86_64", "amd64", "i386", "i686", "x86")


def native_available() -> bool:
    """True when the C extension was built and imported."""
    return _lib is not None


def use_native() -> bool:
    """True when the C extension should be used (built, and not disabled by the environment)."""
    return _lib is not None and os.environ.get(ENV_NO_EXTENSION, "") in ("", "0")


def check_fallback_safe() -> None:
    """Refuse the pure-Python backend where it is unsafe, unless ``ISSTREAMER_FORCE_FALLBACK=1``.

    It publishes ``head`` with a plain store and relies on the CPU not reordering stores, and on
    64-bit loads and stores being single-copy atomic: true on x86, not on ARM (every Raspberry Pi).
    """
    machine = platform.machine().lower()
    if machine in _STRONGLY_ORDERED or os.environ.get(ENV_FORCE_FALLBACK, "") not in ("", "0"):
        return
    raise RuntimeError(
        "isstreamer: the C extension is not available, and the pure-Python fallback is not safe on "
        "%s (a weakly ordered CPU): install with a C compiler (e.g. apt-get install gcc python3-dev, "
        "then pip install --force-reinstall isstreamer), or set %s=1 to use it anyway"
        % (machine or "this CPU", ENV_FORCE_FALLBACK))


class RingClosed(OSError):
    """The ring file is gone: every user closed it and the sender removed it."""


class RingRefused(ValueError):
    """A file at a ring path is not ours (owner, mode, type or identity): it is never used."""


def default_ring_dir() -> str:
    """Where rings are created: ``$ISSTREAMER_RING_DIR``, else /dev/shm, else the temp directory."""
    for d in (os.environ.get("ISSTREAMER_RING_DIR", ""), "/dev/shm"):
        if d and os.path.isdir(d) and os.access(d, os.W_OK):
            return d
    return tempfile.gettempdir()


def open_private(path: str, create: bool = False) -> int:
    """Open a ring file without following symlinks; refuse anything but a 0600 regular file of ours.

    ``create``: make a new one (``O_EXCL``). Raises :class:`RingClosed` when it does not exist and
    :class:`RingRefused` when it is not ours (see :mod:`isstreamer.safefile`)."""
    try:
        return safefile.open_private(path, os.O_RDWR, create=create)
    except FileNotFoundError as exc:
        raise RingClosed(errno.ENOENT, "isstreamer: the ring is closed", path) from exc
    except safefile.Refused as exc:
        raise RingRefused(str(exc).replace("refusing ", "refusing ring file ", 1)) from None


def _lock(fd: int, start: int, wait: bool) -> bool:
    """Take a POSIX record lock on one byte; False when another process holds it (``wait=False``)."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB), 1, start)
        return True
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise


def _unlock(fd: int, start: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, start)


_FLOCK = struct.Struct("@hhqqi")  # struct flock: l_type l_whence l_start l_len l_pid (native layout)


def lock_held_elsewhere(fd: int, start: int) -> bool:
    """True when another process holds a record lock on byte ``start`` of ``fd``'s file.

    ``F_GETLK`` asks the kernel without taking the lock, so a probe never makes a starting sender
    believe its ring already has one."""
    arg = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, 1, 0) + bytes(16)
    try:
        got = fcntl.fcntl(fd, fcntl.F_GETLK, arg)
    except OSError:  # pragma: no cover - an F_GETLK this platform does not take: take and drop it
        if _lock(fd, start, wait=False):
            _unlock(fd, start)
            return False
        return True
    return _FLOCK.unpack_from(got)[0] != fcntl.F_UNLCK


# ---- mappings that live as long as the process ------------------------------------------------

_IMMORTAL: List[Any] = []
_MAP_FIXED = 0x10  # Linux, every architecture we build for
_MAP_NORESERVE = 0x4000


def _keep_forever(obj: Any) -> None:
    """Never deallocate ``obj``, not even during interpreter finalisation (module teardown would
    otherwise unmap a ring under a daemon thread that is inside a C put)."""
    _IMMORTAL.append(obj)
    try:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
    except (AttributeError, OSError):  # pragma: no cover - not CPython
        pass


def _retire_pages(mm: mmap.mmap) -> bool:
    """Replace a shared mapping's pages by private anonymous memory at the same address.

    The shared pages are released (the file may be unlinked and its memory freed), while a
    thread still inside a put writes harmlessly into the anonymous pages instead of faulting."""
    if not sys.platform.startswith("linux") or len(mm) == 0:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        buf = (ctypes.c_char * len(mm)).from_buffer(mm)
        _IMMORTAL.append(buf)  # the buffer export also keeps mm from ever being closed
        addr = ctypes.addressof(buf)
        got = libc.mmap(addr, len(mm), mmap.PROT_READ | mmap.PROT_WRITE,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE, -1, 0)
        return got == addr
    except (AttributeError, OSError, TypeError, ValueError):  # pragma: no cover
        return False


class _Mapped:
    """64-bit field access on a mapping: acquire / release atomics with the extension, one 8-byte
    access each through a uint64 memoryview without it."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, native: bool) -> None:
        self.path = path
        self.fd = fd
        self.mm = mm
        self.size = len(mm)
        self.native = native
        self._tlock = threading.Lock()
        self._spawn_tlock = threading.Lock()
        self.q = memoryview(mm).cast("Q")
        self._buf = None
        self.ptr = None
        if native:
            assert _ffi is not None
            self._buf = _ffi.from_buffer(mm)
            self.ptr = _ffi.cast("uint8_t *", self._buf)
        st = os.fstat(fd)
        self.identity: Tuple[int, int] = (st.st_dev, st.st_ino)

    def load(self, off: int) -> int:
        """Read a 64-bit field (acquire with the extension)."""
        if self.ptr is not None:
            return _lib.iss_load64(self.ptr, self.size, off)  # type: ignore[union-attr]
        return self.q[off >> 3]

    def store(self, off: int, value: int) -> None:
        """Write a 64-bit field (release with the extension)."""
        if self.ptr is not None:
            _lib.iss_store64(self.ptr, self.size, off, value)  # type: ignore[union-attr]
        else:
            self.q[off >> 3] = value & 0xFFFFFFFFFFFFFFFF

    def add(self, off: int, value: int) -> int:
        """Add to a 64-bit field: atomic with the extension; without it a plain read-modify-write,
        used only on single-writer fields or where a lost increment is harmless (flush nudges)."""
        if self.ptr is not None:
            return _lib.iss_add64(self.ptr, self.size, off, value)  # type: ignore[union-attr]
        v = (self.q[off >> 3] + value) & 0xFFFFFFFFFFFFFFFF
        self.q[off >> 3] = v
        return v

    def reset_after_fork(self) -> None:
        """(fork child) Fresh process-local locks: another thread of the parent may have held them."""
        self._tlock = threading.Lock()
        self._spawn_tlock = threading.Lock()
        if getattr(self, "_wake_sock", None) is not None:
            self._wake_sock = None  # the parent's: left open, never shared

    def keep(self) -> None:
        """This mapping is used by producers: keep it for the life of the process."""
        _keep_forever(self)

    def retire(self) -> None:
        """Close the file (dropping this process's record locks on it) and release the shared pages
        without unmapping: a concurrent put in another thread never faults."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1
        _retire_pages(self.mm)

    def close(self) -> None:
        """Unmap and close. Only for single-threaded users (the sender, tools, tests)."""
        self.ptr = None
        self.q.release()
        if self._buf is not None:
            _ffi.release(self._buf)  # type: ignore[union-attr]
            self._buf = None
        with contextlib.suppress(BufferError, ValueError):
            self.mm.close()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class Ring(_Mapped):
    """A mapped ring-format file: header, bucket slots and segments (a producer's segment file is
    a ring with one segment and one unused bucket slot; tests and fuzz replays use more)."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, native: bool) -> None:
        super().__init__(path, fd, mm, native)
        self.nsegs = _I.unpack_from(mm, L.H_NSEGS)[0]
        self.seg_data_size = _I.unpack_from(mm, L.H_SEG_DATA_SIZE)[0]
        self.nbuckets = _I.unpack_from(mm, L.H_NBUCKETS)[0]

    @classmethod
    def create(
        cls,
        ring_size: int,
        nsegs: int = 1,
        nbuckets: int = 1,
        directory: Optional[str] = None,
        native: Optional[bool] = None,
        path: Optional[str] = None,
    ) -> "Ring":
        """Create and initialise a new ring-format file of ``nsegs`` segments sharing ``ring_size``
        bytes of data (``path``: that name, else a fresh one in ``directory``)."""
        native = use_native() if native is None else native
        if nsegs < 1:
            raise ValueError("isstreamer: a ring needs at least one segment")
        seg = max(L.SEG_DATA_MIN, (ring_size // nsegs) // 8 * 8)
        if seg >= 1 << 32:
            raise ValueError("isstreamer: ring_size %d is too large (at most %d per process)"
                             % (ring_size, (1 << 32) - 8))
        size = L.layout_size(nsegs, seg, nbuckets)
        if path is None:
            path = os.path.join(directory or default_ring_dir(),
                                "isstreamer-%d-%s.ring" % (os.getpid(), secrets.token_hex(6)))
        fd = open_private(path, create=True)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        if native:
            assert _ffi is not None and _lib is not None
            with _ffi.from_buffer(mm) as buf:
                rc = _lib.iss_ring_init(_ffi.cast("uint8_t *", buf), size, nsegs, seg, nbuckets)
            if rc != 0:
                mm.close()
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise ValueError("isstreamer: cannot initialise ring (code %d)" % rc)
        else:
            struct.pack_into("=IIIIIIQ", mm, L.H_VERSION, L.LAYOUT_VERSION, L.HDR_SIZE,
                             nsegs, seg, nbuckets, L.BUCKET_SIZE, size)
            _Q.pack_into(mm, L.H_MAGIC, L.MAGIC)
        return cls(path, fd, mm, native)

    @classmethod
    def open(cls, path: str, native: Optional[bool] = None,
             identity: Optional[Tuple[int, int]] = None) -> "Ring":
        """Map an existing ring-format file of ours (see :func:`open_private`); raises RingClosed
        when it no longer exists, RingRefused when it is not ours or not the file expected."""
        native = use_native() if native is None else native
        fd = open_private(path)
        try:
            mm = _map_checked(fd, path, L.MAGIC, identity)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mm, native)

    def seg_offset(self, index: int) -> int:
        """Byte offset of segment ``index``."""
        return L.seg_offset(self.nbuckets, self.seg_data_size, index)

    def seg_field(self, index: int, field: int) -> int:
        """Read a 64-bit field of a segment header."""
        return self.load(self.seg_offset(index) + field)

    def head(self, index: int = 0) -> int:
        """Bytes published on segment ``index`` (acquire: the records before it are readable)."""
        return self.load(self.seg_offset(index) + L.S_HEAD)

    def tail(self, index: int = 0) -> int:
        """Bytes of segment ``index`` the sender is done with."""
        return self.load(self.seg_offset(index) + L.S_TAIL)

    def logged(self, index: int = 0) -> int:
        """Records published on segment ``index``."""
        return self.load(self.seg_offset(index) + L.S_LOGGED)

    def consumed(self, index: int = 0) -> int:
        """Records of segment ``index`` the sender is done with."""
        return self.load(self.seg_offset(index) + L.S_CONSUMED)

    def drop_counts(self, index: int = 0) -> List[int]:
        """Events refused by the producer of segment ``index``, by reason (layout.DROP_REASONS)."""
        base = self.seg_offset(index) + L.S_DROPS
        return [self.load(base + 8 * r) for r in range(len(L.DROP_REASONS))]

    def waiting(self, index: int = 0) -> int:
        """Records published and not yet consumed."""
        return self.logged(index) - self.consumed(index)

    def fill(self, index: int = 0) -> float:
        """Fraction of segment ``index``'s data area holding unconsumed records."""
        return (self.head(index) - self.tail(index)) / self.seg_data_size

    def release(self, index: int, end: int, consumed: int) -> None:
        """(Sender) hand bytes up to ``end`` back to the producer: ``consumed`` first, then ``tail``
        (a release store: the producer sees the count before it reuses the space)."""
        base = self.seg_offset(index)
        self.store(base + L.S_CONSUMED, consumed)
        self.store(base + L.S_TAIL, end)

    def counter(self, name: str) -> int:
        """Value of a header counter (see layout.COUNTERS)."""
        return self.load(L.H_COUNTERS + 8 * L.C[name])

    def count(self, name: str, n: int = 1) -> None:
        """Add to a header counter."""
        if n:
            self.add(L.H_COUNTERS + 8 * L.C[name], n)

    def release_pages(self, index: int, start: int, end: int) -> None:
        """(Sender) give the memory of consumed bytes [start, end) of segment ``index`` back to the
        system (whole pages only). Call before publishing ``tail = end``: until then the
        producer cannot write there, so a page is never punched under a write."""
        ds = self.seg_data_size
        if end - start < mmap.PAGESIZE or getattr(self, "_no_punch", False):
            return
        data = self.seg_offset(index) + L.SEG_HDR_SIZE
        a, b = start % ds, end % ds
        spans = [(a, b)] if a < b else [(a, ds), (0, b)]
        if end - start >= ds:
            spans = [(0, ds)]
        for lo, hi in spans:
            lo = -(-(data + lo) // mmap.PAGESIZE) * mmap.PAGESIZE
            hi = (data + hi) // mmap.PAGESIZE * mmap.PAGESIZE
            if hi > lo:
                try:
                    self.mm.madvise(mmap.MADV_REMOVE, lo, hi - lo)
                except (AttributeError, OSError, ValueError):
                    self._no_punch = True  # a file system without hole punching: keep the pages
                    return


def _map_checked(fd: int, path: str, magic: int, identity: Optional[Tuple[int, int]]) -> mmap.mmap:
    """Map ``fd`` after checking its identity, size and header magic / version."""
    st = os.fstat(fd)
    if identity is not None and (st.st_dev, st.st_ino) != tuple(identity):
        raise RingRefused("isstreamer: refusing ring file %s: it is not the file this handle was made for "
                          "(replaced since)" % path)
    if st.st_size < L.HDR_SIZE or st.st_size % 8:
        raise RingRefused("isstreamer: refusing %s: not a ring file" % path)
    mm = mmap.mmap(fd, st.st_size)
    if _Q.unpack_from(mm, L.H_MAGIC)[0] != magic or _I.unpack_from(mm, L.H_VERSION)[0] != L.LAYOUT_VERSION:
        mm.close()
        raise RingRefused("isstreamer: refusing %s: not a ring file of this version" % path)
    return mm


class Table(_Mapped):
    """A Streamer's table file: counters, buckets, the producers' registry and the settings an
    adopter needs (no secret). Its record locks: ``LOCK_TABLE`` for short critical sections,
    ``LOCK_SENDER`` held by the live sender, ``LOCK_SPAWN`` by a process starting one."""

    NSLOTS = 4096
    NBUCKETS = 1024

    def __init__(self, path: str, fd: int, mm: mmap.mmap, native: bool) -> None:
        super().__init__(path, fd, mm, native)
        self.nslots = _I.unpack_from(mm, L.H_NSEGS)[0]
        self.seg_data_size = _I.unpack_from(mm, L.H_SEG_DATA_SIZE)[0]
        self.nbuckets = _I.unpack_from(mm, L.H_NBUCKETS)[0]
        if L.table_size(self.nbuckets, self.nslots) > self.size or self.nbuckets > 65535:
            raise RingRefused("isstreamer: refusing %s: inconsistent table header" % path)
        self.base = path[:-5] if path.endswith(".ring") else path
        self._wake_sock: Any = None

    @classmethod
    def create(cls, seg_data_size: int, meta: Dict[str, Any], directory: Optional[str] = None,
               native: Optional[bool] = None) -> "Table":
        """Create a new table file (0600, ``O_EXCL``) in ``directory`` (default /dev/shm)."""
        native = use_native() if native is None else native
        if not L.SEG_DATA_MIN <= seg_data_size < 1 << 32:
            raise ValueError("isstreamer: ring_size must be between %d and %d bytes, not %d"
                             % (L.SEG_DATA_MIN, (1 << 32) - 8, seg_data_size))
        blob = json.dumps(meta, sort_keys=True).encode()
        if len(blob) > L.META_MAX:
            raise ValueError("isstreamer: settings too long to record in the ring")
        size = L.table_size(cls.NBUCKETS, cls.NSLOTS)
        path = os.path.join(directory or default_ring_dir(),
                            "isstreamer-%d-%s.ring" % (os.getpid(), secrets.token_hex(6)))
        fd = open_private(path, create=True)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
            struct.pack_into("=IIIIIIQ", mm, L.H_VERSION, L.LAYOUT_VERSION, L.HDR_SIZE, cls.NSLOTS,
                             seg_data_size // 8 * 8, cls.NBUCKETS, L.BUCKET_SIZE, size)
            struct.pack_into("=I", mm, L.H_META, len(blob))
            mm[L.H_META + 4: L.H_META + 4 + len(blob)] = blob
            _Q.pack_into(mm, L.H_MAGIC, L.TABLE_MAGIC)
            return cls(path, fd, mm, native)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise

    @classmethod
    def open(cls, path: str, native: Optional[bool] = None,
             identity: Optional[Tuple[int, int]] = None) -> "Table":
        """Map an existing table file of ours; RingClosed when gone, RingRefused when not ours."""
        native = use_native() if native is None else native
        fd = open_private(path)
        try:
            mm = _map_checked(fd, path, L.TABLE_MAGIC, identity)
            return cls(path, fd, mm, native)
        except BaseException:
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
        """Count events dropped by the sender (e.g. spool_full) where every stats() sees them."""
        if n:
            self.add(L.H_DROPS + 8 * L.D[reason], n)

    # ---- scheduling words ------------------------------------------------------------------------
    @property
    def flush_seq(self) -> int:
        """Bumped by every flush() (and full-ring nudge): send partial batches now."""
        return self.load(L.H_FLUSH_SEQ)

    def request_flush(self) -> None:
        """Ask the sender to send what waits now, waking it if it sleeps."""
        self.add(L.H_FLUSH_SEQ, 1)
        if self.load(L.H_SLEEPING):
            self.wake()

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
        n = _I.unpack_from(self.mm, L.H_META)[0]
        try:
            out = json.loads(bytes(self.mm[L.H_META + 4: L.H_META + 4 + min(n, L.META_MAX)]))
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
        record lock: never inherited by a fork child, dropped by the kernel if the holder dies)."""
        with self._tlock:
            if self.fd < 0:
                raise RingClosed(errno.EBADF, "isstreamer: the ring is closed", self.path)
            _lock(self.fd, L.LOCK_TABLE, wait=True)
            try:
                yield
            finally:
                _unlock(self.fd, L.LOCK_TABLE)

    def sender_alive(self) -> bool:
        """True when a sender process holds the sender lock (the kernel's word, not a pid)."""
        return self.fd >= 0 and lock_held_elsewhere(self.fd, L.LOCK_SENDER)

    def hold_sender_lock(self, patience: float = 1.0) -> bool:
        """(Sender) take the sender lock for the life of this process; False if another sender
        holds it (``patience`` seconds of retries outlast any momentary holder)."""
        deadline = time.monotonic() + patience
        while not _lock(self.fd, L.LOCK_SENDER, wait=False):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Held while checking for a sender and starting one: one starter at a time."""
        with self._spawn_tlock:
            _lock(self.fd, L.LOCK_SPAWN, wait=True)
            try:
                yield
            finally:
                _unlock(self.fd, L.LOCK_SPAWN)

    # ---- producer slots -----------------------------------------------------------------------------
    def slot_offset(self, index: int) -> int:
        """Byte offset of producer slot ``index``."""
        return L.slot_offset(self.nbuckets, index)

    def seg_path(self, seg_id: int) -> str:
        """Path of the segment file ``seg_id`` (beside the table, named after it)."""
        return "%s.%016x.seg" % (self.base, seg_id)

    @property
    def wake_path(self) -> str:
        """Path of the idle sender's datagram socket (producers send one byte there to wake it);
        its name carries a random token recorded in the (private) table, so no other user can
        take the name before the sender binds it."""
        token = self.meta().get("wake", "")
        return "%s.%s.wake" % (self.base, token) if token else self.base + ".wake"

    def wake(self) -> None:
        """Wake an idle sender (it set ``sleeping``): one datagram, never blocking, never SIGPIPE."""
        sock = self._wake_sock
        if sock is None:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError:
                return
            sock.setblocking(False)
            self._wake_sock = sock
        try:
            sock.sendto(b"\0", self.wake_path)
        except OSError:  # no sender bound yet, its queue is full, or the path is too long
            pass

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

    def free_slot(self, index: int, seg_id: int, seg: Optional["Ring"]) -> bool:
        """(Sender) fold a drained segment's counters into the header, free its slot, remove its file."""
        with self.locked():
            off = self.slot_offset(index)
            if self.load(off + L.SL_SEG_ID) != seg_id or self.load(off + L.SL_STATE) == L.SLOT_FREE:
                return False
            if seg is not None:
                b = seg.seg_offset(0)
                if seg.load(b + L.S_HEAD) != seg.load(b + L.S_TAIL):
                    return False
                self.count("logged_reclaimed", seg.load(b + L.S_LOGGED))
                self.count("consumed_reclaimed", seg.load(b + L.S_CONSUMED))
                for r in range(L.NDROPS):
                    n = seg.load(b + L.S_DROPS + 8 * r)
                    if n:
                        self.add(L.H_DROPS + 8 * r, n)
            with contextlib.suppress(OSError):
                os.unlink(self.seg_path(seg_id))
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
            with contextlib.suppress(OSError):
                os.unlink(self.seg_path(seg_id))
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
            self.mm[off + 16: off + 16 + len(kb)] = kb
            self.mm[off + 16 + L.BUCKET_KEY_MAX: off + 16 + L.BUCKET_KEY_MAX + len(nb)] = nb
            _BUCKET_HDR.pack_into(self.mm, off, 2, len(kb), len(nb))
            self.store(L.H_NBUCKETS_USED, used + 1)
            return used

    def bucket(self, index: int) -> Optional[Tuple[str, str]]:
        """(key, name) of bucket ``index``, or None if that slot is not filled."""
        if not 0 <= index < self.nbuckets:
            return None
        off = L.bucket_offset(index)
        state, klen, nlen = _BUCKET_HDR.unpack_from(self.mm, off)
        if state != 2 or klen > L.BUCKET_KEY_MAX or nlen > L.BUCKET_NAME_MAX:
            return None
        key = bytes(self.mm[off + 16: off + 16 + klen]).decode("utf-8", "replace")
        name = bytes(self.mm[off + 16 + L.BUCKET_KEY_MAX: off + 16 + L.BUCKET_KEY_MAX + nlen]).decode("utf-8", "replace")
        return key, name

    def buckets_used(self) -> int:
        """Number of filled bucket slots."""
        return self.load(L.H_NBUCKETS_USED)


# ---- producers ----------------------------------------------------------------------------------

class SegmentState:
    """Process-local state shared by the pure-Python producers of one segment: the lock of its
    threads, the threads inside a put (a signal handler interrupting one must not wait for it)
    and the records such handlers left to write."""

    __slots__ = ("lock", "busy", "deferred", "deferred_drops")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy: set = set()
        self.deferred: List[Tuple[Any, ...]] = []
        self.deferred_drops: List[Tuple[Any, int]] = []  # (producer, reason) counted by a handler


class PyProducer:
    """Pure-Python producer on one segment: same bytes as the C ``iss_put_*`` functions."""

    __slots__ = ("ring", "mm", "q", "seg", "data", "ds", "state", "bucket", "cached_tail", "dropping", "wake_q",
                 "woke")

    def __init__(self, ring: Ring, seg_index: int, state: SegmentState, bucket: int = 0) -> None:
        self.ring = ring
        self.mm = ring.mm
        self.q = ring.q
        self.seg = ring.seg_offset(seg_index)
        self.data = self.seg + L.SEG_HDR_SIZE
        self.ds = ring.seg_data_size
        self.state = state
        self.bucket = bucket
        self.dropping = 0
        self.wake_q: Any = None  # the table's uint64 view: its ``sleeping`` flag (see iss_producer.wake)
        self.woke = 0  # the last ``sleeping`` value this handle rang for
        self.cached_tail = self.q[(self.seg + L.S_TAIL) >> 3]

    def put(self, rtype: int, key: bytes, num: Optional[bytes], s: bytes, epoch: float) -> int:
        """Append one record; returns an ``iss_put_*`` code.

        A signal handler that logs while this thread is inside a put does not wait for the lock
        this thread holds (it would wait forever): its record is written right after."""
        klen, slen = len(key), len(s)
        if klen == 0 or klen > L.KEY_MAX or slen > L.STR_MAX:
            return L.ETOOBIG
        if epoch != epoch:
            epoch = time.time()
        st = self.state
        me = threading.get_ident()
        if me in st.busy:
            st.deferred.append((self, rtype, key, num, s, epoch))
            return L.OK
        st.busy.add(me)
        try:
            rc = self._write(rtype, key, num, s, epoch)
        finally:
            st.busy.discard(me)
        while st.deferred_drops and me not in st.busy:
            try:
                owner, reason = st.deferred_drops.pop(0)
            except IndexError:
                break
            owner.count_drop(reason)
        while st.deferred and me not in st.busy:
            try:
                item = st.deferred.pop(0)
            except IndexError:
                break
            st.busy.add(me)
            try:
                if item[0]._write(*item[1:]) not in (L.OK, L.WAKE):
                    item[0].count_drop(L.D["ring_full"])
            finally:
                st.busy.discard(me)
        return rc

    def _write(self, rtype: int, key: bytes, num: Optional[bytes], s: bytes, epoch: float) -> int:
        klen, slen = len(key), len(s)
        body = L.REC_HDR_SIZE + (8 if num is not None else 0) + klen + slen
        size = (body + 7) & ~7
        mm, q, ds, seg = self.mm, self.q, self.ds, self.seg
        with self.state.lock:
            head = q[(seg + L.S_HEAD) >> 3]
            off = head % ds
            contig = ds - off
            need = size if size <= contig else contig + size
            if head + need - self.cached_tail > ds:
                self.cached_tail = q[(seg + L.S_TAIL) >> 3]
                if head + need - self.cached_tail > ds:
                    if self.dropping:  # one wait per full episode; after it, drops cost a put
                        q[(seg + L.S_DROPS + 8 * L.D["ring_full"]) >> 3] += 1
                        return L.DROPPED
                    return L.FULL
            self.dropping = 0
            base = self.data
            if size > contig:
                struct.pack_into("=IBxxx", mm, base + off, contig, L.T_PAD)
                head += contig
                off = 0
            w = base + off
            _REC.pack_into(mm, w, size, rtype, 0, self.bucket, klen, 0, slen, epoch)
            w += L.REC_HDR_SIZE
            if num is not None:
                mm[w: w + 8] = num
                w += 8
            mm[w: w + klen] = key
            w += klen
            if slen:
                mm[w: w + slen] = s
                w += slen
            pad = size - body
            if pad:
                mm[w: w + pad] = bytes(pad)
            q[(seg + L.S_HEAD) >> 3] = head + size  # publish
            q[(seg + L.S_LOGGED) >> 3] += 1
        # without a fence the flag may be read before the head store is seen: the sender then
        # wakes at its idle timeout (at most a second) instead of now
        if self.wake_q is not None:
            sleep = self.wake_q[L.H_SLEEPING >> 3]
            if sleep and sleep != self.woke:  # once per sleep
                self.woke = sleep
                return L.WAKE
        return L.OK

    def count_drop(self, reason: int) -> None:
        """Count one event refused by this producer (deferred when a signal handler interrupted a
        put of this thread, which holds the lock)."""
        if threading.get_ident() in self.state.busy:
            self.state.deferred_drops.append((self, reason))
            return
        off = self.seg + L.S_DROPS + 8 * reason
        with self.state.lock:
            self.q[off >> 3] += 1


def py_put_f64(p: PyProducer, key: bytes, keylen: int, v: float, epoch: float) -> int:
    """Pure-Python twin of ``iss_put_f64``."""
    if v != v or v in (float("inf"), float("-inf")):
        return L.EINVAL
    return p.put(L.T_F64, key, _F64.pack(v), b"", epoch)


def py_put_i64(p: PyProducer, key: bytes, keylen: int, v: int, epoch: float) -> int:
    """Pure-Python twin of ``iss_put_i64``."""
    return p.put(L.T_I64, key, _I64.pack(v), b"", epoch)


def py_put_bool(p: PyProducer, key: bytes, keylen: int, v: int, epoch: float) -> int:
    """Pure-Python twin of ``iss_put_bool``."""
    return p.put(L.T_TRUE if v else L.T_FALSE, key, None, b"", epoch)


def py_put_str(p: PyProducer, key: bytes, keylen: int, s: bytes, slen: int, epoch: float) -> int:
    """Pure-Python twin of ``iss_put_str``."""
    return p.put(L.T_STR, key, None, s, epoch)


class Attachment:
    """This process's segment of a ring, shared by every Streamer object of the process.

    ``slot`` and ``seg_id`` name its registration in the table (None for a bare ring file)."""

    def __init__(self, ring: Ring, seg_index: int = 0, token: int = 0, slot: Optional[int] = None,
                 table: Optional[Table] = None) -> None:
        self.ring = ring
        self.table = table  # whose ``sleeping`` flag the producers check after each put
        self.seg_index = seg_index
        self.seg_id = token
        self.slot = slot
        self.pid = os.getpid()
        self.refs = 0
        self.state = SegmentState()  # pure-Python producers' lock and re-entry guard

    @classmethod
    def create(cls, table: Table, data_size: int, native: bool) -> "Attachment":
        """A new segment file for this process: created 0600 ``O_EXCL``, owner-locked, registered."""
        if data_size >= 1 << 32:
            data_size = (1 << 32) - 8
        seg_id = secrets.randbits(63) | 1
        path = table.seg_path(seg_id)
        ring = Ring.create(data_size, 1, nbuckets=1, native=native, path=path)
        try:
            if not _lock(ring.fd, L.LOCK_OWNER, wait=False):
                raise RingRefused("isstreamer: refusing %s: locked by another process" % path)
            ring.keep()
            slot = table.claim_slot(seg_id, ring.seg_data_size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            ring.retire()
            raise
        return cls(ring, 0, seg_id, slot, table)

    def new_producer(self, bucket: int):  # -> cdata iss_producer * | PyProducer
        """A producer handle with its own current bucket on this segment."""
        if self.ring.native:
            assert _ffi is not None and _lib is not None
            p = _ffi.new("iss_producer *")
            p.bucket = bucket
            rc = _lib.iss_producer_attach(p, self.ring.ptr, self.ring.size, self.seg_index)
            if rc != 0:
                raise ValueError("isstreamer: cannot attach to ring segment (code %d)" % rc)
            if self.table is not None and self.table.ptr is not None:
                p.wake = _ffi.cast("const uint64_t *", self.table.ptr + L.H_SLEEPING)
            return p
        pp = PyProducer(self.ring, self.seg_index, self.state, bucket)
        if self.table is not None:
            pp.wake_q = self.table.q
        return pp

    def count_drop(self, reason: int) -> None:
        """Count one refused event on this segment (reported by stats())."""
        off = self.ring.seg_offset(self.seg_index) + L.S_DROPS + 8 * reason
        if self.ring.native:
            self.ring.add(off, 1)
        elif threading.get_ident() in self.state.busy:  # a signal handler inside a put of ours
            self.state.deferred_drops.append((PyProducer(self.ring, self.seg_index, self.state), reason))
        else:
            with self.state.lock:
                self.ring.store(off, self.ring.load(off) + 1)

    def head(self) -> int:
        """Bytes published on this segment so far."""
        return self.ring.seg_field(self.seg_index, L.S_HEAD)

    def tail(self) -> int:
        """Bytes the sender has finished with (delivered or handed to the failure path)."""
        return self.ring.seg_field(self.seg_index, L.S_TAIL)

    def fill(self) -> float:
        """Fraction of the segment's data area holding events not yet consumed."""
        return (self.head() - self.tail()) / self.ring.seg_data_size

    def release(self, table: Optional[Table]) -> None:
        """Hand the segment back to the sender (close): its slot is marked released, the owner
        lock dropped and the pages retired (never unmapped under a running put)."""
        if table is not None and self.slot is not None:
            with contextlib.suppress(RingClosed, OSError):
                table.release_slot(self.slot, self.seg_id)
        self.ring.retire()


_PY_KEYS: list = []
_PY_KEYS_LOCK = threading.Lock()


def after_fork_in_child() -> None:
    """Reset the process-local key tables' locks in a fork child (another thread of the parent may
    have held them at the fork); the C table's lock is taken around the fork instead."""
    global _PY_KEYS_LOCK
    _PY_KEYS_LOCK = threading.Lock()
    if _lib is not None:
        _lib.iss_after_fork_child()


def before_fork() -> None:
    """Take the C key table's lock so that no fork child inherits it held or half-updated."""
    if _lib is not None:
        _lib.iss_before_fork()


def after_fork_in_parent() -> None:
    """Release what :func:`before_fork` took."""
    if _lib is not None:
        _lib.iss_after_fork_parent()
_NAN = float("nan")


def py_key_intern(key: bytes, keylen: int) -> int:
    """Pure-Python twin of ``iss_key_intern``: an id for the key bytes (process-local)."""
    if keylen == 0 or keylen > L.KEY_MAX:
        return L.ETOOBIG
    with _PY_KEYS_LOCK:
        _PY_KEYS.append(bytes(key[:keylen]))
        return len(_PY_KEYS) - 1


def py_log_f64(p: PyProducer, key_id: int, v: float, epoch: float = _NAN) -> int:
    """Pure-Python twin of ``iss_log_f64_at`` (NaN epoch: now)."""
    return py_put_f64(p, _PY_KEYS[key_id], 0, v, epoch)


def py_log_i64(p: PyProducer, key_id: int, v: int, epoch: float = _NAN) -> int:
    """Pure-Python twin of ``iss_log_i64_at`` (OverflowError outside int64, as cffi raises)."""
    if not -(2**63) <= v < 2**63:
        raise OverflowError("isstreamer: %d does not fit in int64" % v)
    return p.put(L.T_I64, _PY_KEYS[key_id], _I64.pack(v), b"", epoch)


def py_log_bool(p: PyProducer, key_id: int, v: int, epoch: float = _NAN) -> int:
    """Pure-Python twin of ``iss_log_bool_at``."""
    return p.put(L.T_TRUE if v else L.T_FALSE, _PY_KEYS[key_id], None, b"", epoch)


def py_log_str(p: PyProducer, key_id: int, s: bytes, slen: int, epoch: float = _NAN) -> int:
    """Pure-Python twin of ``iss_log_str_at``."""
    return p.put(L.T_STR, _PY_KEYS[key_id], None, s, epoch)


def logs_for(native: bool):
    """(intern, log_f64, log_i64, log_bool, log_str): the hot-path functions of a backend.

    They take an interned key id and an epoch (NaN: now)."""
    if native:
        assert _lib is not None
        return (_lib.iss_key_intern, _lib.iss_log_f64_at, _lib.iss_log_i64_at, _lib.iss_log_bool_at,
                _lib.iss_log_str_at)
    return py_key_intern, py_log_f64, py_log_i64, py_log_bool, py_log_str


def puts_for(native: bool):
    """(put_f64, put_i64, put_bool, put_str) for a backend."""
    if native:
        assert _lib is not None
        return _lib.iss_put_f64, _lib.iss_put_i64, _lib.iss_put_bool, _lib.iss_put_str
    return py_put_f64, py_put_i64, py_put_bool, py_put_str
