"""The collector's storage: one interface, two databases.

A database is named by ``--db``: a file path means SQLite (:mod:`.sqlite_store`, the default,
needing nothing), a ``postgresql://`` URL means PostgreSQL (:mod:`.postgres_store`, psycopg 3:
``pip install 'isstreamer[postgres]'``). Each backend is a :class:`Database` (what to open, its
schema, how many writers it takes) and a :class:`Session`: one connection and every operation the
application needs (the same arguments and the same answers on both).

:class:`Store` runs the sessions off the event loop: writes go through a
:class:`~isstreamer.collector.sched.FairExecutor` (one writer thread on SQLite, which has one
writer anyway; several on PostgreSQL), reads through a small pool of reader threads, each thread
with its own session. The ``read_*`` helpers at the bottom open a fresh session on a database
and are what tests use to look at what a collector stored.

Values keep their JSON type exactly: ``value_json`` holds the value as JSON text (``21``,
``21.0``, ``"21"`` and ``true`` stay distinct) and ``value_num`` a float copy for numbers.
Access keys are stored only as their sha256 hex digest (the bucket's ``owner``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar

import orjson

from . import limits
from .dburl import is_postgres_url
from .sched import FairExecutor

T = TypeVar("T")

#: One event ready to store: (key, value_json, value_num, epoch).
EventRow = Tuple[str, str, Optional[float], float]
#: A position in a listing of events: (epoch, id) of the last event of a page.
Position = Tuple[float, int]

#: Bytes one bucket row takes beyond its key, name and tags (for the disk quota).
BUCKET_OVERHEAD = 256
#: Longest text kept in a column of the request log (longer values are cut, marked with "…").
LOG_FIELD_CHARS = 200
#: The request log is pruned to its bounds every this many rows.
PRUNE_EVERY = 256


def hash_access_key(access_key: str) -> str:
    """Return the sha256 hex digest under which an access key's buckets are stored."""
    return hashlib.sha256(access_key.encode("utf-8")).hexdigest()


def month_of(epoch: float) -> str:
    """Return the UTC calendar month ``YYYY-MM`` of an epoch (the monthly quota period)."""
    return time.strftime("%Y-%m", time.gmtime(epoch))


def cap_text(value: Optional[str], limit: int = LOG_FIELD_CHARS) -> Optional[str]:
    """``value`` cut to ``limit`` characters, with anything that is not valid UTF-8 replaced."""
    if value is None:
        return None
    if len(value) > limit:
        value = value[: limit - 1] + "\u2026"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def stored_bytes(rows: Sequence[EventRow], overhead: int) -> int:
    """Estimated bytes the database takes for ``rows``: each event's key (twice: row and
    index), its value and ``overhead`` (the backend's bytes per event, an upper bound)."""
    total = overhead * len(rows)
    for key, vj, _, _ in rows:
        total += 2 * _utf8_len(key) + _utf8_len(vj)
    return total


def bucket_bytes(bucket_key: str, name: str, tags_json: str = "[]") -> int:
    """Estimated bytes of one bucket row (for the disk quota)."""
    return BUCKET_OVERHEAD + sum(_utf8_len(t) for t in (bucket_key, name, tags_json))


@dataclass
class RequestLog:
    """One row of the ``requests`` table: what a client sent to a write endpoint."""

    request_uid: str
    time: float
    method: str
    path: str
    status: int = 0
    error_type: Optional[str] = None
    owner: Optional[str] = None
    bucket_key: Optional[str] = None
    events: int = 0
    body_bytes: Optional[int] = None
    content_type: Optional[str] = None
    content_encoding: Optional[str] = None
    accept_version: Optional[str] = None
    user_agent: Optional[str] = None

    #: The ``requests`` columns, in :meth:`row` order (without ``id``).
    COLUMNS = (
        "request_uid",
        "time",
        "method",
        "path",
        "status",
        "error_type",
        "owner",
        "bucket_key",
        "events",
        "body_bytes",
        "content_type",
        "content_encoding",
        "accept_version",
        "user_agent",
    )

    def row(self) -> tuple:
        """Return the values in :attr:`COLUMNS` order; text capped."""
        c = cap_text
        return (
            self.request_uid,
            self.time,
            c(self.method),
            c(self.path),
            self.status,
            c(self.error_type),
            self.owner,
            c(self.bucket_key, 250),
            self.events,
            self.body_bytes,
            c(self.content_type),
            c(self.content_encoding),
            c(self.accept_version),
            c(self.user_agent),
        )


