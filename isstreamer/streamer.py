"""The Streamer: ISStreamer 2.0.0's API on a shared-memory ring with a sender process."""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import threading
import time
import types
from typing import Any, Callable, Dict, Optional

from .ring import layout as L
from .ring.layout import DROPPED
from . import hotpath, ids, lazy, models, reentry, registry
from .config import load_config
from .flatten import flatten_object
from .ring import (
    Attachment,
    RingClosed,
    RingRefused,
    check_fallback_safe,
    default_ring_dir,
    fallback_reason,
    logs_for,
    puts_for,
    use_native,
)
from .rules import ceiling_settings, normalize_rules
from .safefile import open_private_output
from .settings import SenderSettings
from .ring.backend import ffi as _ffi
from .options import BUFFER_SIZE, DEFAULTS, Options, check_number
from .sender.spool import default_spool_dir
from .values import MAX_VALUE_CHARS, Skip, coerce_epoch, coerce_key, coerce_value, console_line

log = lazy.Logger("isstreamer")

_NAN = float("nan")
_KEY_CACHE_MAX = 65536
_OBJECT_PREFIXES_MAX = 256  # log_object's key prefixes whose flat-dict key names are kept
_SCALARS = frozenset((float, int, str, bool))


_RESOURCE_DROPS = ("ring_full", "no_space", "no_segment", "closed")  # never raised: not the caller's input
_FULL_MESSAGES = {
    "ring_full": (
        "isstreamer: the ring is full (the API drains slower than you log); events dropped until it "
        "has room, see stats()['dropped']['ring_full']"
    ),
    "no_space": (
        "isstreamer: the ring directory's file system is full (no page can be reserved for the ring); "
        "events dropped until there is room, see stats()['dropped']['no_space']"
    ),
}


class StreamerClosedError(RuntimeError):
    """log() was called after close() (raised at debug_level >= 2; counted otherwise)."""


class _Detached:
    """Stands in for a producer until this process has a segment (first use, after fork)."""

    bucket = 0
    dropping = 0

    def put(self, *args: Any) -> int:
        return L.EINVAL


def _detached_native():
    return _ffi.new("iss_producer *") if _ffi is not None else _Detached()


