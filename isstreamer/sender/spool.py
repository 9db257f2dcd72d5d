"""Disk spool: batches the sender could not deliver, kept until they can be replayed.

Layout: ``<spool_dir>/<stream id>/`` per (API base, bucket key, account), holding
``meta.json`` (API base, bucket key and name, a SHA-256 prefix of the access key -- never the
key itself) and ``<time>-<pid>-<seq>.jsonl`` files. Each line of a ``.jsonl`` file is one JSON
array that the events API accepts as-is. A writer holds an exclusive lock (``flock``) on the file it
appends to (taken before the file gets its ``.jsonl`` name), so replayers skip it; replay
progress is kept in ``<file>.pos`` (byte offset), and a fully delivered file is deleted. A torn
last line (power cut) is skipped, never fatal; a failed write (disk full) is cut off the file.

Safety: files are created 0600 and directories 0700; every open uses O_NOFOLLOW and temporary
files O_EXCL, so a planted symlink is never followed; a spool root that is a symlink, owned by
another user or writable by others is refused (:func:`check_root`).
"""

from __future__ import annotations

import json
import os
import stat
import time
from typing import Callable, Generator, List, Optional, Tuple

from .. import ids, lazy, safefile
from ..options import DEFAULTS
from ..record import record

ROTATE_BYTES = 4 * 1024 * 1024
ENV_SPOOL_DIR = "ISSTREAMER_SPOOL_DIR"


def default_spool_dir() -> str:
    """``$ISSTREAMER_SPOOL_DIR``, else ``$XDG_STATE_HOME/isstreamer/spool``, else ``~/.local/state/...``."""
    env = os.environ.get(ENV_SPOOL_DIR)
    if env:
        return env
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "isstreamer", "spool")


def key_fingerprint(access_key: str) -> str:
    """A short SHA-256 prefix of the access key: tells accounts apart, reveals nothing."""
    return ids.sha256_hex(access_key.encode("utf-8", "surrogatepass"))[:16]


def stream_id(api_base: str, bucket_key: str, fingerprint: str) -> str:
    """Directory name of one (API base, bucket, account) stream."""
    return ids.sha256_hex(("%s\n%s\n%s" % (api_base, bucket_key, fingerprint)).encode("utf-8", "surrogatepass"))[:24]


@record()
class StreamMeta:
    """What a spool stream directory is for."""

    path: str
    api_base: str
    bucket_key: str
    bucket_name: str
    fingerprint: str


