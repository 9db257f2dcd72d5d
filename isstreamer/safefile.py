"""Files that hold user data, opened safely: the one module every writer of private files uses.

Rules (the ring, the spool, the rejected-events file, the collector's database and its key
files, the offline CSV all follow them):

* every open uses ``O_NOFOLLOW`` and ``O_CLOEXEC``: a planted symbolic link is never followed;
* new files are created ``0600`` (exclusively where a name could be planted), directories
  ``0700``, parents included;
* an existing file is used only when it is a regular file of this user that no other user can
  read or write (:func:`check_private_fd`); a directory only when it is ours and not writable by
  group or others (:func:`check_private_dir`). Anything else is refused with a message that says
  why (:class:`Refused`).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

try:  # POSIX: flock, and a read-only open made non-blocking to refuse FIFOs
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows: byte-range locks
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class Refused(ValueError):
    """A path is not a private file or directory of this user (symlink, owner, mode, type)."""


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1


def open_nofollow(path: str, flags: int, mode: int = 0o600, regular: bool = False) -> int:
    """``os.open`` with O_NOFOLLOW and O_CLOEXEC; a read-only open (any open when ``regular``)
    must find a regular file (a planted FIFO or device is refused instead of blocking)."""
    readonly = (flags & (os.O_WRONLY | os.O_RDWR)) == 0 or regular
    nonblock = _NONBLOCK if readonly and fcntl is not None else 0
    fd = os.open(path, flags | NOFOLLOW | CLOEXEC | nonblock, mode)
    if readonly:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            if nonblock:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~nonblock)
        except OSError:
            os.close(fd)
            raise
    return fd


def why_not_ours(st: os.stat_result) -> Optional[str]:
    """Why a file with this ``stat`` is not a regular file of this user (None when it is)."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    uid = _euid()
    if uid >= 0 and st.st_uid != uid:
        return "owned by uid %d, not by this user (%d)" % (st.st_uid, uid)
    return None


def why_not_private(st: os.stat_result) -> Optional[str]:
    """Why a file with this ``stat`` is not a private file of ours (None when it is)."""
    why = why_not_ours(st)
    if why is None and st.st_mode & 0o077:
        why = "mode %o lets other users in (0600 expected)" % (st.st_mode & 0o777)
    return why


def _refuse_link(exc: OSError, path: str) -> Exception:
    """The error to raise for a failed open: :class:`Refused` for a symlink or a non-regular file."""
    if exc.errno == errno.ELOOP:
        return Refused("isstreamer: refusing %s: it is a symbolic link" % path)
    if exc.errno in (errno.EINVAL, errno.ENXIO) and os.path.lexists(path):
        return Refused("isstreamer: refusing %s: not a regular file" % path)
    return exc


def _own_file(fd: int, path: str, single_link: bool) -> os.stat_result:
    """The fd's stat, or :class:`Refused` unless it is a regular file of this user (with no
    other hard link when ``single_link``)."""
    st = os.fstat(fd)
    why = why_not_ours(st)
    if why is not None:
        raise Refused("isstreamer: refusing %s: %s" % (path, why))
    if single_link and st.st_nlink > 1:
        raise Refused(
            "isstreamer: refusing %s: it has %d hard links (another name for another file)" % (path, st.st_nlink)
        )
    return st


