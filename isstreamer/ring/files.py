"""Ring files: where they live, how they are opened (never through a symlink, only ours) and the
POSIX record locks that say who owns what (dropped by the kernel when a process dies, never
inherited by a fork child, immune to pid reuse and pid namespaces).

This module is the one place the process model meets ``fcntl``: where it is missing (Windows),
importing works and :data:`RECORD_LOCKS` is False (isstreamer.mode then picks the thread mode).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import sys
from typing import Any

from .. import lazy, safefile
from . import layout as L

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

RECORD_LOCKS = fcntl is not None and hasattr(fcntl, "lockf")


class RingClosed(OSError):
    """The ring file is gone: every user closed it and the sender removed it."""


class RingRefused(ValueError):
    """A file at a ring path is not ours (owner, mode, type or identity): it is never used."""


def default_ring_dir() -> str:
    """Where rings are created: ``$ISSTREAMER_RING_DIR``, else /dev/shm (shared memory, Linux),
    else a private directory of this user under the temp directory (created 0700 and checked:
    macOS and the BSDs, where segments are ordinary files)."""
    for d in (os.environ.get("ISSTREAMER_RING_DIR", ""), "/dev/shm"):
        if d and os.path.isdir(d) and os.access(d, os.W_OK):
            return d
    return private_ring_dir()


def private_ring_dir() -> str:
    """``<temp>/isstreamer-<uid>``: 0700, ours (refused otherwise: see safefile)."""
    tempfile = lazy.load("tempfile")  # only where /dev/shm is missing (start-up time)
    uid = os.geteuid() if hasattr(os, "geteuid") else 0
    d = os.path.join(tempfile.gettempdir(), "isstreamer-%d" % uid)
    safefile.ensure_private_dir(d, "ring directory")
    return d


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


def record_lock(fd: int, start: int, wait: bool) -> bool:
    """Take a POSIX record lock on one byte; False when another process holds it (``wait=False``)."""
    if fcntl is None:
        raise OSError(errno.ENOSYS, "isstreamer: no POSIX record locks here (the thread mode runs instead)")
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB), 1, start)
        return True
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise


def record_unlock(fd: int, start: int) -> None:
    """Drop this process's record lock on one byte (nothing where there are none)."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, start)


# struct flock, as the kernel lays it out: Linux: l_type l_whence l_start l_len l_pid; macOS and
# the BSDs: l_start l_len l_pid l_type l_whence (elsewhere the lock is probed by taking it)
if sys.platform.startswith("linux"):
    _FLOCK, _TYPE_FIELD = struct.Struct("@hhqqi"), 0
elif sys.platform.startswith(("darwin", "freebsd", "netbsd", "openbsd", "dragonfly")):
    _FLOCK, _TYPE_FIELD = struct.Struct("@qqihh"), 3
else:
    _FLOCK, _TYPE_FIELD = None, 0


def lock_held_elsewhere(fd: int, start: int) -> bool:
    """True when another process holds a record lock on byte ``start`` of ``fd``'s file.

    ``F_GETLK`` asks the kernel without taking the lock, so a probe never makes a starting sender
    believe its ring already has one."""
    if _FLOCK is not None and fcntl is not None:
        if _TYPE_FIELD == 0:
            arg = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, 1, 0)
        else:
            arg = _FLOCK.pack(start, 1, 0, fcntl.F_WRLCK, os.SEEK_SET)
        try:
            got = fcntl.fcntl(fd, fcntl.F_GETLK, arg + bytes(16))
            return _FLOCK.unpack_from(got)[_TYPE_FIELD] != fcntl.F_UNLCK
        except OSError:  # pragma: no cover - an F_GETLK this platform does not take
            pass
    if record_lock(fd, start, wait=False):  # take it and drop it (a starting sender retries)
        record_unlock(fd, start)
        return False
    return True


def segment_owner_alive(table: Any, seg_id: int) -> bool:
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