def dir_size(root: str) -> int:
    """Bytes of every spool file under root."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


class SpoolFull(OSError):
    """The spool reached its size cap."""


class SpoolUnsafe(OSError):
    """The spool root is a symlink, owned by another user or writable by others."""


class SpoolBackoff(OSError):
    """A spool write failed moments ago; writes are paused for a while (nothing was touched)."""


# ---- files the spool creates: see isstreamer.safefile ------------------------------------------

open_nofollow = safefile.open_nofollow
replace_private = safefile.replace_private
append_private = safefile.append_private
makedirs_private = safefile.makedirs_private


def check_root(root: str) -> None:
    """Refuse (SpoolUnsafe, a clear message) a spool root that is a symlink, is owned by another
    user or is writable by group or others; NotADirectoryError when it is something else."""
    try:
        safefile.check_private_dir(root, "spool directory")
    except safefile.Refused as exc:
        raise SpoolUnsafe(str(exc)) from None


def ensure_root(root: str) -> None:
    """Create the spool root (0700, parents too) if missing, then :func:`check_root` it."""
    makedirs_private(root)
    check_root(root)


class SpoolWriter:
    """Appends batches to the spool, one open file per stream, crash-safe line by line.

    A write that fails (disk full...) leaves nothing behind: a file it opened is closed and
    removed, a partial line is cut off; further writes fail fast (``SpoolBackoff``) for a
    backoff that doubles from ``ERROR_BACKOFF`` to ``ERROR_BACKOFF_MAX`` until one succeeds.
    """

    ERROR_BACKOFF = 0.05
    ERROR_BACKOFF_MAX = 2.0

    def __init__(
        self, root: str, max_bytes: int = DEFAULTS.spool_max_bytes, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.clock = clock
        self._files: dict = {}  # stream dir -> (fd, path, bytes written)
        self._seq = 0
        self._size: Optional[int] = None
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self._last_error: Optional[OSError] = None

    def _stream_dir(self, api_base: str, bucket_key: str, bucket_name: str, fingerprint: str) -> str:
        ensure_root(self.root)
        d = os.path.join(self.root, stream_id(api_base, bucket_key, fingerprint))
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(d).st_mode):
                raise SpoolUnsafe("refusing spool stream %s: not a directory" % d) from None
        meta = os.path.join(d, "meta.json")
        if not os.path.lexists(meta):
            replace_private(
                meta,
                json.dumps(
                    {
                        "api_base": api_base,
                        "bucket_key": bucket_key,
                        "bucket_name": bucket_name,
                        "access_key_sha256_prefix": fingerprint,
                    }
                ).encode(),
            )
        return d

    @property
    def retry_at(self) -> float:
        """The clock time before which writes are paused after a failed write (meaningless after a
        successful one: writes are paused only while the last write failed)."""
        return self._retry_at

    def write(self, api_base: str, bucket_key: str, bucket_name: str, fingerprint: str, body: bytes) -> str:
        """Append one batch (a JSON array, no newline inside) and make it durable. Returns the file."""
        if self.clock() < self._retry_at and self._last_error is not None:
            e = self._last_error
            pause = "spool writes paused for %.2gs" % self._retry_delay
            if e.errno is None:
                raise SpoolBackoff("%s (%s)" % (e, pause))
            raise SpoolBackoff(e.errno, "%s (%s)" % (e.strerror, pause), e.filename)
        try:
            path = self._write(api_base, bucket_key, bucket_name, fingerprint, body)
        except SpoolFull:
            raise
        except OSError as exc:
            self._last_error = exc
            self._retry_delay = min(self.ERROR_BACKOFF_MAX, self._retry_delay * 2 or self.ERROR_BACKOFF)
            self._retry_at = self.clock() + self._retry_delay
            raise
        self._retry_delay = 0.0
        self._last_error = None
        return path

    def _write(self, api_base: str, bucket_key: str, bucket_name: str, fingerprint: str, body: bytes) -> str:
        if self._size is None:
            self._size = dir_size(self.root) if os.path.isdir(self.root) else 0
        if self._size + len(body) + 1 > self.max_bytes:
            raise SpoolFull("isstreamer: spool %s is full (cap %d bytes)" % (self.root, self.max_bytes))
        d = self._stream_dir(api_base, bucket_key, bucket_name, fingerprint)
        entry = self._files.get(d)
        opened = entry is None or entry[2] >= ROTATE_BYTES
        if opened:
            if entry is not None:
                del self._files[d]
                os.close(entry[0])
            entry = self._open_new(d)
        fd, path, n = entry
        line = body.replace(b"\n", b"") + b"\n"
        try:
            safefile.write_all(fd, line)
            os.fsync(fd)
        except OSError:
            # disk full, file size limit...: nothing may stay behind. A file opened for this
            # write is closed and removed; else the partial line is cut off (or the next batch
            # appended would be glued to it and both would be unreadable)
            keep = False
            if not opened:
                try:
                    os.ftruncate(fd, n)
                    keep = True
                except OSError:
                    pass
            if not keep:
                self._files.pop(d, None)
                if opened:
                    safefile.discard(fd, path)
                else:
                    os.close(fd)
            raise
        self._files[d] = (fd, path, n + len(line))
        self._size += len(line)
        return path

    def _open_new(self, d: str) -> Tuple[int, str, int]:
        self._seq += 1
        path = os.path.join(d, "%017.6f-%d-%d.jsonl" % (time.time(), os.getpid(), self._seq))
        # locked under a name replayers ignore, then renamed: a replayer never takes (and
        # deletes as empty) a file between its creation and its lock
        tmp = path + ".new"
        fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        try:
            safefile.lock_file(fd)
            os.replace(tmp, path)
        except OSError:
            safefile.discard(fd, tmp)
            raise
        return fd, path, 0

    @property
    def open_files(self) -> int:
        """How many spool files this writer holds open (and locked)."""
        return len(self._files)

    def close_all(self) -> None:
        """Close (and unlock) every open spool file so replayers may take them."""
        for fd, _, _ in self._files.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._files.clear()

    def forget_size(self) -> None:
        """Re-measure the spool size on the next write (after replay removed files)."""
        self._size = None


def read_meta(stream_dir: str) -> Optional[StreamMeta]:
    """The meta of a stream directory, or None when missing or unreadable."""
    try:
        with os.fdopen(open_nofollow(os.path.join(stream_dir, "meta.json"), os.O_RDONLY), "rb") as f:
            m = json.loads(f.read(65536))
        return StreamMeta(
            stream_dir, m["api_base"], m["bucket_key"], m.get("bucket_name", ""), m.get("access_key_sha256_prefix", "")
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def streams(root: str) -> List[StreamMeta]:
    """Every stream directory under root with a readable meta.json (symlinks are skipped)."""
    out: List[StreamMeta] = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for n in names:
        p = os.path.join(root, n)
        try:
            if not stat.S_ISDIR(os.lstat(p).st_mode):  # a symlink to a directory is not a stream
                continue
        except OSError:
            continue
        m = read_meta(p)
        if m is not None:
            out.append(m)
    return out


def pending_files(stream_dir: str) -> List[str]:
    """The stream's .jsonl files, oldest first."""
    try:
        return sorted(os.path.join(stream_dir, f) for f in os.listdir(stream_dir) if f.endswith(".jsonl"))
    except OSError:
        return []