@dataclass
class IngestResult:
    """Outcome of :meth:`Session.ingest` and :meth:`Session.create_bucket`: ``status`` 201/204,
    or 400 (``BUCKET_REMOVED``), 402 (monthly quota), 507 (disk quota, database full)."""

    status: int
    error_type: Optional[str] = None
    message: str = ""
    stored: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LogBounds:
    """How much of the request log is kept: at most ``rows`` rows, none older than ``max_age`` s."""

    rows: int = limits.LOG_ROWS
    max_age: float = limits.LOG_DAYS * 86400.0


@dataclass(frozen=True)
class Quotas:
    """What one key holder may store (None: no limit): ``monthly_events`` events per UTC calendar
    month, ``disk_bytes`` bytes of events and buckets (as :func:`stored_bytes` estimates them)."""

    monthly_events: Optional[int] = None
    disk_bytes: Optional[int] = None


def monthly_refusal(quota: int, used: int, n: int) -> IngestResult:
    """The 402 of a batch of ``n`` events past the monthly ``quota`` (``used`` before it)."""
    return IngestResult(
        402,
        "MONTHLY_LIMIT_EXCEEDED",
        "Event limit exceeded for current cycle (%d events per month, %d used, %d in this request)" % (quota, used, n),
    )


def disk_refusal(quota: int, used: int, nbytes: int) -> IngestResult:
    """The 507 of a write of ``nbytes`` past the disk ``quota`` (``used`` before it)."""
    return IngestResult(
        507,
        "DISK_QUOTA_EXCEEDED",
        "this access key's events would take over %d bytes, the "
        "collector's disk quota per key (%d used, %d in this request)" % (quota, used, nbytes),
    )


def removed_refusal(bucket_key: str) -> IngestResult:
    """The 400 of a write to a removed bucket."""
    return IngestResult(400, "BUCKET_REMOVED", "bucket %r was removed" % bucket_key)


#: The 507 of a database that may not grow (its size cap, or the disk).
STORAGE_FULL = ("STORAGE_FULL", "the collector's database is full (its size cap, or the disk)")


