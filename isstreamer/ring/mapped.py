"""A mapped ring file: 64-bit field access (acquire / release atomics with the extension, one
8-byte access each without it) behind a gate, so that closing it while another thread uses it
fails that use (RingClosed) instead of touching unmapped memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from typing import Any, Iterator, Tuple

from .. import safefile
from . import mapping as M
from .backend import ffi as _ffi, lib as _lib
from .files import RingClosed, open_private


class Mapped:
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
        if fd >= 0:
            st = os.fstat(fd)
            self.identity: Tuple[int, int] = (st.st_dev, st.st_ino)
        else:  # process-local memory (the thread mode): no file
            self.identity = (0, mp.addr)

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


def create_file(path: str, size: int, reserve: int) -> int:
    """A new private file of ``size`` bytes (sparse), its first ``reserve`` bytes allocated:
    ENOSPC is an OSError here, never a SIGBUS at the first write. Removed again on failure."""
    fd = open_private(path, create=True)
    try:
        os.ftruncate(fd, size)
        M.reserve(fd, 0, min(size, reserve))
    except BaseException:
        safefile.discard(fd, path)
        raise
    return fd
