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
import ctypes.util
import errno
import mmap
import os
import sys
from typing import Any, Optional

PAGE = mmap.PAGESIZE
_MADV_REMOVE = getattr(mmap, "MADV_REMOVE", 9)


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
    """``size`` bytes of ``fd`` mapped shared, read-write, holding no descriptor (see module doc).

    ``mm`` is a writable byte memoryview of it, ``q`` the same as uint64 words, ``addr`` its
    address. :meth:`close` unmaps: the caller guarantees nothing uses it any more."""

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        self._mmap: Optional[mmap.mmap] = None
        if _LIBC is not None:
            addr = _LIBC.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
            if addr is None or addr == _MAP_FAILED:
                e = ctypes.get_errno()
                raise OSError(e, "mmap: %s" % os.strerror(e))
            self.addr = int(addr)
            buf = (ctypes.c_char * size).from_address(self.addr)
            self.mm = memoryview(buf).cast("B")
        else:  # pragma: no cover - platforms without a reachable C library
            self._mmap = mmap.mmap(fd, size)
            self.mm = memoryview(self._mmap)
            self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self._mmap))
        self.q = self.mm.cast("Q")
        self.closed = False

    def remove_pages(self, off: int, length: int) -> bool:
        """Give the pages of ``[off, off + length)`` (page-aligned) back to the file system
        (``MADV_REMOVE``: a hole in the file); False where that is not supported."""
        if _LIBC is None or not sys.platform.startswith("linux"):
            return False
        return _LIBC.madvise(self.addr + off, length, _MADV_REMOVE) == 0

    def close(self) -> None:
        """Unmap (idempotent). Every view of the mapping is released first."""
        if self.closed:
            return
        self.closed = True
        self.q.release()
        self.mm.release()
        if self._mmap is not None:
            self._mmap.close()
        elif _LIBC is not None:
            _LIBC.munmap(self.addr, self.size)


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