def owner_prefix(owner: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """``(digest, prefix)`` of an owner filter given as a full sha256 digest or a prefix of one."""
    if not owner:
        return None, None
    return (owner, None) if len(owner) == 64 else (None, owner)


def bucket_dict(row: Mapping[str, Any]) -> Dict[str, Any]:
    """A bucket row as the API shows it."""
    return {
        "key": row["bucket_key"],
        "name": row["name"],
        "owner": row["owner"][:12],
        "tags": orjson.loads(row["tags_json"]),
        "created": row["created"],
        "auto_created": bool(row["auto_created"]),
        "removed": row["removed"] is not None,
        "event_count": row["event_count"],
        "last_update": row["last_update"],
    }


def merge_latest(rows: Iterable[Tuple[str, str, float, float, int]]) -> List[Dict[str, Any]]:
    """The latest value of each key from ``(key, value_json, epoch, received, count)`` rows of
    several buckets sorted by key, then epoch (counts summed)."""
    merged: Dict[str, Dict[str, Any]] = {}
    for key, vj, epoch, received, count in rows:
        prev = merged.get(key)
        if prev is None or epoch >= prev["epoch"]:
            merged[key] = {
                "key": key,
                "value": orjson.loads(vj),
                "epoch": epoch,
                "received": received,
                "count": count + (prev["count"] if prev else 0),
            }
        else:
            prev["count"] += count
    return list(merged.values())


def page_of_events(
    rows: Iterable[Tuple[str, str, float, float, int]], limit: int, max_bytes: int, descending: bool
) -> Tuple[List[Dict[str, Any]], Optional[Position]]:
    """One page from ``(key, value_json, epoch, received, id)`` rows in listing order, fetched
    one longer than ``limit``: ``(events oldest first, next position or None)``."""
    page: list = []
    size = 0
    more = False
    for row in rows:
        if len(page) >= limit or (page and size >= max_bytes):
            more = True
            break
        page.append(row)
        size += len(row[0]) + len(row[1]) + 40
    following = (page[-1][2], page[-1][4]) if more and page else None
    if descending:
        page.reverse()
    return [{"key": k, "value": orjson.loads(vj), "epoch": ep, "received": rc} for k, vj, ep, rc, _ in page], following


def event_dicts(rows: Iterable[Tuple[str, str, str, float, float, int]]) -> List[Dict[str, Any]]:
    """Stored events as :func:`read_events` lists them, from ``(bucket, key, value_json, epoch,
    received, request_id)`` rows."""
    return [
        {"bucket": b, "key": k, "value": orjson.loads(vj), "epoch": ep, "received": rc, "request_id": rid}
        for b, k, vj, ep, rc, rid in rows
    ]


class Unavailable(Exception):
    """The database cannot be reached (the request may be retried; the API answers 503)."""


# --------------------------------------------------------------------------- the interface


class Session(ABC):
    """One connection to the collector's database and the operations on it.

    Writes run in one transaction each: when one returns, what it stored is committed. The
    same calls give the same answers on every backend (README "The local collector").
    """

    # ---- writes

    @abstractmethod
    def create_bucket(
        self,
        owner: str,
        bucket_key: str,
        name: str,
        tags: Sequence[str],
        now: float,
        log: RequestLog,
        quotas: Quotas = Quotas(),
    ) -> IngestResult:
        """Create a bucket: 201 if new, 204 if it exists, 400 ``BUCKET_REMOVED`` if removed, 507
        past the owner's disk quota or when the database is full. An auto-created bucket takes
        the name given here. The request is logged in the same transaction."""

    @abstractmethod
    def ingest(
        self,
        owner: str,
        bucket_key: str,
        rows: Sequence[EventRow],
        received: float,
        log: RequestLog,
        quotas: Quotas = Quotas(),
    ) -> IngestResult:
        """Store a validated batch of events in one transaction, all or nothing: 204, or 400
        ``BUCKET_REMOVED``, 402 past the monthly quota, 507 past the disk quota or when the
        database is full. An unknown bucket is created (``auto_created``). The request is logged
        (with its final status) in the same transaction."""

    @abstractmethod
    def log_request(self, log: RequestLog) -> None:
        """Record one served request and count its status (only count it when the database is full)."""

    @abstractmethod
    def count_status(self, status: int) -> None:
        """Count an answer without logging the request (no key accepted)."""

    @abstractmethod
    def prune_requests(self, bounds: LogBounds, now: float) -> None:
        """Drop request-log rows beyond ``bounds`` (the per-status counts are kept)."""

    @abstractmethod
    def remove_bucket(self, bucket_key: str, owner: Optional[str] = None) -> int:
        """Mark bucket(s) with this key removed (all owners unless ``owner``); return how many."""

    @abstractmethod
    def remove_one_bucket(self, bucket_key: str, owner: Optional[str]) -> int:
        """Mark the one live bucket with this key of ``owner`` (a digest or a prefix; None: any)
        removed. Returns 1, 0 when there is none, -1 when several owners match (nothing removed)."""

    # ---- reads

    @abstractmethod
    def list_buckets(self, owner: Optional[str] = None, limit: int = -1) -> List[Dict[str, Any]]:
        """The buckets (the first ``limit``; all when negative) in creation order."""

    @abstractmethod
    def find_buckets(self, bucket_key: str, owner: Optional[str] = None) -> List[Dict[str, Any]]:
        """Buckets with this key (one per owner unless ``owner`` narrows it), with their ``id``."""

    @abstractmethod
    def latest_values(
        self, bucket_ids: Sequence[int], limit: int = -1, keys: Optional[Sequence[str]] = None
    ) -> List[Dict[str, Any]]:
        """Latest value (by epoch) of each key across ``bucket_ids`` (of ``keys`` when given; of
        the first ``limit`` keys, all when negative), sorted by key."""

    @abstractmethod
    def query_events(
        self,
        bucket_ids: Sequence[int],
        key: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        limit: int = limits.DEFAULT_EVENTS,
        descending: bool = False,
        after: Optional[Position] = None,
        max_bytes: int = limits.PAGE_BYTES,
    ) -> Tuple[List[Dict[str, Any]], Optional[Position]]:
        """One page of the events of ``bucket_ids`` (one key or all) with ``since <= epoch <=
        until``, by epoch: ``(events, next)``. At most ``limit`` events, ending early once their
        keys and values pass ``max_bytes`` (always one); ``next`` is where the following page
        starts (pass it as ``after``), None at the end. ``descending`` pages from the newest
        event back (each page still oldest first)."""

    @abstractmethod
    def stats(self, owner: Optional[str] = None, requests: bool = True) -> Dict[str, Any]:
        """Events stored, buckets and their bytes for the disk quota (of one owner, or all),
        and unless ``requests`` is false the write requests served and their per-status counts."""

    @abstractmethod
    def series(self, bucket_ids: Sequence[int], columns: int, max_cells: int = -1) -> Dict[str, Dict[str, Any]]:
        """Numeric events of each key whose latest value is a number, reduced to at most
        ``columns`` columns over the key's time range (keys in order until ``max_cells`` columns
        in all; all when negative): ``{key: {"t0", "t1", "count", "columns": [[t_first, t_last,
        min, max, n], ...]}}``. Each column keeps the lowest and highest value that fall in it."""

    @abstractmethod
    def all_events(self, bucket_key: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every stored event (of one bucket key, or all) in insertion order (see :func:`read_events`)."""

    @abstractmethod
    def event_count(self, bucket_key: Optional[str] = None) -> int:
        """Number of stored events (of one bucket key, or all)."""

    @abstractmethod
    def requests_log(self) -> List[Dict[str, Any]]:
        """The log of write requests served, oldest first."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    @property
    def usable(self) -> bool:
        """Whether the connection still works (a :class:`Store` replaces one that does not)."""
        return True


class Database(ABC):
    """A collector database: what to open and how.

    ``target`` is what the driver opens (a resolved file path, or the URL), ``label`` what
    messages show (a URL's password masked), ``writers`` how many writer threads a :class:`Store`
    runs, ``shared`` whether other collector processes may write to it at the same time (then the
    rate limit is kept in the database rather than in memory).
    """

    target: str
    label: str
    writers: int = 1
    shared: bool = False
    #: Errors that mean the database cannot be reached (raised as :class:`Unavailable`).
    unreachable: Tuple[type, ...] = ()

    @abstractmethod
    def prepare(self) -> None:
        """Create or migrate the schema (once, before the first session)."""

    @abstractmethod
    def session(self, write: bool) -> Session:
        """A new session (a writer's when ``write``)."""


def open_database(
    db: str, log_bounds: Optional[LogBounds] = None, max_db_bytes: Optional[int] = None, writers: Optional[int] = None
) -> Database:
    """The :class:`Database` named by ``db``: a ``postgresql://`` URL (or ``postgres://``), else an
    SQLite file (checked by :func:`~isstreamer.collector.sqlite_store.prepare_database`).
    ``max_db_bytes`` caps the database's size (writes past it get 507); ``writers`` sets the
    writer threads of a PostgreSQL store (default :data:`~isstreamer.collector.limits.PG_WRITERS`)."""
    bounds = log_bounds or LogBounds()
    if is_postgres_url(db):
        try:
            from .postgres_store import PostgresDatabase
        except ImportError as exc:
            raise ImportError(
                "a postgresql:// database needs psycopg 3: pip install 'isstreamer[postgres]' (%s)" % exc
            ) from exc

        return PostgresDatabase(db, bounds, max_db_bytes, writers or limits.PG_WRITERS)
    from .sqlite_store import SqliteDatabase

    return SqliteDatabase(db, bounds, max_db_bytes)


# --------------------------------------------------------------------------- the store


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Store:
    """The collector database as the application uses it: writer threads, reader threads.

    ``call_write(fn, flow, cost)`` runs ``fn(session)`` in a writer thread, in fair order between
    flows (:class:`~isstreamer.collector.sched.FairExecutor`); ``call_read(fn)`` in a reader
    thread; both return a :class:`concurrent.futures.Future` (wrap with ``asyncio.wrap_future``
    on the event loop). ``db`` and the other arguments are those of :func:`open_database`;
    :attr:`path` is what the driver opens, :attr:`label` what to show.
    """

    def __init__(
        self,
        db: str,
        readers: int = 2,
        log_bounds: Optional[LogBounds] = None,
        max_db_bytes: Optional[int] = None,
        writers: Optional[int] = None,
    ) -> None:
        self.database = open_database(db, log_bounds, max_db_bytes, writers)
        self.path = self.database.target
        self.label = self.database.label
        self.writers = self.database.writers
        self._local = threading.local()
        self._sessions: List[Session] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.database.prepare()
        except self.database.unreachable as exc:
            raise Unavailable("cannot open %s: %s" % (self.label, _first_line(exc))) from exc
        self._writer = FairExecutor("collector-writer", self.writers)
        self._readers = concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix="collector-reader")

    def _session(self, write: bool) -> Session:
        """This thread's session (opened on first use, and again after its connection broke)."""
        session: Optional[Session] = getattr(self._local, "session", None)
        if session is not None and not session.usable:
            with self._lock:
                self._sessions.remove(session)
            session.close()
            session = None
        if session is None:
            session = self.database.session(write)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _run(self, fn: Callable[[Session], T], write: bool) -> T:
        try:
            return fn(self._session(write))
        except self.database.unreachable as exc:
            raise Unavailable("%s: %s" % (self.label, _first_line(exc))) from exc

    def call_write(
        self, fn: Callable[[Session], T], flow: Optional[str] = None, cost: float = 1.0
    ) -> "concurrent.futures.Future[T]":
        """Run ``fn(writer_session)`` in a writer thread, for ``flow`` (the key holder) at
        ``cost`` (about the kilobytes of work it is). A database that cannot be reached raises
        :class:`Unavailable`."""
        return self._writer.submit(lambda: self._run(fn, True), flow, cost)

    def call_read(self, fn: Callable[[Session], T]) -> "concurrent.futures.Future[T]":
        """Run ``fn(reader_session)`` in a reader thread (:class:`Unavailable` as for writes)."""
        return self._readers.submit(self._run, fn, False)

    def remove_bucket(self, bucket_key: str, access_key: Optional[str] = None) -> int:
        """Mark a bucket removed (every owner's unless ``access_key``); return how many."""
        owner = hash_access_key(access_key) if access_key is not None else None
        return self.call_write(lambda s: s.remove_bucket(bucket_key, owner)).result()

    def close(self) -> None:
        """Wait for queued work, then close every session (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._readers.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


# --------------------------------------------------------------------------- looking at a database


def _with_session(db: str, fn: Callable[[Session], T], write: bool = False) -> T:
    """``fn`` on a fresh session (a writer's, on a schema made ready, when ``write``)."""
    database = open_database(db)
    if write:
        database.prepare()
    session = database.session(write)
    try:
        return fn(session)
    finally:
        session.close()


def read_events(db: str, bucket_key: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every stored event (of one bucket key, or all) in insertion order, on a fresh session.

    Each is ``{"bucket", "key", "value", "epoch", "received", "request_id"}`` with ``value``
    decoded from the stored JSON (so 21, 21.0, "21" and True stay distinct).
    """
    return _with_session(db, lambda s: s.all_events(bucket_key))


def read_event_count(db: str, bucket_key: Optional[str] = None) -> int:
    """Number of stored events (of one bucket key, or all) on a fresh session."""
    return _with_session(db, lambda s: s.event_count(bucket_key))


def read_buckets(db: str) -> List[Dict[str, Any]]:
    """All buckets in creation order (see :meth:`Session.list_buckets`) on a fresh session."""
    return _with_session(db, lambda s: s.list_buckets())


def read_requests(db: str) -> List[Dict[str, Any]]:
    """The log of write requests served (``POST /api/buckets``, ``/api/events``), oldest first."""
    return _with_session(db, lambda s: s.requests_log())


def read_stats(db: str) -> Dict[str, Any]:
    """:meth:`Session.stats` on a fresh session."""
    return _with_session(db, lambda s: s.stats())


def remove_bucket(db: str, bucket_key: str, owner: Optional[str] = None) -> int:
    """:meth:`Session.remove_bucket` on a fresh session (a writer's)."""
    return _with_session(db, lambda s: s.remove_bucket(bucket_key, owner), write=True)
