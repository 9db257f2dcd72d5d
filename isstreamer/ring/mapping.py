"""Shared file mappings that hold no file descriptor, and page reservation.

``mmap.mmap`` keeps a duplicate of the file descriptor for its whole life (before Python 3.13),
so a process mapping N segment files held 2N descriptors. :class:`Mapping` maps with the C
library's ``mmap`` (through ctypes) and keeps none: the caller may close its descriptor right
after mapping. Where ctypes cannot reach ``mmap`` the standard module is used instead.

Pages of a sparse file on tmpfs are allocated when first written: on a full file system that
write is a SIGBUS that kills the process. :func:`reserve` allocates them first, so a full file
system is an ``OSError(ENOSPC)`` the caller can count.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import sys
from typing import Any, Optional

PAGE = mmap.PAGESIZE
_MADV_REMOVE = getattr(mmap, "MADV_REMOVE", None)  # Linux only


def _libc() -> Optional[Any]:
    if not sys.platform.startswith(("linux", "darwin", "freebsd", "netbsd", "openbsd")):
        return None
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        lib.munmap.restype = ctypes.c_int
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.madvise.restype = ctypes.c_int
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return lib
    except (AttributeError, OSError):  # pragma: no cover - no C library reachable
        return None


_LIBC = _libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


class Mapping:
    """``size`` bytes of ``fd`` mapped shared, read-write, holding no descriptor (see module doc);
    or (:meth:`anonymous`) process-local memory, for the thread mode; or (:meth:`borrow`) another
    view of a mapping that its owner unmaps.

    ``mm`` is a writable byte memoryview of it, ``q`` the same as uint64 words, ``addr`` its
    address. :meth:`close` unmaps: the caller guarantees nothing uses it any more."""

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        self._mmap: Optional[mmap.mmap] = None
        self._owner = True
        if _LIBC is not None:
            addr = _LIBC.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
            if addr is None or addr == _MAP_FAILED:
                e = ctypes.get_errno()
                raise OSError(e, "mmap: %s" % os.strerror(e))
            self._set(int(addr), memoryview((ctypes.c_char * size).from_address(int(addr))).cast("B"))
        else:  # pragma: no cover - platforms without a reachable C library (Windows: thread mode)
            self._mmap = mmap.mmap(fd, size)
            self._set(_address(self._mmap), memoryview(self._mmap))

    def _set(self, addr: int, mm: memoryview) -> None:
        self.addr = addr
        self.mm = mm
        self.q = mm.cast("Q")
        self.closed = False

    @classmethod
    def anonymous(cls, size: int) -> "Mapping":
        """``size`` bytes of zeroed memory of this process (no file): the thread mode's ring."""
        self = cls.__new__(cls)
        self.size = size
        self._owner = True
        self._mmap = mmap.mmap(-1, size)
        self._set(_address(self._mmap), memoryview(self._mmap))
        return self

    def borrow(self) -> "Mapping":
        """Another view of this memory; closing it releases the view only (the owner unmaps)."""
        return Mapping._view_of(self.addr, self.mm, self.size)

    @classmethod
    def _view_of(cls, addr: int, mm: memoryview, size: int) -> "Mapping":
        self = cls.__new__(cls)
        self.size = size
        self._owner = False
        self._mmap = None
        self._set(addr, memoryview(mm))
        return self

    def remove_pages(self, off: int, length: int) -> bool:
        """Give the pages of ``[off, off + length)`` (page-aligned) back to the file system
        (``MADV_REMOVE``: a hole in the file); False where that is not supported (not Linux,
        or not a shared file mapping)."""
        if _LIBC is None or _MADV_REMOVE is None or self._mmap is not None or not sys.platform.startswith("linux"):
            return False
        return _LIBC.madvise(self.addr + off, length, _MADV_REMOVE) == 0

    def close(self) -> None:
        """Unmap (idempotent; a borrowed view only lets go). Every view is released first."""
        if self.closed:
            return
        self.closed = True
        self.q.release()
        self.mm.release()
        if not self._owner:
            return
        if self._mmap is not None:
            self._mmap.close()
        elif _LIBC is not None:
            _LIBC.munmap(self.addr, self.size)


def _address(mm: mmap.mmap) -> int:
    """The address of a ``mmap.mmap``'s memory (the temporary ctypes view is let go at once)."""
    view = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(view)
    finally:
        del view


def reserve(fd: int, offset: int, length: int) -> None:
    """Allocate the file's pages for ``[offset, offset + length)`` without changing its data;
    ``OSError`` (ENOSPC) when the file system is full. Never overwrites a byte of data."""
    if length <= 0:
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, offset, length)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    # No fallocate: write zeros into the range. The caller reserves only bytes nothing is
    # written to before the reservation is published (see Attachment.reserve).
    zeros = bytes(min(length, 1 << 20))
    done = 0
    while done < length:
        n = os.pwrite(fd, zeros[: min(len(zeros), length - done)], offset + done)
        if n <= 0:  # pragma: no cover - a short write of zero bytes
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += n
