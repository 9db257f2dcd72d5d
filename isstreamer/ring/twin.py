"""The pure-Python twin of the C producer (csrc/ring.c): the same bytes and return codes with
``struct`` and a uint64 memoryview, for installs without a compiler (x86 only, see
:func:`isstreamer.ring.backend.check_fallback_safe`); the process-local key tables of both
backends, and their fork hooks.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Any, List, Optional, Tuple

from . import layout as L
from .records import F64, I64, REC
from .backend import lib as _lib
from .segment import Segment


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

    __slots__ = (
        "ring",
        "mm",
        "q",
        "seg",
        "data",
        "ds",
        "state",
        "bucket",
        "cached_tail",
        "dropping",
        "wake_q",
        "woke",
        "reserve",
        "cached_reserved",
        "check_every",
        "check_at",
        "retry_s",
        "retry_at",
    )

    def __init__(self, ring: Segment, seg_index: int, state: SegmentState, bucket: int = 0) -> None:
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
        REC.pack_into(mm, w, size, rtype, 0, self.bucket, klen, 0, slen, epoch)
        w += L.REC_HDR_SIZE
        if num is not None:
            mm[w : w + 8] = num
            w += 8
        mm[w : w + klen] = key
        w += klen
        if slen:
            mm[w : w + slen] = s
            w += slen
        pad = size - body
        if pad:
            mm[w : w + pad] = bytes(pad)
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
    return p.put(L.T_F64, key, F64.pack(v), b"", epoch)


def py_put_i64(p: PyProducer, key: bytes, keylen: int, v: int, epoch: float) -> int:
    """Pure-Python twin of ``iss_put_i64``."""
    return p.put(L.T_I64, key, I64.pack(v), b"", epoch)


def py_put_bool(p: PyProducer, key: bytes, keylen: int, v: int, epoch: float) -> int:
    """Pure-Python twin of ``iss_put_bool``."""
    return p.put(L.T_TRUE if v else L.T_FALSE, key, None, b"", epoch)


def py_put_str(p: PyProducer, key: bytes, keylen: int, s: bytes, slen: int, epoch: float) -> int:
    """Pure-Python twin of ``iss_put_str``."""
    return p.put(L.T_STR, key, None, s, epoch)


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
    return p.put(L.T_I64, _PY_KEYS[key_id], I64.pack(v), b"", epoch)


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
        return (
            _lib.iss_key_intern,
            _lib.iss_log_f64_at,
            _lib.iss_log_i64_at,
            _lib.iss_log_bool_at,
            _lib.iss_log_str_at,
        )
    return py_key_intern, py_log_f64, py_log_i64, py_log_bool, py_log_str


def puts_for(native: bool):
    """(put_f64, put_i64, put_bool, put_str) for a backend."""
    if native:
        assert _lib is not None
        return _lib.iss_put_f64, _lib.iss_put_i64, _lib.iss_put_bool, _lib.iss_put_str
    return py_put_f64, py_put_i64, py_put_bool, py_put_str