def make_private(path: str, create: bool = False) -> None:
    """Check an existing file without following a symlink: a regular file of this user (one an
    older version made 0644 is made 0600), else :class:`Refused`. A missing file is fine, or is
    created 0600 (exclusively) when ``create``."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        if create:
            os.close(open_private(path, os.O_RDWR, create=True))
        return
    except OSError as exc:
        raise _refuse_link(exc, path) from exc
    try:
        if stat.S_IMODE(_own_file(fd, path, single_link=False).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def open_private_output(path: str, truncate: bool = False) -> int:
    """Open ``path`` to append to it, created 0600 when missing, never through a symlink. An
    existing file must be a regular file of this user with no other hard link (one an older
    version made 0644 is made 0600), else :class:`Refused`; ``truncate`` empties it once it
    passed these checks (so a planted file is refused, never emptied)."""
    try:
        fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, regular=True)
    except OSError as exc:
        raise _refuse_link(exc, path) from exc
    try:
        if stat.S_IMODE(_own_file(fd, path, single_link=True).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private_text(path: str) -> str:
    """The text of a secret file (a key file): it must be a regular file of this user that no
    other user may read or write (:func:`open_private`), never reached through a symlink."""
    fd = open_private(path, os.O_RDONLY)
    with os.fdopen(fd, encoding="utf-8") as f:
        return f.read()


def check_parents(path: str) -> None:
    """Refuse (:class:`Refused`) a path that another user could redirect: each directory above
    it must be owned by root or this user, and sticky (like /tmp) if others may write to it."""
    uid = _euid()
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        st = os.stat(parent)
        if st.st_uid not in (0, uid) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            raise Refused(
                "refusing %s: the directory %s above it is %s"
                % (
                    path,
                    parent,
                    "owned by uid %d" % st.st_uid
                    if st.st_uid not in (0, uid)
                    else "writable by other users without the sticky bit (mode %04o)" % stat.S_IMODE(st.st_mode),
                )
            )
        up = os.path.dirname(parent)
        if up == parent:
            return
        parent = up


def check_private_fd(fd: int, path: str) -> None:
    """Raise :class:`Refused` unless ``fd`` is a regular 0600 file of this user."""
    why = why_not_private(os.fstat(fd))
    if why:
        raise Refused("isstreamer: refusing %s: %s" % (path, why))


def open_private(path: str, flags: int = os.O_RDWR, create: bool = False) -> int:
    """Open a private file: never through a symlink; ``create`` makes a new one (``O_EXCL``,
    0600); an existing one must pass :func:`check_private_fd`. ``FileNotFoundError`` when it
    does not exist (and ``create`` is False); :class:`Refused` when it is not ours."""
    flags |= (os.O_CREAT | os.O_EXCL) if create else 0
    try:
        fd = open_nofollow(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("isstreamer: refusing %s: it is a symbolic link" % path) from exc
        raise
    try:
        check_private_fd(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_or_create_private(path: str, flags: int = os.O_RDWR) -> int:
    """Open ``path`` if it is a private file of ours, else create it (0600, exclusively, so a
    name planted meanwhile is never used); :class:`Refused` for a file that is not ours."""
    for _ in range(3):
        try:
            return open_private(path, flags)
        except FileNotFoundError:
            pass
        try:
            return open_private(path, flags, create=True)
        except FileExistsError:
            continue
    raise Refused("isstreamer: refusing %s: it keeps appearing and disappearing" % path)


def create_exclusive(path: str) -> int:
    """Create ``path`` anew for writing (O_EXCL, 0600); a stale file or planted symlink there is
    removed first (unlinking a symlink never touches its target)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return open_nofollow(path, flags)
    except FileExistsError:
        os.unlink(path)
        return open_nofollow(path, flags)


def discard(fd: int, path: str) -> None:
    """Undo a half-made file: close ``fd`` (unless negative) and remove ``path``, errors ignored
    (the caller is already failing with the error that matters)."""
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.unlink(path)
    except OSError:
        pass


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


def replace_private(path: str, data: bytes) -> None:
    """Atomically make ``path`` hold ``data`` (0600, fsynced): an exclusive temporary file
    renamed over it. The temporary file is removed on failure."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = create_exclusive(tmp)
    try:
        write_all(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        discard(fd, tmp)
        raise


def append_private(path: str, data: bytes) -> None:
    """Append ``data`` to ``path`` (created 0600, never through a symlink; its directory is
    checked by :func:`ensure_private_dir`, and created 0700 when missing)."""
    ensure_private_dir(os.path.dirname(path) or ".")
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("isstreamer: refusing %s: not a regular file" % path)
        if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == _euid():
            os.fchmod(fd, 0o600)  # made by an older version: 0644
        write_all(fd, data)
    finally:
        os.close(fd)


def makedirs_private(path: str) -> None:
    """``os.makedirs`` where every directory created is 0700 (not only the last one)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.lexists(parent):
        makedirs_private(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def check_private_dir(path: str, what: str = "directory") -> None:
    """Refuse (:class:`Refused`, a clear message) a directory that is a symlink, is owned by
    another user or is writable by group or others; NotADirectoryError when it is something else."""
    st = os.lstat(path)
    why = ""
    uid = _euid()
    if stat.S_ISLNK(st.st_mode):
        why = "it is a symbolic link (give the real directory)"
    elif not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    elif uid >= 0 and st.st_uid != uid:
        why = "it is owned by uid %d, not by this user (uid %d)" % (st.st_uid, uid)
    elif st.st_mode & 0o022:
        why = "it is writable by other users (mode %04o; chmod go-w it)" % stat.S_IMODE(st.st_mode)
    if why:
        raise Refused("refusing %s %s: %s" % (what, path, why))


def ensure_private_dir(path: str, what: str = "directory") -> None:
    """Create ``path`` (0700, parents too) if missing, then :func:`check_private_dir` it."""
    makedirs_private(path)
    check_private_dir(path, what)


def lock_file(fd: int, blocking: bool = True) -> bool:
    """Take an exclusive lock on the whole open file ``fd`` (``flock``; on Windows a lock on its
    first byte), held until it is closed; False when another holder has it and ``blocking`` is
    off. Where neither exists (a Python without them), there is no lock to take: True."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            return True
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
    if msvcrt is not None:  # pragma: no cover - Windows
        pos = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
        finally:
            os.lseek(fd, pos, os.SEEK_SET)
    return True
