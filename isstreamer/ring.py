"""The shared-memory ring: one file, mapped by every process that uses a Streamer.

Layout and record format are defined in ``csrc/isstreamer.h`` (mirrored in :mod:`layout`).
Two backends write the same bytes: the cffi extension (``isstreamer._native``) and a
pure-Python one (``struct`` on the mapping) used when the extension is missing or disabled
with ``ISSTREAMER_NO_EXTENSION=1``. Slow paths that several processes may race on (claiming a
segment, adding a bucket, reclaiming a segment) run under an ``flock`` of the ring file.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import struct
import tempfile
import threading
from typing import Iterator, Optional, Tuple

from . import layout as L

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


def native_available() -> bool:
    """True when the C extension was built and imported."""
    return _lib is not None


def use_native() -> bool:
    """True when the C extension should be used (built, and not disabled by the environment)."""
    return _lib is not None and os.environ.get(ENV_NO_EXTENSION, "") in ("", "0")


class RingClosed(OSError):
    """The ring file is gone: every user closed it and the sender removed it."""


def _default_dir() -> str:
    for d in (os.environ.get("ISSTREAMER_RING_DIR", ""), "/dev/shm"):
        if d and os.path.isdir(d) and os.access(d, os.W_OK):
            return d
    return tempfile.gettempdir()


class Ring:
    """A mapping of a ring file, with the header, bucket table and segment operations."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, native: bool) -> None:
        self.path = path
        self.fd = fd
        self.mm = mm
        self.size = len(mm)
        self.native = native
        self.nsegs = _I.unpack_from(mm, L.H_NSEGS)[0]
        self.seg_data_size = _I.unpack_from(mm, L.H_SEG_DATA_SIZE)[0]
        self.nbuckets = _I.unpack_from(mm, L.H_NBUCKETS)[0]
        self._tlock = threading.Lock()
        self.users = 0  # Streamer objects of this process on this mapping (see streamer.py)
        # 64-bit fields without the extension: an aligned memoryview of uint64 reads and writes
        # each field with one 8-byte access (struct.pack_into zero-fills before writing, which
        # another process could observe as a transient 0).
        self.q = memoryview(mm).cast("Q")
        self._buf = None
        self.ptr = None
        if native:
            assert _ffi is not None
            self._buf = _ffi.from_buffer(mm)
            self.ptr = _ffi.cast("uint8_t *", self._buf)

    # ---- creation ----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        ring_size: int,
        max_producers: int,
        nbuckets: int = 1024,
        directory: Optional[str] = None,
        native: Optional[bool] = None,
    ) -> "Ring":
        """Create and initialise a new ring file; the caller becomes its creator."""
        native = use_native() if native is None else native
        if max_producers < 1:
            raise ValueError("isstreamer: max_producers must be at least 1")
        seg = max(L.SEG_DATA_MIN, (ring_size // max_producers) // 8 * 8)
        size = L.layout_size(max_producers, seg, nbuckets)
        directory = directory or _default_dir()
        path = os.path.join(directory, "isstreamer-%d-%s.ring" % (os.getpid(), secrets.token_hex(6)))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        if native:
            assert _ffi is not None and _lib is not None
            with _ffi.from_buffer(mm) as buf:
                rc = _lib.iss_ring_init(_ffi.cast("uint8_t *", buf), size, max_producers, seg, nbuckets)
            if rc != 0:
                raise ValueError("isstreamer: cannot initialise ring (code %d)" % rc)
        else:
            struct.pack_into("=IIIIIIQ", mm, L.H_VERSION, L.LAYOUT_VERSION, L.HDR_SIZE,
                             max_producers, seg, nbuckets, L.BUCKET_SIZE, size)
            _Q.pack_into(mm, L.H_MAGIC, L.MAGIC)
        return cls(path, fd, mm, native)

    @classmethod
    def open(cls, path: str, native: Optional[bool] = None) -> "Ring":
        """Map an existing ring file; raises RingClosed when it no longer exists."""
        native = use_native() if native is None else native
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as exc:
            raise RingClosed(errno.ENOENT, "isstreamer: the ring is closed", path) from exc
        try:
            size = os.fstat(fd).st_size
            if size < L.HDR_SIZE or size % 8:
                raise ValueError("isstreamer: %s is not a ring file" % path)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        if _Q.unpack_from(mm, L.H_MAGIC)[0] != L.MAGIC or _I.unpack_from(mm, L.H_VERSION)[0] != L.LAYOUT_VERSION:
            mm.close()
            os.close(fd)
            raise ValueError("isstreamer: %s is not a ring file of this version" % path)
        return cls(path, fd, mm, native)

    def close(self) -> None:
        """Unmap and close (the file stays for other processes). Nothing may use the mapping after."""
        self.ptr = None
        self.q.release()
        if self._buf is not None:
            _ffi.release(self._buf)  # type: ignore[union-attr]
            self._buf = None
        with contextlib.suppress(BufferError, ValueError):
            self.mm.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)

    # ---- 64-bit fields -------------------------------------------------------------------
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

    def counter(self, name: str) -> int:
        """Value of a header counter (see layout.COUNTERS)."""
        return self.load(L.H_COUNTERS + 8 * L.C[name])

    def count(self, name: str, n: int = 1) -> None:
        """Add to a header counter."""
        if n:
            self.add(L.H_COUNTERS + 8 * L.C[name], n)

    # ---- cross-process lock for slow paths ---------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock across threads and processes (a fresh open file description each time)."""
        with self._tlock:
            proc = "/proc/self/fd/%d" % self.fd
            try:
                lfd = os.open(proc if os.path.exists(proc) else self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError as exc:
                raise RingClosed(errno.ENOENT, "isstreamer: the ring is closed", self.path) from exc
            try:
                fcntl.flock(lfd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(lfd)

    # ---- segments ------------------------------------------------------------------------------
    def seg_offset(self, index: int) -> int:
        """Byte offset of segment ``index``."""
        return L.seg_offset(self.nbuckets, self.seg_data_size, index)

    def seg_field(self, index: int, field: int) -> int:
        """Read a 64-bit field of a segment header."""
        return self.load(self.seg_offset(index) + field)

    def claim_segment(self, pid: int, token: int) -> Optional[int]:
        """Take a free segment for process ``pid``; None when every segment is in use."""
        with self.locked():
            for i in range(self.nsegs):
                base = self.seg_offset(i)
                if self.load(base + L.S_STATE) == L.SEG_FREE:
                    self.store(base + L.S_OWNER_PID, pid)
                    self.store(base + L.S_OWNER_TOKEN, token)
                    self.store(base + L.S_STATE, L.SEG_OWNED)
                    return i
        return None

    def release_segment(self, index: int, token: int) -> None:
        """Hand a segment back: the sender drains it, then frees it."""
        with self.locked():
            base = self.seg_offset(index)
            if self.load(base + L.S_OWNER_TOKEN) == token and self.load(base + L.S_STATE) == L.SEG_OWNED:
                self.store(base + L.S_STATE, L.SEG_RELEASED)

    def reclaim_segment(self, index: int) -> bool:
        """(Sender) fold a drained, unowned segment's counters into the header and free it."""
        with self.locked():
            base = self.seg_offset(index)
            if self.load(base + L.S_STATE) == L.SEG_FREE:
                return False
            if self.load(base + L.S_HEAD) != self.load(base + L.S_TAIL):
                return False
            self.count("logged_reclaimed", self.load(base + L.S_LOGGED))
            self.count("consumed_reclaimed", self.load(base + L.S_CONSUMED))
            for r in range(L.NDROPS):
                n = self.load(base + L.S_DROPS + 8 * r)
                if n:
                    self.add(L.H_DROPS + 8 * r, n)
            for off in (L.S_HEAD, L.S_LOGGED, L.S_TAIL, L.S_CONSUMED, L.S_OWNER_PID, L.S_OWNER_TOKEN, L.S_LOCK):
                self.store(base + off, 0)
            for r in range(L.NDROPS):
                self.store(base + L.S_DROPS + 8 * r, 0)
            self.store(base + L.S_STATE, L.SEG_FREE)
            return True

    def owners(self) -> Iterator[Tuple[int, int, int]]:
        """(index, state, owner pid) of every segment that is not free."""
        for i in range(self.nsegs):
            base = self.seg_offset(i)
            st = self.load(base + L.S_STATE)
            if st != L.SEG_FREE:
                yield i, st, self.load(base + L.S_OWNER_PID)

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

class PyProducer:
    """Pure-Python producer on one segment: same bytes as the C ``iss_put_*`` functions."""

    __slots__ = ("ring", "mm", "q", "seg", "data", "ds", "lock", "bucket", "cached_tail")

    def __init__(self, ring: Ring, seg_index: int, lock: threading.Lock, bucket: int = 0) -> None:
        self.ring = ring
        self.mm = ring.mm
        self.q = ring.q
        self.seg = ring.seg_offset(seg_index)
        self.data = self.seg + L.SEG_HDR_SIZE
        self.ds = ring.seg_data_size
        self.lock = lock
        self.bucket = bucket
        self.cached_tail = self.q[(self.seg + L.S_TAIL) >> 3]

    def put(self, rtype: int, key: bytes, num: Optional[bytes], s: bytes, epoch: float) -> int:
        """Append one record; returns an ``iss_put_*`` code."""
        klen, slen = len(key), len(s)
        if klen == 0 or klen > L.KEY_MAX or slen > L.STR_MAX:
            return L.ETOOBIG
        if epoch != epoch:
            import time

            epoch = time.time()
        body = L.REC_HDR_SIZE + (8 if num is not None else 0) + klen + slen
        size = (body + 7) & ~7
        mm, q, ds, seg = self.mm, self.q, self.ds, self.seg
        with self.lock:
            head = q[(seg + L.S_HEAD) >> 3]
            off = head % ds
            contig = ds - off
            need = size if size <= contig else contig + size
            if head + need - self.cached_tail > ds:
                self.cached_tail = q[(seg + L.S_TAIL) >> 3]
                if head + need - self.cached_tail > ds:
                    return L.FULL
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
        return L.OK

    def count_drop(self, reason: int) -> None:
        """Count one event refused by this producer."""
        off = self.seg + L.S_DROPS + 8 * reason
        with self.lock:
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
    """This process's segment of a ring, shared by every Streamer object of the process."""

    def __init__(self, ring: Ring, seg_index: int, token: int) -> None:
        self.ring = ring
        self.seg_index = seg_index
        self.token = token
        self.pid = os.getpid()
        self.refs = 0
        self.lock = threading.Lock()  # pure-Python producers' lock

    def new_producer(self, bucket: int):  # -> cdata iss_producer * | PyProducer
        """A producer handle with its own current bucket on this segment."""
        if self.ring.native:
            assert _ffi is not None and _lib is not None
            p = _ffi.new("iss_producer *")
            p.bucket = bucket
            rc = _lib.iss_producer_attach(p, self.ring.ptr, self.ring.size, self.seg_index)
            if rc != 0:
                raise ValueError("isstreamer: cannot attach to ring segment (code %d)" % rc)
            return p
        return PyProducer(self.ring, self.seg_index, self.lock, bucket)

    def count_drop(self, reason: int) -> None:
        """Count one refused event on this segment (reported by stats())."""
        off = self.ring.seg_offset(self.seg_index) + L.S_DROPS + 8 * reason
        if self.ring.native:
            self.ring.add(off, 1)
        else:
            with self.lock:
                self.ring.store(off, self.ring.load(off) + 1)

    def head(self) -> int:
        """Bytes published on this segment so far."""
        return self.ring.seg_field(self.seg_index, L.S_HEAD)

    def tail(self) -> int:
        """Bytes the sender has finished with (delivered or handed to the failure path)."""
        return self.ring.seg_field(self.seg_index, L.S_TAIL)


_PY_KEYS: list = []
_PY_KEYS_LOCK = threading.Lock()
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