def _default_ring_memory() -> int:
    """A quarter of the ring directory's file system (at least 16 MiB): the cap on all segments
    of a ring, leaving room for other rings and other users of a small /dev/shm (Docker: 64 MB).
    Where that cannot be known (no statvfs: Windows, the thread mode), 1 GiB."""
    try:
        st = os.statvfs(default_ring_dir())
        return max(16 << 20, st.f_blocks * st.f_frsize // 4)
    except (OSError, ValueError, AttributeError):
        return 1 << 30


# the public attributes (2.0.0's names) a pickled handle carries; IsClosed is added to them
_PICKLED_ATTRS = (
    "DebugLevel",
    "BufferSize",
    "AccessKey",
    "Offline",
    "Async",
    "StreamApiBase",
    "BucketName",
    "BucketKey",
)
RING_RETRY = 5.0  # seconds between attempts at making the ring of a Streamer that could not make it


def _validate_bucket_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError("isstreamer: bucket_key must be a str, not %s" % type(key).__name__)
    if len(key) > 250 or any(c in key for c in ':"\''):
        raise ValueError("isstreamer: bucket_key %r is invalid: at most 250 characters, without : \" or '" % key[:60])
    return key


class Series:
    """One key of a :class:`Streamer`, bound once (``t = streamer.series("temperature")``).

    ``t.log(value, epoch=None)`` logs as ``streamer.log(key, value, epoch)`` does, without the
    key's lookup on each call: a float or an int logged now costs the put alone. Anything else
    (another type, an epoch, a closed Streamer) takes ``streamer.log``'s path, with the same
    checks, counts and errors. Made by :meth:`Streamer.series`; pickles as the pair it names.
    """

    __slots__ = ("key", "log", "_streamer")

    def __init__(self, streamer: "Streamer", key: str, log: Callable[..., None]) -> None:
        self._streamer = streamer
        self.key = key
        self.log = log

    def __reduce__(self) -> Any:
        return (_series_of, (self._streamer, self.key))

    def __repr__(self) -> str:
        return "Series(%r)" % (self.key,)


def _series_of(streamer: "Streamer", key: str) -> Series:
    return streamer.series(key)


class Streamer:
    """Streams events to the Initial State events API (drop-in for ISStreamer 2.0.0).

    ``log()`` writes one record into a shared-memory ring and returns; a sender process batches
    the records and POSTs them over one keep-alive connection, retrying, pacing and spooling to
    disk what it cannot deliver. Works across threads, forks and multiprocessing pools.
    """

    def __init__(
        self,
        bucket_name: str = "",
        bucket_key: str = "",
        access_key: str = "",
        ini_file_location: Optional[str] = None,
        debug_level: int = 0,
        buffer_size: int = BUFFER_SIZE,
        offline: Optional[bool] = None,
        use_async: bool = True,
        *,
        api_base: Optional[str] = None,
        offline_file: Optional[str] = DEFAULTS.offline_file,
        ring_size: int = DEFAULTS.ring_size,
        max_producers: int = DEFAULTS.max_producers,
        max_ring_memory: int = DEFAULTS.max_ring_memory,
        flush_interval: float = DEFAULTS.flush_interval,
        close_timeout: float = DEFAULTS.close_timeout,
        on_full: str = DEFAULTS.on_full,
        full_timeout: float = DEFAULTS.full_timeout,
        spool_dir: Optional[str] = DEFAULTS.spool_dir,
        spool_max_bytes: int = DEFAULTS.spool_max_bytes,
        max_batch_events: int = DEFAULTS.max_batch_events,
        max_batch_bytes: int = DEFAULTS.max_batch_bytes,
        request_timeout: float = DEFAULTS.request_timeout,
        max_rps: float = DEFAULTS.max_rps,
        max_attempts: int = DEFAULTS.max_attempts,
        backoff_max: float = DEFAULTS.backoff_max,
        auth_retry_interval: float = DEFAULTS.auth_retry_interval,
        use_gzip: bool = DEFAULTS.use_gzip,
        rules: Any = None,
        max_events_per_second: float = 0.0,
        monthly_budget: int = 0,
        fallback: Any = None,
    ) -> None:
        check_number("buffer_size", buffer_size, 1)
        options = Options(
            flush_interval=flush_interval,
            max_batch_events=max_batch_events,
            max_batch_bytes=max_batch_bytes,
            ring_size=ring_size,
            max_ring_memory=max_ring_memory,
            max_producers=max_producers,
            close_timeout=close_timeout,
            on_full=on_full,
            full_timeout=full_timeout,
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            request_timeout=request_timeout,
            max_rps=max_rps,
            max_attempts=max_attempts,
            backoff_max=backoff_max,
            auth_retry_interval=auth_retry_interval,
            use_gzip=use_gzip,
            offline_file=offline_file,
        )
        cfg = load_config(
            bucket_name=bucket_name,
            access_key=access_key,
            ini_file_location=ini_file_location,
            offline=offline,
            api_base=api_base,
        )
        self.DebugLevel = int(debug_level)
        self.BufferSize = int(buffer_size)
        self.AccessKey = cfg.access_key
        self.Offline = cfg.offline
        self.Async = bool(use_async)
        self.StreamApiBase = cfg.api_base
        self.BucketName = cfg.bucket_name
        self.BucketKey = _validate_bucket_key(bucket_key or ids.uuid4())
        self.IsClosed = False
        # resolved once: the offline file, the spool directory and the ring memory cap
        self._options = options.replace(
            offline_file=offline_file or cfg.offline_file,
            spool_dir=spool_dir or default_spool_dir(),
            max_ring_memory=max_ring_memory or _default_ring_memory(),
        )
        self._rules = normalize_rules(rules)  # downsampling (isstreamer.rules), applied by the sender
        self._ceiling = ceiling_settings(max_events_per_second, monthly_budget, fallback)
        self._init_local()
        if self.Offline:
            self._open_offline("w")
        else:
            if not self.AccessKey:
                log.warning(
                    "isstreamer: no access key (argument, ISSTREAMER_ACCESS_KEY or isstreamer.ini); "
                    "the events API will refuse the events, which are kept in the spool"
                )
            if not self._native:
                check_fallback_safe()
                why = fallback_reason()
                if why:
                    log.warning("%s", why)
            self._model.adopt_orphans(self._adopt_settings)
            self._make_ring = True  # this process made the Streamer: it may retry making the ring
            self._open_ring()
        self._select_log()
        registry.track(self)

    # ---- construction helpers ------------------------------------------------------------
    def _init_local(self, mode: Optional[str] = None) -> None:
        self._model = models.choose(mode)  # the process model or the thread mode (isstreamer.models)
        self._stats_lock = threading.Lock()
        self._attach_lock = threading.Lock()  # attach and set_bucket: one producer, in the right bucket
        self._ring_lock = threading.Lock()  # making the ring (a Streamer that could not, or a thread-mode child)
        self._converted: Dict[str, int] = {}
        self._dropped_local: Dict[str, int] = {}
        self._warned: set = set()
        self._refused: Optional[str] = None
        self._ring: Any = None  # the ring's Table (None offline, or when a handle's ring was refused)
        self._make_ring = False
        self._ring_retry_at = 0.0
        self._att: Optional[Attachment] = None
        self._final_stats: Optional[Dict[str, Any]] = None
        self._sync_count = 0
        self._csv_file = None
        self._csv = None
        self._set_backend(use_native())  # chosen once per Streamer
        self._set_producer(_detached_native() if self._native else _Detached())
        self._bucket = 0

    def _set_backend(self, native: bool) -> None:
        self._native = native
        self._put_f64, self._put_i64, self._put_bool, self._put_str = puts_for(native)
        self._intern, self._log_f64, self._log_i64, self._log_bool, self._log_str = logs_for(native)
        self._keys: Dict[Any, int] = {}  # key -> interned id, for the hot path
        self._object_keys: Dict[str, Dict[str, str]] = {}  # log_object: prefix -> {dict key: key}
        # the C hot path (isstreamer.hotpath), unless a subclass has a log() of its own
        hp = hotpath.module() if native and type(self).log is Streamer.log else None
        self._hot: Any = None
        if hp is not None:
            python_log = types.MethodType(Streamer.log, self)
            self._hot = hp.logger(self._keys, python_log, self._after_put, MAX_VALUE_CHARS, _KEY_CACHE_MAX)

    def _set_producer(self, p: Any) -> None:
        """The producer log() puts through (detached, attached, or closed), for both paths."""
        self._p = p
        if self._hot is not None:
            self._hot.set_producer(p, hotpath.address(p))

    def _open_offline(self, mode: str) -> None:
        """Open the offline CSV (``mode`` "w" empties it, "a" appends): created 0600, never
        through a symlink, an existing file only when it is this user's (safefile)."""
        csv = lazy.load("csv")  # offline mode only (start-up time)
        fd = open_private_output(self._options.offline_file, truncate=mode == "w")
        self._csv_file = os.fdopen(fd, "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_file)
        self._csv_lock = threading.Lock()

    def _select_log(self) -> None:
        """Bind the log implementation once, so the hot path tests no flags: the C hot path
        where there is one (its series handles and flat dicts only while it is the log())."""
        hot = self._hot
        if self.IsClosed:
            self.log = self._log_closed  # type: ignore[method-assign]
        elif self.Offline:
            self.log = self._log_offline  # type: ignore[method-assign]
        elif self.DebugLevel >= 1 or not self.Async:
            self.log = self._log_wrapped  # type: ignore[method-assign]
        elif hot is not None:
            self.log = hot.log  # type: ignore[method-assign]
            hot.set_enabled(True)
            return
        else:
            self.__dict__.pop("log", None)
        if hot is not None:
            hot.set_enabled(False)

    def _sender_settings(self) -> SenderSettings:
        ring = getattr(self, "_ring", None)
        return SenderSettings.of(
            self._options,
            ring_path=ring.path if ring is not None else "",
            api_base=self.StreamApiBase,
            access_key=self.AccessKey,
            buffer_size=self.BufferSize,
            debug_level=self.DebugLevel,
            native=self._native,
            ring_identity=list(ring.identity) if ring is not None else [],
            rules=self._rules,
            ceiling=self._ceiling,
        )

    def _adopt_settings(self, meta: Dict[str, Any]) -> Optional[SenderSettings]:
        """Sender settings for an orphaned ring of this user (see registry.adopt_orphans)."""
        try:
            return SenderSettings.from_meta(meta, self.AccessKey)
        except TypeError:
            return None

    def _ensure_sender(self) -> None:
        """Start a sender if none serves this ring (the kernel's lock says; RingClosed once gone)."""
        self._model.ensure_sender(self._ring, self._sender_settings)

    def _open_ring(self) -> None:
        """Make this Streamer's ring, its bucket, this process's segment and the sender. Where the
        ring directory is full (or out of descriptors), the Streamer still works: it says so once,
        counts what is logged as dropped (``no_space``), and tries again every RING_RETRY s."""
        self._ring_retry_at = time.monotonic() + RING_RETRY
        try:
            ring = self._model.create_table(
                max(L.SEG_DATA_MIN, int(self._options.ring_size)), self._sender_settings().meta(), native=self._native
            )
        except OSError as exc:
            self._refused = "cannot make the ring (%s)" % exc
            self._warn_once(
                "no_ring",
                "isstreamer: %s; events are counted as dropped['no_space'] until it can be made" % self._refused,
            )
            return
        self._ring = ring
        self._refused = None
        try:
            self._bucket = ring.add_bucket(self.BucketKey, self.BucketName)
            self._p.bucket = self._bucket
            try:  # the creator owns a segment before the sender starts (else it would find no owner)
                self._attach(start_sender=False)
            except (RingRefused, OSError, ValueError) as exc:  # counted at the first log(); retried then,
                self._warn_once("no_segment", "isstreamer: cannot get a ring segment (%s)" % exc)
                return  # and the attach that succeeds starts the sender
            self._ensure_sender()
        except BaseException:
            self._ring = None
            self._remove_ring_of(ring)
            raise

    def _remove_ring_of(self, ring: Any) -> None:
        with contextlib.suppress(OSError):
            with ring.locked():
                ring.mark_closing()
                ring.remove_files()
        self._model.close_table(ring, 0.0)

    def _attach(self, start_sender: bool = True) -> Any:
        """This process's producer on the ring, attaching first if needed: its segment (created on
        first use in each process), a handle in the current bucket. Under the Streamer's lock, so
        threads making their first calls at once attach exactly once. Raises RingClosed once the
        ring is gone, RingRefused / OSError when no segment can be had (retried later)."""
        if self._ring is None and self._make_ring and not self.IsClosed:
            with reentry.held(self._ring_lock):  # (taken before the attach lock, never after)
                if self._ring is None and time.monotonic() >= self._ring_retry_at:
                    self._open_ring()  # attaches too, when it can
        with reentry.held(self._attach_lock):
            if self._att is not None:
                return self._p
            ring = self._ring
            if ring is None:
                raise RingRefused("isstreamer: %s" % (self._refused or "no ring"))
            new = self._model.own_attachment(ring) is None
            att = self._model.attachment(ring, self._options.ring_size, self._options.max_ring_memory)
            att.refs += 1
            p = att.new_producer(self._bucket, check_every=self._options.flush_interval / 2)
            self._set_producer(p)
            self._att = att
        if new and start_sender:
            self._ensure_sender()  # a process new to the ring: make sure its sender lives
        return p

    def _check_sender(self) -> None:
        """(A put said: once per flush_interval / 2) the sender lives, else a new one starts, so a
        sender that died while the program logs slowly is replaced within the interval."""
        if reentry.busy():
            reentry.defer(self._check_sender_now)
            return
        self._check_sender_now()

    def _check_sender_now(self) -> None:
        ring = self._ring
        if ring is None or self.IsClosed:
            return
        try:
            if not ring.sender_alive():
                self._ensure_sender()
        except RingClosed:
            self._mark_closed_remotely()
        except (OSError, ValueError):
            pass

    def detach_after_fork(self) -> None:
        """(Called in a fork child, by the registry) Detach: the child's first event claims its own
        segment of the ring; the parent's segment is never written by the child."""
        self._stats_lock = threading.Lock()
        self._attach_lock = threading.Lock()
        self._ring_lock = threading.Lock()
        self._make_ring = False
        if not self._model.shares_ring:  # the thread mode: the parent's ring and sender thread are not the child's
            self._ring = None
            self._make_ring = not self.IsClosed
            self._ring_retry_at = 0.0
        self._att = None
        self._set_producer(_detached_native() if self._native else _Detached())
        self._p.bucket = self._bucket

    # ---- pickling: a handle on the same ring and sender --------------------------------------
    def __reduce__(self):
        state = {k: getattr(self, k) for k in _PICKLED_ATTRS}
        state["options"] = self._options.as_dict()
        state["rules"], state["ceiling"] = self._rules, self._ceiling
        state["IsClosed"] = self.IsClosed
        if not self.Offline and not self.IsClosed and self._ring is not None:
            state["ring_path"] = self._ring.path
            state["ring_identity"] = list(self._ring.identity)
            state["bucket"] = self._bucket
        state["refused"] = self._refused
        state["mode"] = self._model.name
        return (Streamer._unpickle, (state,))

    @classmethod
    def _unpickle(cls, state: Dict[str, Any]) -> "Streamer":
        """Unpickle: a Streamer bound to the same ring and sender (or a closed/offline twin).

        The ring file must be the very file the handle was made for (same inode, ours, 0600): a
        file planted at its path after it was removed is refused (logged; log() then counts the
        events as dropped, or raises at debug_level >= 2)."""
        self = cls.__new__(cls)
        for k in _PICKLED_ATTRS + ("IsClosed",):
            setattr(self, k, state[k])
        self._options = Options(**state["options"])
        self._rules, self._ceiling = state["rules"], state["ceiling"]
        self._init_local(state.get("mode"))
        if self.Offline and not self.IsClosed:
            self._open_offline("a")
        elif not self.IsClosed and not self._model.shares_ring:  # the thread mode: a ring of its own
            self._make_ring = True
        elif not self.IsClosed and "ring_path" not in state:  # a Streamer that could not make its ring
            self._refused = state.get("refused") or "no ring"
        elif not self.IsClosed:
            path = state["ring_path"]
            ident = state.get("ring_identity")
            try:
                self._ring = self._model.open_table(path, self._native, tuple(ident) if ident else None)
                self._set_backend(self._ring.native)
                self._bucket = state["bucket"]
                self._set_producer(_detached_native() if self._native else _Detached())
                self._p.bucket = self._bucket
            except RingClosed:
                self.IsClosed = True
            except (RingRefused, ValueError, OSError) as exc:
                self.IsClosed = True
                self._refused = "refused: %s" % exc
                log.error("%s", exc)
        self._select_log()
        registry.track(self)
        return self

    # ---- the hot path ------------------------------------------------------------------------------
    def log(self, key: str, value: Any, epoch: Optional[float] = None) -> None:
        """Log one event: ``key`` (str), ``value`` (str, bool or number), optional ``epoch`` seconds."""
        try:
            if epoch is None:
                ep = _NAN
            elif type(epoch) is float and 0.0 < epoch < 1e11:
                ep = epoch
            else:
                return self._log_slow(key, value, epoch)
            kid = self._keys[key]
            t = type(value)
            if t is float:
                rc = self._log_f64(self._p, kid, value, ep)
            elif t is int:
                rc = self._log_i64(self._p, kid, value, ep)  # OverflowError outside int64
            elif t is str:
                if len(value) > MAX_VALUE_CHARS:
                    return self._log_slow(key, value, epoch)
                sb = value.encode()
                rc = self._log_str(self._p, kid, sb, len(sb), ep)
            elif t is bool:
                rc = self._log_bool(self._p, kid, value, ep)
            else:
                return self._log_slow(key, value, epoch)
        except (KeyError, TypeError, OverflowError, UnicodeEncodeError):
            return self._log_slow(key, value, epoch)
        if rc:
            if rc == DROPPED:  # dropped on a full ring, already counted by the put
                return
            self._after_put(rc, key, value, epoch)

    def _after_put(self, rc: int, key: Any, value: Any, epoch: Any) -> None:
        """A put that did not simply succeed: published but the sender sleeps (wake it) or is due
        a liveness check; else not written (slow path: attach, reserve, full ring, refusal).
        Inside one of our sections (a signal handler that interrupted this thread there, a
        first import): done when the section ends."""
        if reentry.busy():
            reentry.defer(self._after_put_now, rc, key, value, epoch)
            return
        self._after_put_now(rc, key, value, epoch)

    def _after_put_now(self, rc: int, key: Any, value: Any, epoch: Any) -> None:
        if rc == L.WAKE:
            if not self._ring.wake():  # nobody listens: the sender may have died
                self._check_sender()
        elif rc == L.CHECK:
            self._check_sender()
        else:
            self._log_slow(key, value, epoch)

    def _log_slow(self, key: Any, value: Any, epoch: Any) -> None:
        """Value rules, key cache, attach / full-ring handling.

        Re-entry guard: a signal handler that logs while this thread holds a lock of ours has its
        event kept and written when the thread leaves the lock (see isstreamer.reentry)."""
        if reentry.busy():
            reentry.defer(self._log_slow_body, key, value, epoch)
            return
        with reentry.section():
            self._log_slow_body(key, value, epoch)

    def _log_slow_body(self, key: Any, value: Any, epoch: Any) -> None:
        strict = self.DebugLevel >= 2
        try:
            k, kr = coerce_key(key, strict)
            v, vr = coerce_value(value, strict, key=k)
            e, er = coerce_epoch(epoch, strict, key=k)
        except Skip as skip:
            self._drop(skip.reason, str(skip))
            return
        for r in (kr, vr, er):
            if r:
                self._count_local(self._converted, r)
                self._warn_once(r, "isstreamer: input converted (%s); see stats()['converted']" % r)
        kb = k.encode("utf-8")
        if kr is None and type(key) is str and len(self._keys) < _KEY_CACHE_MAX:
            kid = self._intern(kb, len(kb))
            if kid >= 0:
                self._keys[key] = kid
        self._put(kb, v, _NAN if e is None else e)

    def _put(self, kb: bytes, v: Any, ep: float) -> None:
        """Write a normalized event, handling detach, reservation, a full ring and refusals.

        A full ring, or a file system too full to reserve the segment's next pages: one wait of
        at most ``full_timeout`` (none with ``on_full="drop"``), then the producer is in a drop
        episode: every put that finds no room is counted (``ring_full`` / ``no_space``) by the
        put itself, at the cost of a normal call, until one succeeds."""
        deadline = nudge_at = 0.0
        pause = 0.00005
        while True:
            t = type(v)
            p = self._p
            if t is bool:
                rc = self._put_bool(p, kb, len(kb), v, ep)
            elif t is int:
                rc = self._put_i64(p, kb, len(kb), v, ep)
            elif t is float:
                rc = self._put_f64(p, kb, len(kb), v, ep)
            else:
                sb = v.encode("utf-8")
                rc = self._put_str(p, kb, len(kb), sb, len(sb), ep)
            if rc == L.OK or rc == L.DROPPED:
                return
            if rc == L.WAKE or rc == L.CHECK:
                return self._after_put(rc, kb, v, ep)
            if rc == L.CLOSED or (rc == L.EINVAL and self.IsClosed):
                return self._log_closed(kb.decode("utf-8", "replace"), v)
            if rc == L.EINVAL:
                try:
                    if self._attach() is not p:
                        continue  # attached now (or by another thread meanwhile): write it there
                except RingClosed:
                    self._mark_closed_remotely()
                    return self._log_closed(kb.decode("utf-8", "replace"), v)
                except (RingRefused, OSError, ValueError) as exc:
                    no_space = self._ring is None or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
                    self._drop(
                        "no_space" if no_space else "no_segment",
                        "isstreamer: cannot get a ring segment (%s); events dropped" % exc,
                    )
                    return
            reason = "ring_full"
            if rc == L.RESERVE:
                att = self._att
                ok = att.reserve() if att is not None else True
                if ok:
                    continue
                if ok is False:
                    if p.dropping:  # a retry in a drop episode that still found no space
                        self._drop("no_space", "")
                        return
                    with contextlib.suppress(OSError, ValueError):
                        self._ring.count("space_short")  # the sender spools promptly, freeing pages
                reason = "no_space"
                rc = L.FULL
            if rc == L.FULL:
                now = time.monotonic()
                if deadline == 0.0:
                    deadline = now + self._options.full_timeout
                if now >= nudge_at:  # ask the sender to drain now; restart it if it died
                    nudge_at = now + 0.5
                    self._nudge()
                    try:
                        self._ensure_sender()
                    except RingClosed:
                        self._mark_closed_remotely()
                        return self._log_closed(kb.decode(), v)
                if self._options.on_full == "drop" or now >= deadline:
                    p.dropping = 1
                    self._drop(reason, _FULL_MESSAGES[reason])
                    return
                time.sleep(pause)
                pause = min(pause * 2, 0.005)
                continue
            self._drop(
                "too_large" if rc == L.ETOOBIG else "invalid_input",
                "isstreamer: the ring refused an event (code %d)" % rc,
            )
            return

    def _drop(self, reason: str, message: str) -> None:
        """Count one event that is not sent (where every process's stats() sees it: this
        process's segment, else the ring's header; locally without a ring) and warn once."""
        if self.DebugLevel >= 2 and reason not in _RESOURCE_DROPS:
            raise ValueError(message)
        name = L.DROP_REASONS[L.D.get(reason, L.D["invalid_input"])]
        att, ring = self._att, self._ring
        try:
            if att is not None:
                att.count_drop(L.D[name])
            elif ring is not None:
                ring.count_drop(name)
            else:
                self._count_local(self._dropped_local, name)
        except (OSError, ValueError):  # closed meanwhile
            self._count_local(self._dropped_local, name)
        if message:
            self._warn_once("drop:" + reason, message)

    def _count_local(self, counters: Dict[str, int], name: str) -> None:
        """Count in this process (a lock of ours may be held by this thread: then deferred)."""
        if reentry.busy():
            reentry.defer(self._count_now, counters, name)
            return
        self._count_now(counters, name)

    def _count_now(self, counters: Dict[str, int], name: str) -> None:
        with reentry.held(self._stats_lock):
            counters[name] = counters.get(name, 0) + 1

    def _warn_once(self, tag: str, message: str) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            log.warning(message)

    def _log_wrapped(self, key: str, value: Any, epoch: Optional[float] = None) -> None:
        """log() with the 2.0.0 console echo (debug_level >= 1) and/or use_async=False flushing."""
        Streamer.log(self, key, value, epoch)
        if self.DebugLevel >= 1:
            print(
                console_line(
                    str(key),
                    value,
                    epoch if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else time.time(),
                )
            )
        if not self.Async:
            self._sync_count += 1
            if self._sync_count >= self.BufferSize:
                self._sync_count = 0
                self.flush()

    def _log_offline(self, key: str, value: Any, epoch: Optional[float] = None) -> None:
        """Offline mode: one CSV row ``epoch,key,value`` per event."""
        strict = self.DebugLevel >= 2
        try:
            k, _ = coerce_key(key, strict)
            v, _ = coerce_value(value, strict)
            e, _ = coerce_epoch(epoch, strict)
        except Skip as skip:
            self._drop(skip.reason, str(skip))
            return
        e = time.time() if e is None else e
        if self.DebugLevel >= 1:
            print(console_line(k, v, e))
        if reentry.busy():  # a signal handler interrupting this thread, which may hold the lock
            reentry.defer(self._write_row, [repr(e), k, v])
            return
        self._write_row([repr(e), k, v])

    def _write_row(self, row: list) -> None:
        with reentry.held(self._csv_lock):
            self._csv.writerow(row)  # type: ignore[union-attr]

    def _log_closed(self, key: Any, value: Any = None, epoch: Any = None) -> None:
        """log() after close(): an error at debug_level >= 2, counted otherwise."""
        why = self._refused or "after close()"
        if self.DebugLevel >= 2:
            raise StreamerClosedError("isstreamer: log(%r) %s" % (key, why))
        self._count_local(self._dropped_local, "closed")
        self._warn_once("drop:closed", "isstreamer: log() %s; event dropped" % why)

    def _mark_closed_remotely(self) -> None:
        self.IsClosed = True
        self._select_log()

    # ---- the rest of the API --------------------------------------------------------------------
    def log_object(self, obj: Any, key_prefix: Optional[str] = None, epoch: Optional[float] = None) -> None:
        """Log every value of a list, tuple, mapping, namedtuple, dataclass or object, with one epoch.

        Keys are ``prefix_index`` / ``prefix_key`` / ``prefix_attr``; the prefix defaults to the
        type name (``list``, ``dict``...), ``""`` means none; nested containers are joined with ``_``.
        """
        if epoch is None:
            epoch = time.time()
        if type(obj) is dict:
            # a flat dict of scalars (a sensor reading): the keys flatten_object would make, each
            # made once and kept (its hash with it), no walk
            prefix = "dict_" if key_prefix is None else (str(key_prefix) + "_" if str(key_prefix) else "")
            names = self._object_keys.get(prefix)
            if names is None:
                names = {}
                if len(self._object_keys) < _OBJECT_PREFIXES_MAX:
                    self._object_keys[prefix] = names
            hot = self._hot
            if hot is not None and hot.log_dict(obj, names, prefix, epoch):  # str keys: one C call
                return
            if all(type(v) in _SCALARS for v in obj.values()):
                log = self.log
                for k, v in obj.items():
                    name = names.get(k) if type(k) is str else None
                    if name is None:
                        name = prefix + str(k)
                        if type(k) is str and len(names) < _KEY_CACHE_MAX:
                            names[k] = name
                    log(name, v, epoch)
                return
        for k, v in flatten_object(obj, key_prefix):
            self.log(k, v, epoch)

    def series(self, key: str) -> Series:
        """A handle that logs under ``key``: ``series(key).log(value, epoch=None)`` is
        ``log(key, value, epoch)`` at the cost of the put alone for a float or int logged now
        (no key lookup), like prometheus_client's ``labels()`` children. See :class:`Series`."""
        if self._hot is not None:  # the C handle: puts while the hot path is the log(), else this

            def log(value: Any, epoch: Optional[float] = None) -> None:  # (the Python handle's name)
                self.log(key, value, epoch)

            return Series(self, key, self._hot.series(key, log).log)
        log_f64, log_i64, after_put = self._log_f64, self._log_i64, self._after_put
        kid = -1  # the key's interned id, once the first event through the full path made it

        def log(value: Any, epoch: Optional[float] = None) -> None:
            nonlocal kid
            if kid >= 0 and epoch is None:
                t = type(value)
                try:
                    if t is float:
                        rc = log_f64(self._p, kid, value, _NAN)
                    elif t is int:
                        rc = log_i64(self._p, kid, value, _NAN)  # OverflowError outside int64
                    else:
                        return self.log(key, value, epoch)
                except OverflowError:
                    return self.log(key, value, epoch)
                if rc and rc != DROPPED:
                    after_put(rc, key, value, epoch)
                return
            self.log(key, value, epoch)
            if kid < 0 and "log" not in self.__dict__:  # the fast log() (not debug, sync, offline)
                kid = self._keys.get(key, -1)

        return Series(self, key, log)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Make sure everything logged so far gets sent as soon as possible.

        With ``use_async=True`` (the default) and no ``timeout`` it hands the events to the sender
        for immediate sending ("will get sent asap", as the 2.0.0 README puts it) and returns True
        at once, without waiting on the network; with ``use_async=False`` it waits, with no limit,
        until they are delivered or handed to the failure path. Either way it closes no
        downsampling window: a window is sent whole, when it is due.

        With ``timeout=T`` it waits until every event this process logged before the call is
        delivered or handed to the failure path (spool, rejected file), and with downsampling
        rules closes every open window now (of every process) and waits until they are sent too;
        it returns False if ``T`` seconds passed first, or if the sender found records it could
        not read meanwhile (counted in ``stats()["dropped"]["corrupt"]``).
        """
        if self.Offline:
            if self._csv_file is not None and not self._csv_file.closed:
                self._csv_file.flush()
            return True
        if self._att is None or self.IsClosed:
            return True
        if self.Async and timeout is None:
            try:
                self._nudge()
            except (ValueError, OSError):
                pass
            return True
        return self._wait_delivered(timeout, cut=timeout is not None and self._downsampled())

    def _downsampled(self) -> bool:
        """Events of this Streamer may be folded into windows (rules, or a fallback rule)."""
        return bool(self._rules or self._ceiling.get("fallback"))

    def _nudge(self, wake: bool = False) -> int:
        """Ask the sender to send what waits now (partial batches included), waking it if idle
        (``wake``: in any case; for a caller that waits on it); returns the request's flush_seq."""
        return self._ring.request_flush(wake)

    def _wait_delivered(self, timeout: Optional[float], cut: bool) -> bool:
        """Wait until this process's events logged so far are delivered, folded by a rule, or on
        the failure path; with ``cut``, also until every window open now is closed and sent
        (False when ``timeout`` passes first, or the sender skipped unreadable records)."""
        att = self._att
        if att is None:
            return True
        try:
            lost = att.lost()
            target = att.head()
            if att.tail() >= target and not cut:
                return True
            ring = self._ring
            seq = ring.request_cut() if cut else self._nudge(wake=True)  # aggregate: the sender serves seq
            start = time.monotonic()
            deadline = None if timeout is None else start + timeout
            pause = 0.0001  # short first: one event is out in about a millisecond
            next_check = start + 0.5
            while att.tail() < target or (cut and ring.flush_done < seq):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                if now >= next_check:
                    self._ensure_sender()
                    self._nudge(wake=True)
                    next_check = now + 0.5
                time.sleep(pause)
                # a fine poll while a request is typically out (a few ms), then back off
                pause = min(pause * 1.25, 0.0005 if now - start < 0.05 else 0.005)
            return att.lost() == lost
        except (ValueError, OSError):  # the ring went away under us
            return False

    def close(self, timeout: Optional[float] = None) -> None:
        """Hand this process's events over (up to ``timeout``, default ``close_timeout``), then
        release its segment.

        Events of keys without a rule are delivered (or spooled) first; events of keys with a rule
        are folded, and the windows other processes still fold into stay open (the sender closes
        them when due, or when it exits). The last process using the Streamer closes them all and
        waits until they are sent. The sender finishes delivering (or spools) and exits once no
        process uses the ring. Idempotent; also called at interpreter exit and by ``with``. A
        ``log()`` racing it from another thread is counted (or raises at debug_level >= 2),
        never crashes.
        """
        if self.IsClosed:
            return
        if self.Offline:
            self.IsClosed = True
            self._select_log()
            if self._csv_file is not None:
                self._csv_file.close()
            return
        budget = self._options.close_timeout if timeout is None else timeout
        ring = self._ring
        if ring is not None:
            try:  # the sender retries, rather than spools, while this process waits
                ring.extend_close_by(time.monotonic() + budget)
                last = self._downsampled() and self._model.last_producer(ring)
            except (ValueError, OSError):
                last = False
            self._wait_delivered(budget, cut=last)
        self._take_final_stats()
        with reentry.held(self._attach_lock):  # no attach after this (see _attach)
            self.IsClosed = True
            self._select_log()
            self._set_producer(_detached_native() if self._native else _Detached())
            att, self._att = self._att, None
        if att is not None:
            att.refs -= 1
        if ring is not None:
            # a put racing this in another thread is counted as closed; the thread mode's sender
            # finishes within the budget: its final counters (spooled at the deadline...) count
            self._model.close_table(ring, budget, last_look=self._take_final_stats)
        registry.untrack(self)

    def set_bucket(self, bucket_name: str = "", bucket_key: str = "", retries: int = 3) -> None:  # noqa: ARG002
        """Switch buckets: events logged before go to the old bucket, events after to the new one.

        A new uuid4 key is used when ``bucket_key`` is empty; the bucket is created before its events.
        """
        key = _validate_bucket_key(bucket_key or ids.uuid4())
        if not self.Offline and not self.IsClosed and self._ring is not None:
            index = self._ring.add_bucket(key, bucket_name)
            with reentry.held(self._attach_lock):  # a first log() attaching meanwhile takes the new one
                self._bucket = index
                self._p.bucket = index  # one store: a racing log() goes to the old or the new one
        self.BucketKey, self.BucketName = key, bucket_name

    def stats(self) -> Dict[str, Any]:
        """Counters across every process of this Streamer: logged, sent, pending, dropped..."""
        if self._final_stats is not None and self.IsClosed:
            out = dict(self._final_stats)
            out["dropped"] = dict(out["dropped"])
            for name, n in self._dropped_local.items():
                out["dropped"][name] = self._final_stats["dropped"].get(name, 0) + n
            return out
        return self._live_stats(self._dropped_local)

    def _take_final_stats(self) -> None:
        self._final_stats = self._live_stats({})  # stats() adds the drops counted here, then and later

    def _live_stats(self, dropped_local: Dict[str, int]) -> Dict[str, Any]:
        out: Dict[str, Any] = {"backend": "native" if self._native else "python", "mode": self._model.name}
        dropped: Dict[str, int] = dict(dropped_local)
        ring = getattr(self, "_ring", None)
        if self.Offline or ring is None:  # offline, or a handle whose ring was refused
            out.update(logged=0, sent=0, pending=0, dropped=dropped, converted=dict(self._converted))
            return out
        try:
            logged, consumed, drops = self._model.segment_counters(ring)
            for name, n in zip(L.DROP_REASONS, drops):
                if n:
                    dropped[name] = dropped.get(name, 0) + n
            out.update(logged=logged, pending=max(0, logged - consumed), producers=sum(1 for _ in ring.slots()))
            for name in L.COUNTERS[2:]:
                out[name] = ring.counter(name)
            out["aggregation_ratio"] = out["folded"] / out["aggregated"] if out["aggregated"] else 0.0
        except (ValueError, OSError):  # retired
            pass
        out["dropped"] = dropped
        out["converted"] = dict(self._converted)
        return out

    # ---- introspection ----------------------------------------------------------------------------
    @property
    def ring_path(self) -> Optional[str]:
        """Path of the shared ring this Streamer writes to (None offline)."""
        ring = getattr(self, "_ring", None)
        return None if ring is None else ring.path

    @property
    def sender_pid(self) -> Optional[int]:
        """Pid of the sender process last started on this ring (None offline or when none runs)."""
        ring = getattr(self, "_ring", None)
        if ring is None or self.IsClosed:
            return None
        return ring.sender_pid or None

    def ring_fill(self) -> float:
        """Fraction of this process's segment holding events the sender has not consumed yet."""
        att = self._att
        try:
            return 0.0 if att is None or self.IsClosed else att.fill()
        except (OSError, ValueError):  # closed by another thread meanwhile
            return 0.0

    # ---- context manager and finalisation ----------------------------------------------------------
    def __enter__(self) -> "Streamer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self.IsClosed and getattr(self, "_att", None) is not None:
                if reentry.busy():  # freed inside a locked section of ours (a cycle the garbage
                    reentry.defer(self.close)  # collector freed there, a signal handler): after it
                else:
                    self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    def __repr__(self) -> str:
        return "<Streamer bucket=%r key=%r %s>" % (
            self.BucketName,
            self.BucketKey,
            "closed" if self.IsClosed else "open",
        )


def _close_all_at_exit() -> None:
    for s in registry.live_streamers():
        try:
            s.close()
        except Exception:  # noqa: BLE001
            pass


atexit.register(_close_all_at_exit)