class ReplayFile:
    """One spool file taken for replay: exclusive lock, resumable position, torn lines skipped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pos_path = path + ".pos"
        self.fd = -1
        self.torn = 0
        self.error: Optional[OSError] = None  # why acquire() failed to open the file

    def acquire(self) -> bool:
        """Lock the file for replay; False when a writer or another replayer holds it."""
        try:
            self.fd = open_nofollow(self.path, os.O_RDONLY)
        except OSError as exc:
            self.error = exc
            return False
        try:
            if not safefile.lock_file(self.fd, blocking=False):
                raise OSError("locked by a writer or another replayer")
            # the file may have been finished and deleted between our open and our lock
            if os.stat(self.path).st_ino != os.fstat(self.fd).st_ino:
                raise OSError("replaced")
        except OSError:
            os.close(self.fd)
            self.fd = -1
            return False
        return True

    def position(self) -> int:
        """Byte offset up to which the file is already delivered (from ``<file>.pos``)."""
        try:
            with os.fdopen(open_nofollow(self.pos_path, os.O_RDONLY), "rb") as f:
                return int(f.read(64).strip() or 0)
        except (OSError, ValueError):
            return 0

    def lines(self) -> Generator[Tuple[int, bytes], None, None]:
        """(end offset, batch) for every complete, valid line not yet delivered."""
        with os.fdopen(open_nofollow(self.path, os.O_RDONLY), "rb") as f:
            f.seek(self.position())
            while True:
                line = f.readline()
                if not line:
                    return
                end = f.tell()
                if not line.endswith(b"\n"):
                    self.torn += 1  # torn last line: a write cut short by a crash
                    return
                body = line.rstrip(b"\n")
                if not _is_array(body):
                    self.torn += 1
                    self.mark(end)
                    continue
                yield end, body

    def mark(self, end: int) -> None:
        """Record that everything before byte ``end`` is delivered (raises OSError when the mark
        cannot be written, e.g. disk full: the caller must then keep the file)."""
        replace_private(self.pos_path, str(end).encode("ascii"))

    def finish(self) -> None:
        """Delete the file and its position: every line is delivered (or was torn)."""
        for p in (self.path, self.pos_path):
            try:
                os.unlink(p)
            except OSError:
                pass
        self.release()

    def release(self) -> None:
        """Unlock without deleting."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _is_array(body: bytes) -> bool:
    try:
        orjson = lazy.load("orjson")
        return isinstance(orjson.loads(body), list)
    except ValueError:
        return False
