"""Disk spool: batches the sender could not deliver, kept until they can be replayed.

Layout: ``<spool_dir>/<stream id>/`` per (API base, bucket key, account), holding
``meta.json`` (API base, bucket key and name, a SHA-256 prefix of the access key -- never the
key itself) and ``<time>-<pid>-<seq>.jsonl`` files. Each line of a ``.jsonl`` file is one JSON
array that the events API accepts as-is. A writer holds an exclusive ``flock`` on the file it
appends to (taken before the file gets its ``.jsonl`` name), so replayers skip it; replay
progress is kept in ``<file>.pos`` (byte offset), and a fully delivered file is deleted. A torn
last line (power cut) is skipped, never fatal; a failed write (disk full) is cut off the file.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Generator, List, Optional, Tuple

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
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
    return hashlib.sha256(access_key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def stream_id(api_base: str, bucket_key: str, fingerprint: str) -> str:
    """Directory name of one (API base, bucket, account) stream."""
    return hashlib.sha256(("%s\n%s\n%s" % (api_base, bucket_key, fingerprint)).encode("utf-8", "surrogatepass")).hexdigest()[:24]


@dataclass
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
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


class SpoolFull(OSError):
    """The spool reached its size cap."""


class SpoolWriter:
    """Appends batches to the spool, one open file per stream, crash-safe line by line."""

    def __init__(self, root: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._files: dict = {}  # stream dir -> (fd, path, bytes written)
        self._seq = 0
        self._size: Optional[int] = None

    def _stream_dir(self, api_base: str, bucket_key: str, bucket_name: str, fingerprint: str) -> str:
        d = os.path.join(self.root, stream_id(api_base, bucket_key, fingerprint))
        meta = os.path.join(d, "meta.json")
        if not os.path.exists(meta):
            os.makedirs(d, mode=0o700, exist_ok=True)
            tmp = meta + ".%d.tmp" % os.getpid()
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"api_base": api_base, "bucket_key": bucket_key, "bucket_name": bucket_name,
                           "access_key_sha256_prefix": fingerprint}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, meta)
        return d

    def write(self, api_base: str, bucket_key: str, bucket_name: str, fingerprint: str, body: bytes) -> str:
        """Append one batch (a JSON array, no newline inside) and make it durable. Returns the file."""
        if self._size is None:
            self._size = dir_size(self.root) if os.path.isdir(self.root) else 0
        if self._size + len(body) + 1 > self.max_bytes:
            raise SpoolFull("isstreamer: spool %s is full (cap %d bytes)" % (self.root, self.max_bytes))
        d = self._stream_dir(api_base, bucket_key, bucket_name, fingerprint)
        entry = self._files.get(d)
        if entry is None or entry[2] >= ROTATE_BYTES:
            if entry is not None:
                os.close(entry[0])
            self._seq += 1
            path = os.path.join(d, "%017.6f-%d-%d.jsonl" % (time.time(), os.getpid(), self._seq))
            # locked under a name replayers ignore, then renamed: a replayer never takes (and
            # deletes as empty) a file between its creation and its lock
            tmp = path + ".new"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.replace(tmp, path)
            entry = (fd, path, 0)
        fd, path, n = entry
        line = body.replace(b"\n", b"") + b"\n"
        try:
            done = 0
            while done < len(line):
                done += os.write(fd, line[done:])
            os.fsync(fd)
        except OSError:
            # disk full, file size limit...: cut the partial line off, or the next batch appended
            # would be glued to it and both would be unreadable
            try:
                os.ftruncate(fd, n)
            except OSError:
                pass
            raise
        self._files[d] = (fd, path, n + len(line))
        self._size += len(line)
        return path

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
        with open(os.path.join(stream_dir, "meta.json"), encoding="utf-8") as f:
            m = json.load(f)
        return StreamMeta(stream_dir, m["api_base"], m["bucket_key"], m.get("bucket_name", ""),
                          m.get("access_key_sha256_prefix", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def streams(root: str) -> List[StreamMeta]:
    """Every stream directory under root with a readable meta.json."""
    out: List[StreamMeta] = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for n in names:
        m = read_meta(os.path.join(root, n))
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

    def acquire(self) -> bool:
        """Lock the file for replay; False when a writer or another replayer holds it."""
        try:
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return False
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
            with open(self.pos_path, encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def lines(self) -> Generator[Tuple[int, bytes], None, None]:
        """(end offset, batch) for every complete, valid line not yet delivered."""
        with open(self.path, "rb") as f:
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
        """Record that everything before byte ``end`` is delivered."""
        tmp = self.pos_path + ".tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(str(end))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.pos_path)

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
        import orjson

        return isinstance(orjson.loads(body), list)
    except ValueError:
        return False
