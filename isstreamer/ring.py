"""The shared-memory ring: a table file and one segment file per producer process.

Layout and record format are defined in ``csrc/isstreamer.h`` (numbers in :mod:`layout`); this
module is the only reader of those bytes. A Streamer's ring is

- a **table** file (:class:`Table`): counters, the bucket table, the producers' registry (slots)
  and the non-secret settings an adopter of an orphaned ring needs;
- one **segment** file per producer process (a one-segment :class:`Ring`), created on demand, so
  the number of producers has no fixed limit and one producer alone can use the whole
  ``ring_size``. Its pages are reserved (``fallocate``) by its producer ahead of the head, so a
  full file system is a counted drop, never a SIGBUS, and returned by the sender
  (``MADV_REMOVE``) once consumed, behind a commit journal that survives its death.

Ownership is what the kernel says: a producer holds a POSIX record lock on its segment file for
as long as it lives (dropped by the kernel when the process dies, never inherited by a fork
child, immune to pid reuse and pid namespaces); the sender holds one on the table for its life.
Every file is created ``O_EXCL`` and opened ``O_NOFOLLOW``, then checked (a regular file of ours,
mode 0600, and for pickled handles the same inode). Mappings hold no file descriptor
(:mod:`isstreamer.mapping`); a producer's segment is unmapped only after its guard is closed
(no put of the process touches it after that) and Python-side access goes through a gate, so
closing a Streamer while another thread uses it fails that use, never faults.

Two backends write the same bytes: the cffi extension (``isstreamer._native``) and a
pure-Python one (``struct`` and a uint64 memoryview) for installs without a compiler, refused
on weakly ordered CPUs unless forced (see :func:`check_fallback_safe`).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
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

from . import faults, reentry, safefile
from . import layout as L
from . import mapping as M

# Every module this one needs is imported here, never inside a function: a fork child whose
# parent was importing a module in another thread at the fork would wait forever on that
# module's import lock.

_NATIVE_ERROR = ""
try:  # the C extension is optional
    from ._native import ffi as _ffi, lib as _lib  # type: ignore[import-not-found]
except ImportError as _exc:  # pragma: no cover - exercised by installs without a compiler
    _ffi = None
    _lib = None
    _NATIVE_ERROR = str(_exc)

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


_FALLBACK_TOLD = False


def fallback_reason() -> str:
    """Why log() runs on the pure-Python fallback, with the fix: said once per process (the first
    call), "" afterwards, with the extension, or when the fallback was asked for
    (``ISSTREAMER_NO_EXTENSION=1``). A source tree in the working directory that shadows an
    installed copy with a built extension is named as such."""
    global _FALLBACK_TOLD
    if _lib is not None or _FALLBACK_TOLD or os.environ.get(ENV_NO_EXTENSION, "") not in ("", "0"):
        return ""
    _FALLBACK_TOLD = True
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        other = os.path.join(os.path.abspath(entry or "."), "isstreamer")
        try:
            built = other != here and any(n.startswith("_native.") for n in os.listdir(other))
        except OSError:
            continue
        if built:
            return ("isstreamer: imported from %s, a source tree without the compiled C extension, which shadows "
                    "the installed copy in %s: log() runs on the pure-Python fallback, about 10x slower "
                    "(stats()['backend'] == 'python'). Run the program from another directory, or build the "
                    "extension in place: python %s" % (here, other, os.path.join(here, "_build_native.py")))
    return ("isstreamer: the C extension is not available in %s (%s): log() runs on the pure-Python fallback, "
            "about 10x slower (stats()['backend'] == 'python'). Install with a C compiler and the Python headers "
            "(e.g. apt install build-essential python3-dev, then pip install --force-reinstall isstreamer), or "
            "build it in place: python %s" % (here, _NATIVE_ERROR or "not built",
                                              os.path.join(here, "_build_native.py")))


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


def segment_owner_alive(table: "Table", seg_id: int) -> bool:
    """The kernel's word: does a process hold the owner lock of segment file ``seg_id``?

    The file is opened for the question and closed again (no descriptor is kept per segment).
    Gone, or not a file of ours: no owner. Any other error (no descriptor left, no memory):
    alive, since a segment is never reclaimed on a doubt. Never ask about a segment of this
    process: closing the descriptor would drop its owner lock."""
    try:
        fd = open_private(table.seg_path(seg_id))
    except (RingClosed, RingRefused):
        return False
    except OSError:
        return True
    try:
        return lock_held_elsewhere(fd, L.LOCK_OWNER)
    except OSError:
        return True
    finally:
        os.close(fd)


# ---- mappings ----------------------------------------------------------------------------------


class _Mapped:
    """64-bit field access on a shared mapping: acquire / release atomics with the extension, one
    8-byte access each through a uint64 memoryview without it.

    The mapping holds no descriptor (``fd`` is the caller's, -1 once closed). Python-side access
    goes through a gate (a re-entrant lock and a ``closed`` flag): :meth:`close` from another
    thread makes a later access raise :class:`RingClosed` instead of touching unmapped memory."""

    def __init__(self, path: str, fd: int, mp: M.Mapping, native: bool) -> None:
        self.path = path
        self.fd = fd
        self.map = mp
        self.mm = mp.mm
        self.q = mp.q
        self.size = mp.size
        self.native = native
        self.closed = False
        self._gate = threading.RLock()
        self._tlock = threading.Lock()
        self._spawn_tlock = threading.Lock()
        self.ptr: Any = None
        if native:
            assert _ffi is not None
            self.ptr = _ffi.cast("uint8_t *", mp.addr)
        st = os.fstat(fd)
        self.identity: Tuple[int, int] = (st.st_dev, st.st_ino)

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        """Held while Python reads or writes the mapping: it is not unmapped meanwhile."""
        with self._gate:
            if self.closed:
                raise RingClosed(errno.EBADF, "isstreamer: the ring is closed", self.path)
            yield

    def load(self, off: int) -> int:
        """Read a 64-bit field (acquire with the extension)."""
        with self._gate:
            if self.closed:
                raise RingClosed(errno.EBADF, "isstreamer: the ring is closed", self.path)
            if self.ptr is not None:
                return _lib.iss_load64(self.ptr, self.size, off)  # type: ignore[union-attr]
            return self.q[off >> 3]

    def store(self, off: int, value: int) -> None:
        """Write a 64-bit field (release with the extension)."""
        with self._gate:
            if self.closed:
                raise RingClosed(errno.EBADF, "isstreamer: the ring is closed", self.path)
            if self.ptr is not None:
                _lib.iss_store64(self.ptr, self.size, off, value)  # type: ignore[union-attr]
            else:
                self.q[off >> 3] = value & 0xFFFFFFFFFFFFFFFF

    def add(self, off: int, value: int) -> int:
        """Add to a 64-bit field: atomic with the extension; without it a plain read-modify-write,
        used only on single-writer fields or where a lost increment is harmless (flush nudges)."""
        with self._gate:
            if self.closed:
                raise RingClosed(errno.EBADF, "isstreamer: the ring is closed", self.path)
            if self.ptr is not None:
                return _lib.iss_add64(self.ptr, self.size, off, value)  # type: ignore[union-attr]
            v = (self.q[off >> 3] + value) & 0xFFFFFFFFFFFFFFFF
            self.q[off >> 3] = v
            return v

    def reset_after_fork(self) -> None:
        """(fork child) Fresh process-local locks: another thread of the parent may have held them."""
        self._gate = threading.RLock()
        self._tlock = threading.Lock()
        self._spawn_tlock = threading.Lock()

    def drop_fd(self) -> None:
        """Close the descriptor, keeping the mapping (a reader holding no record lock of the file)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        """Unmap and close the descriptor (idempotent; this process's record locks on the file go
        with it). A producer's segment is closed only after its guard (see Attachment.close)."""
        with self._gate:
            if self.closed:
                return
            self.closed = True
            self.ptr = None
            self.map.close()
            self.drop_fd()


def _create_file(path: str, size: int, reserve: int) -> int:
    """A new private file of ``size`` bytes (sparse), its first ``reserve`` bytes allocated:
    ENOSPC is an OSError here, never a SIGBUS at the first write. Removed again on failure."""
    fd = open_private(path, create=True)
    try:
        os.ftruncate(fd, size)
        M.reserve(fd, 0, min(size, reserve))
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return fd


class Ring(_Mapped):
    """A mapped ring-format file: header, bucket slots and segments (a producer's segment file is
    a ring with one segment and one unused bucket slot; tests and fuzz replays use more)."""

    def __init__(self, path: str, fd: int, mp: M.Mapping, native: bool) -> None:
        super().__init__(path, fd, mp, native)
        self.nsegs = _I.unpack_from(self.mm, L.H_NSEGS)[0]
        self.seg_data_size = _I.unpack_from(self.mm, L.H_SEG_DATA_SIZE)[0]
        self.nbuckets = _I.unpack_from(self.mm, L.H_NBUCKETS)[0]

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
        bytes of data (``path``: that name, else a fresh one in ``directory``). Its headers are
        allocated before they are written (a full file system raises ENOSPC); data pages are
        reserved by the producer (:meth:`Attachment.reserve`)."""
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
        fd = _create_file(path, size, L.seg_offset(nbuckets, seg, 0) + L.SEG_HDR_SIZE)
        try:
            mp = M.Mapping(fd, size)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        if native:
            assert _ffi is not None and _lib is not None
            rc = _lib.iss_ring_init(_ffi.cast("uint8_t *", mp.addr), size, nsegs, seg, nbuckets)
            if rc != 0:
                mp.close()
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise ValueError("isstreamer: cannot initialise ring (code %d)" % rc)
        else:
            struct.pack_into("=IIIIIIQ", mp.mm, L.H_VERSION, L.LAYOUT_VERSION, L.HDR_SIZE,
                             nsegs, seg, nbuckets, L.BUCKET_SIZE, size)
            _Q.pack_into(mp.mm, L.H_MAGIC, L.MAGIC)
        return cls(path, fd, mp, native)

    @classmethod
    def open(cls, path: str, native: Optional[bool] = None,
             identity: Optional[Tuple[int, int]] = None, keep_fd: bool = True) -> "Ring":
        """Map an existing ring-format file of ours (see :func:`open_private`); raises RingClosed
        when it no longer exists, RingRefused when it is not ours or not the file expected.
        ``keep_fd=False``: the descriptor is closed once mapped (a reader: the sender, stats())."""
        native = use_native() if native is None else native
        fd = open_private(path)
        try:
            mp = _map_checked(fd, path, L.MAGIC, identity)
            ring = cls(path, fd, mp, native)
        except BaseException:
            os.close(fd)
            raise
        if not keep_fd:
            ring.drop_fd()
        return ring

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

    def lost(self, index: int = 0) -> int:
        """Records of segment ``index`` the sender found unreadable (counted as dropped)."""
        return self.load(self.seg_offset(index) + L.S_LOST)

    def drop_counts(self, index: int = 0) -> List[int]:
        """Events refused by the producer of segment ``index`` (and records the sender found
        unreadable, as ``corrupt``), by reason (layout.DROP_REASONS)."""
        base = self.seg_offset(index) + L.S_DROPS
        out = [self.load(base + 8 * r) for r in range(len(L.DROP_REASONS))]
        out[L.D["corrupt"]] += self.lost(index)
        return out

    def waiting(self, index: int = 0) -> int:
        """Records published and not yet consumed."""
        return self.logged(index) - self.consumed(index)

    def fill(self, index: int = 0) -> float:
        """Fraction of segment ``index``'s data area holding unconsumed records."""
        return (self.head(index) - self.tail(index)) / self.seg_data_size

    def release(self, index: int, start: int, end: int, consumed: int) -> None:
        """(Sender) hand bytes ``[start, end)`` of segment ``index`` back to its producer, in an
        order that survives the sender's death at any step (see ``iss_seg_hdr`` in
        csrc/isstreamer.h): the journal (``rel_consumed``, then ``rel_end``), the pages, then
        ``consumed`` and ``tail`` (release: the producer sees the count before it reuses the
        space). A sender that dies anywhere in between leaves :meth:`recover` a state to finish."""
        base = self.seg_offset(index)
        faults.point("commit.begin")
        self.store(base + L.S_REL_CONSUMED, consumed)
        faults.point("commit.journal_consumed")
        self.store(base + L.S_REL_END, end)
        faults.point("commit.journal_end")
        self.release_pages(index, start, end)
        faults.point("commit.pages")
        self.store(base + L.S_CONSUMED, consumed)
        faults.point("commit.consumed")
        self.store(base + L.S_TAIL, end)
        faults.point("commit.tail")

    def recover(self, index: int = 0) -> bool:
        """(Sender, on first use of a segment) finish a commit that a killed sender left half done:
        its batch was delivered or spooled and its pages may be gone, so the records up to
        ``rel_end`` are released, never read again. True when there was one to finish."""
        base = self.seg_offset(index)
        tail = self.load(base + L.S_TAIL)
        end = self.load(base + L.S_REL_END)
        if end <= tail or end - tail > self.seg_data_size or end > self.load(base + L.S_HEAD):
            return False
        self.store(base + L.S_CONSUMED, self.load(base + L.S_REL_CONSUMED))
        self.store(base + L.S_TAIL, end)
        return True

    def count_lost(self, index: int, n: int) -> None:
        """(Sender) ``n`` records found unreadable and released: counted as dropped (``corrupt``)."""
        if n:
            self.add(self.seg_offset(index) + L.S_LOST, n)

    def counter(self, name: str) -> int:
        """Value of a header counter (see layout.COUNTERS)."""
        return self.load(L.H_COUNTERS + 8 * L.C[name])

    def count(self, name: str, n: int = 1) -> None:
        """Add to a header counter."""
        if n:
            self.add(L.H_COUNTERS + 8 * L.C[name], n)

    def release_pages(self, index: int, start: int, end: int) -> None:
        """(Sender) give the memory of consumed bytes [start, end) of segment ``index`` back to the
        system (whole pages only). Called inside :meth:`release`, before ``tail = end``: until
        then the producer cannot write or reserve there, so a page is never punched under it."""
        ds = self.seg_data_size
        if end - start < M.PAGE or getattr(self, "_no_punch", False):
            return
        data = self.seg_offset(index) + L.SEG_HDR_SIZE
        a, b = start % ds, end % ds
        spans = [(a, b)] if a < b else [(a, ds), (0, b)]
        if end - start >= ds:
            spans = [(0, ds)]
        with self.live():
            for lo, hi in spans:
                lo = -(-(data + lo) // M.PAGE) * M.PAGE
                hi = (data + hi) // M.PAGE * M.PAGE
                if hi > lo and not self.map.remove_pages(lo, hi - lo):
                    self._no_punch = True  # a file system without hole punching: keep the pages
                    return


def _map_checked(fd: int, path: str, magic: int, identity: Optional[Tuple[int, int]]) -> M.Mapping:
    """Map ``fd`` after checking its identity, size and header magic / version."""
    st = os.fstat(fd)
    if identity is not None and (st.st_dev, st.st_ino) != tuple(identity):
        raise RingRefused("isstreamer: refusing ring file %s: it is not the file this handle was made for "
                          "(replaced since)" % path)
    if st.st_size < L.HDR_SIZE or st.st_size % 8:
        raise RingRefused("isstreamer: refusing %s: not a ring file" % path)
    mp = M.Mapping(fd, st.st_size)
    if _Q.unpack_from(mp.mm, L.H_MAGIC)[0] != magic or _I.unpack_from(mp.mm, L.H_VERSION)[0] != L.LAYOUT_VERSION:
        mp.close()
        raise RingRefused("isstreamer: refusing %s: not a ring file of this version" % path)
    return mp


class Table(_Mapped):
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
    def create(cls, seg_data_size: int, meta: Dict[str, Any], directory: Optional[str] = None,
               native: Optional[bool] = None) -> "Table":
        """Create a new table file (0600, ``O_EXCL``, every page allocated first: a full file
        system raises ENOSPC, never a SIGBUS) in ``directory`` (default /dev/shm)."""
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
        fd = _create_file(path, size, size)
        try:
            mp = M.Mapping(fd, size)
            struct.pack_into("=IIIIIIQ", mp.mm, L.H_VERSION, L.LAYOUT_VERSION, L.HDR_SIZE, cls.NSLOTS,
                             seg_data_size // 8 * 8, cls.NBUCKETS, L.BUCKET_SIZE, size)
            struct.pack_into("=I", mp.mm, L.H_META, len(blob))
            mp.mm[L.H_META + 4: L.H_META + 4 + len(blob)] = blob
            _Q.pack_into(mp.mm, L.H_MAGIC, L.TABLE_MAGIC)
            return cls(path, fd, mp, native)
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
            mp = _map_checked(fd, path, L.TABLE_MAGIC, identity)
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
        with self.live():
            n = _I.unpack_from(self.mm, L.H_META)[0]
            blob = bytes(self.mm[L.H_META + 4: L.H_META + 4 + min(n, L.META_MAX)])
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
            _lock(self.fd, L.LOCK_TABLE, wait=True)
            try:
                yield
            finally:
                _unlock(self.fd, L.LOCK_TABLE)

    def sender_alive(self) -> bool:
        """True when a sender process holds the sender lock (the kernel's word, not a pid)."""
        fd = self.fd
        return fd >= 0 and lock_held_elsewhere(fd, L.LOCK_SENDER)

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
        with reentry.held(self._spawn_tlock):
            if self.fd < 0:
                raise RingClosed(errno.EBADF, "isstreamer: the ring is closed", self.path)
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

    def wake(self) -> bool:
        """Wake an idle sender (it set ``sleeping``): one datagram, never blocking, never SIGPIPE.
        False when nobody listens (no sender bound, or it died): the caller may check on it."""
        sock = self._wake_sock
        if sock is None:
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

    def free_slot(self, index: int, seg_id: int, seg: Optional["Ring"]) -> bool:
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
            with self.live():
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
        with self.live():
            state, klen, nlen = _BUCKET_HDR.unpack_from(self.mm, off)
            if state != 2 or klen > L.BUCKET_KEY_MAX or nlen > L.BUCKET_NAME_MAX:
                return None
            key = bytes(self.mm[off + 16: off + 16 + klen]).decode("utf-8", "replace")
            name = bytes(self.mm[off + 16 + L.BUCKET_KEY_MAX: off + 16 + L.BUCKET_KEY_MAX + nlen]).decode(
                "utf-8", "replace")
        return key, name

    def buckets_used(self) -> int:
        """Number of filled bucket slots."""
        return self.load(L.H_NBUCKETS_USED)


# ---- producers ----------------------------------------------------------------------------------

class SegmentState:
    """Process-local state shared by the pure-Python producers of one segment: the lock of its
    threads, whether the segment is closed (checked under the lock: the fallback's iss_guard),
    the threads holding the lock (a signal handler interrupting one must not wait for it: its
    record or drop is deferred) and what such handlers deferred."""

    __slots__ = ("lock", "closed", "busy", "deferred")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closed = False
        self.busy: set = set()
        self.deferred: List[Tuple[Any, ...]] = []  # (function, args) to run once the lock is free

    def interrupted(self) -> bool:
        """True when this thread holds the lock (we are in a signal handler that interrupted it)."""
        return threading.get_ident() in self.busy

    def run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` under the lock, this thread marked busy; then, the lock released, what
        signal handlers deferred meanwhile (in order, each under the lock in turn)."""
        me = threading.get_ident()
        self.busy.add(me)
        try:
            with self.lock:
                out = fn(*args)
        finally:
            self.busy.discard(me)
        while self.deferred and me not in self.busy:
            try:
                item = self.deferred.pop(0)
            except IndexError:
                break
            self.busy.add(me)
            try:
                with self.lock:
                    item[0](*item[1:])
            finally:
                self.busy.discard(me)
        return out


class PyProducer:
    """Pure-Python producer on one segment: same bytes and return codes as the C ``iss_put_*``
    functions (see ``put`` in csrc/ring.c)."""

    __slots__ = ("ring", "mm", "q", "seg", "data", "ds", "state", "bucket", "cached_tail", "dropping", "wake_q",
                 "woke", "reserve", "cached_reserved", "check_every", "check_at", "retry_s", "retry_at")

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
        self.reserve = False  # honour the segment's ``reserved`` (see iss_producer.reserve)
        self.cached_reserved = 0
        self.check_every = 0.0  # seconds; nonzero: CHECK once per interval
        self.check_at = 0.0
        self.retry_s = 0.0
        self.retry_at = 0.0

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
        if st.interrupted():
            st.deferred.append((self._write_deferred, rtype, key, num, s, epoch))
            return L.OK
        return st.run(self._write, rtype, key, num, s, epoch)

    def _write_deferred(self, rtype: int, key: bytes, num: Optional[bytes], s: bytes, epoch: float) -> None:
        """A record a signal handler logged while this thread held the lock: written now, or
        counted (a closed segment, a full one: the handler could not wait)."""
        rc = self._write(rtype, key, num, s, epoch)
        if rc not in (L.OK, L.WAKE, L.CHECK, L.DROPPED) and not self.state.closed:
            self._count(L.D["ring_full"])

    def _write(self, rtype: int, key: bytes, num: Optional[bytes], s: bytes, epoch: float) -> int:
        """(Under the state's lock) the put itself."""
        klen, slen = len(key), len(s)
        body = L.REC_HDR_SIZE + (8 if num is not None else 0) + klen + slen
        size = (body + 7) & ~7
        mm, q, ds, seg = self.mm, self.q, self.ds, self.seg
        if self.state.closed:
            return L.CLOSED
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
        if self.reserve and head + need > self.cached_reserved:
            self.cached_reserved = q[(seg + L.S_RESERVED) >> 3]
            if head + need > self.cached_reserved:
                if self.dropping:  # no space to reserve: drops cost a put, a retry once per retry_s
                    now = time.monotonic()
                    if now < self.retry_at:
                        q[(seg + L.S_DROPS + 8 * L.D["no_space"]) >> 3] += 1
                        return L.DROPPED
                    self.retry_at = now + self.retry_s
                return L.RESERVE
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
        if self.check_every:
            now = time.monotonic()
            if now >= self.check_at:
                self.check_at = now + self.check_every
                return L.CHECK
        return L.OK

    def count_drop(self, reason: int) -> None:
        """Count one event refused by this producer (deferred when a signal handler interrupted
        this thread while it holds the lock)."""
        st = self.state
        if st.interrupted():
            st.deferred.append((self._count, reason))
        else:
            st.run(self._count, reason)

    def _count(self, reason: int) -> None:
        if not self.state.closed:
            self.q[(self.seg + L.S_DROPS + 8 * reason) >> 3] += 1


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


RESERVE_CHUNK = 256 * 1024  # bytes of a segment's pages reserved ahead of its head at a time
RESERVE_RETRY = 0.1  # seconds between reservation attempts while the file system is full
_GUARDS: List[Any] = []  # every iss_guard ever made: a stale handle in another thread may point at one


class Attachment:
    """This process's segment of a ring, shared by every Streamer object of the process.

    ``slot`` and ``seg_id`` name its registration in the table (None for a bare ring file). The
    guard (C: ``iss_guard``; fallback: ``state``) lets :meth:`close` wait out a put in progress
    and refuse the later ones, so the mapping can then be unmapped."""

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
        seg_id = secrets.randbits(63) | 1
        path = table.seg_path(seg_id)
        ring = Ring.create(data_size, 1, nbuckets=1, native=native, path=path)
        att = None
        try:
            if not _lock(ring.fd, L.LOCK_OWNER, wait=False):
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

    def new_producer(self, bucket: int, check_every: float = 0.0):  # -> cdata iss_producer * | PyProducer
        """A producer handle with its own current bucket on this segment; ``check_every``
        seconds: the put returns CHECK once per interval (the caller checks the sender lives)."""
        reserve = self.slot is not None
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

    def close(self, table: Optional[Table]) -> bool:
        """Close the guard (a put in progress finishes first, later ones get CLOSED and are
        counted by the caller), then hand the segment back to the sender (its slot marked
        released: it drains and removes it; no event can land after that), unmap it and close
        its file (dropping the owner lock). True when unmapped.

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
        if interrupted:
            self.ring.drop_fd()
            return False
        self.ring.close()
        return True

    def forget_after_fork(self) -> None:
        """(fork child) The parent's segment: never written here; unmap it and close the file
        (the owner lock is the parent's: a child never holds it, closing changes nothing)."""
        self.state = SegmentState()
        self.state.closed = True
        self.ring.reset_after_fork()
        self.ring.close()


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
