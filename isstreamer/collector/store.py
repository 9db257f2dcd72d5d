"""SQLite (WAL) storage of the local collector.

All writes go through one writer thread that owns the only writing connection, so the
event loop never blocks on the database and writes never contend with each other. Reads use
a small pool of reader threads with one connection each (WAL lets them run beside the writer).
The read helpers at the bottom of this module (``read_events`` ...) open a fresh connection on
a database path and are what tests use to look at what the collector stored.

Values keep their JSON type exactly: ``events.value_json`` holds the value as JSON text (``21``,
``21.0``, ``"21"`` and ``true`` stay distinct) and ``events.value_num`` a REAL copy for numbers.
Access keys are stored only as their sha256 hex digest (the bucket's ``owner``).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

import orjson

from .. import safefile
from . import limits
from .sched import FairExecutor

T = TypeVar("T")

#: One event ready to store: (key, value_json, value_num, epoch).
EventRow = Tuple[str, str, Optional[float], float]

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    bucket_key TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    tags_json TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    auto_created INTEGER NOT NULL DEFAULT 0,
    removed REAL,
    event_count INTEGER NOT NULL DEFAULT 0,
    last_update REAL,
    UNIQUE (owner, bucket_key)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    bucket_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    value_json TEXT NOT NULL,
    value_num REAL,
    epoch REAL NOT NULL,
    received REAL NOT NULL,
    request_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_bucket_key_epoch ON events (bucket_id, key, epoch);
CREATE INDEX IF NOT EXISTS events_bucket_epoch ON events (bucket_id, epoch);
CREATE TABLE IF NOT EXISTS latest (
    bucket_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    value_json TEXT NOT NULL,
    value_num REAL,
    epoch REAL NOT NULL,
    received REAL NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (bucket_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
    owner TEXT NOT NULL,
    month TEXT NOT NULL,
    events INTEGER NOT NULL,
    PRIMARY KEY (owner, month)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    request_uid TEXT NOT NULL,
    time REAL NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    error_type TEXT,
    owner TEXT,
    bucket_key TEXT,
    events INTEGER NOT NULL DEFAULT 0,
    body_bytes INTEGER,
    content_type TEXT,
    content_encoding TEXT,
    accept_version TEXT,
    user_agent TEXT
);
CREATE TABLE IF NOT EXISTS status_counts (
    status INTEGER PRIMARY KEY,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS storage (
    owner TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
) WITHOUT ROWID;
"""

#: Bytes one stored event takes beyond its key (counted twice: row and index) and its value.
#: Measured with SQLite's default pages: 75-85 for small events; this is an upper bound.
EVENT_OVERHEAD = 96
#: Bytes one bucket row takes beyond its key, name and tags.
BUCKET_OVERHEAD = 256
#: What an older database holds, counted once when the ``storage`` table is new.
_STORAGE_BACKFILL = (
    "INSERT INTO storage (owner, bytes) SELECT owner, SUM(bytes) FROM ("
    " SELECT b.owner AS owner, 2 * length(CAST(e.key AS BLOB)) + length(CAST(e.value_json AS BLOB)) + %d AS bytes"
    " FROM events e JOIN buckets b ON b.id = e.bucket_id"
    " UNION ALL SELECT owner, length(CAST(bucket_key AS BLOB)) + length(CAST(name AS BLOB))"
    " + length(CAST(tags_json AS BLOB)) + %d FROM buckets"
    ") GROUP BY owner" % (EVENT_OVERHEAD, BUCKET_OVERHEAD)
)

_LATEST_UPSERT = """
INSERT INTO latest (bucket_id, key, value_json, value_num, epoch, received, count)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (bucket_id, key) DO UPDATE SET
    value_json = CASE WHEN excluded.epoch >= latest.epoch THEN excluded.value_json ELSE latest.value_json END,
    value_num = CASE WHEN excluded.epoch >= latest.epoch THEN excluded.value_num ELSE latest.value_num END,
    received = CASE WHEN excluded.epoch >= latest.epoch THEN excluded.received ELSE latest.received END,
    epoch = MAX(latest.epoch, excluded.epoch),
    count = latest.count + excluded.count
"""


def hash_access_key(access_key: str) -> str:
    """Return the sha256 hex digest under which an access key's buckets are stored."""
    return hashlib.sha256(access_key.encode("utf-8")).hexdigest()


def month_of(epoch: float) -> str:
    """Return the UTC calendar month ``YYYY-MM`` of an epoch (the monthly quota period)."""
    return time.strftime("%Y-%m", time.gmtime(epoch))


#: The write-ahead log is truncated back to this size after a checkpoint (its disk use stays near it).
WAL_LIMIT = 16 * limits.MIB
#: Longest text kept in a column of the request log (longer values are cut, marked with "…").
LOG_FIELD_CHARS = 200
#: The request log is pruned to its bounds every this many rows.
_PRUNE_EVERY = 256


#: What SQLite creates beside the database file (by name, without O_EXCL or O_NOFOLLOW).
SIDE_FILES = ("-wal", "-shm", "-journal")


def prepare_database(path: str) -> str:
    """Make ``path`` safe to hand to SQLite, which opens the database and creates its ``-wal``,
    ``-shm`` and ``-journal`` files itself, by name; return the path to open (its directory
    resolved once, here, so that no symlink is followed later).

    The directory is created 0700 if missing, and must be this user's and writable by no other
    (nor may a directory above it be redirected by another user): in a shared directory anyone
    could create those names first. The database file and the side files that exist must be
    regular files of this user (never symlinks); they are made 0600. The database is created
    0600, exclusively, if missing. Anything else raises :class:`~isstreamer.safefile.Refused`.
    """
    directory = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    safefile.ensure_private_dir(directory, "the database directory")
    safefile.check_parents(directory)
    resolved = os.path.join(directory, os.path.basename(path))
    for side in SIDE_FILES:
        safefile.make_private(resolved + side)
    safefile.make_private(resolved, create=True)
    return resolved


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables that are missing; a database made before the disk quota existed gets
    its ``storage`` table filled from what it holds."""
    had_storage = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'storage'").fetchone()
    conn.executescript(SCHEMA)
    if not had_storage:
        conn.execute(_STORAGE_BACKFILL)


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


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open an autocommit connection with the collector's pragmas (WAL unless ``readonly``).

    ``readonly`` only skips switching the journal mode; it does not forbid writes.
    """
    conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


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

    def row(self) -> tuple:
        """Return the values in ``requests`` column order (without ``id``); text capped."""
        c = cap_text
        return (
            self.request_uid, self.time, c(self.method), c(self.path), self.status, c(self.error_type),
            self.owner, c(self.bucket_key, 250), self.events, self.body_bytes, c(self.content_type),
            c(self.content_encoding), c(self.accept_version), c(self.user_agent),
        )


_REQUEST_INSERT = (
    "INSERT INTO requests (request_uid, time, method, path, status, error_type, owner, "
    "bucket_key, events, body_bytes, content_type, content_encoding, accept_version, "
    "user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_STATUS_UPSERT = (
    "INSERT INTO status_counts (status, count) VALUES (?, 1) "
    "ON CONFLICT (status) DO UPDATE SET count = count + 1"
)


@dataclass
class IngestResult:
    """Outcome of :func:`ingest` and :func:`create_bucket`: ``status`` 201/204, or 400
    (``BUCKET_REMOVED``), 402 (monthly quota), 507 (disk quota, database full)."""

    status: int
    error_type: Optional[str] = None
    message: str = ""
    stored: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- write operations
# Each takes the writer connection and runs inside the writer thread (see Store.call_write).


@dataclass(frozen=True)
class LogBounds:
    """How much of the request log is kept: at most ``rows`` rows, none older than ``max_age`` s."""

    rows: int = limits.LOG_ROWS
    max_age: float = limits.LOG_DAYS * 86400.0


#: Bounds of the request log, set by the Store that owns the writer connection.
_BOUNDS: Dict[int, LogBounds] = {}


def _log(conn: sqlite3.Connection, log: RequestLog) -> int:
    cur = conn.execute(_REQUEST_INSERT, log.row())
    conn.execute(_STATUS_UPSERT, (log.status,))
    rid = int(cur.lastrowid or 0)
    bounds = _BOUNDS.get(id(conn), LogBounds())
    if rid % max(1, min(_PRUNE_EVERY, bounds.rows)) == 0:
        prune_requests(conn, bounds, log.time)
    return rid


def prune_requests(conn: sqlite3.Connection, bounds: LogBounds, now: float) -> None:
    """Drop request-log rows beyond ``bounds`` (the per-status counts are kept)."""
    conn.execute("DELETE FROM requests WHERE id <= (SELECT MAX(id) FROM requests) - ?", (max(0, bounds.rows),))
    conn.execute("DELETE FROM requests WHERE time < ?", (now - bounds.max_age,))


def count_status(conn: sqlite3.Connection, status: int) -> None:
    """Count an answer without logging the request (no key accepted); not even that when the
    database is full."""
    try:
        conn.execute(_STATUS_UPSERT, (status,))
    except sqlite3.OperationalError as exc:
        if not is_full(exc):
            raise


def log_request(conn: sqlite3.Connection, log: RequestLog) -> None:
    """Record one served request (and count its status); when the database is full, only count it."""
    try:
        with _txn(conn):
            _log(conn, log)
    except sqlite3.OperationalError as exc:
        if not is_full(exc):
            raise
        count_status(conn, log.status)


def is_full(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error says the database may not grow (``max_db_size``, or the disk)."""
    return getattr(exc, "sqlite_errorcode", None) == getattr(sqlite3, "SQLITE_FULL", 13) or "is full" in str(exc)


@dataclass(frozen=True)
class Quotas:
    """What one key holder may store (None: no limit): ``monthly_events`` events per UTC calendar
    month, ``disk_bytes`` bytes of events and buckets (as :func:`stored_bytes` estimates them)."""

    monthly_events: Optional[int] = None
    disk_bytes: Optional[int] = None


def stored_bytes(rows: Sequence[EventRow]) -> int:
    """Estimated bytes the database takes for ``rows`` (an upper bound, see :data:`EVENT_OVERHEAD`)."""
    total = EVENT_OVERHEAD * len(rows)
    for key, vj, _, _ in rows:
        total += 2 * (len(key) if key.isascii() else len(key.encode("utf-8", "surrogatepass")))
        total += len(vj) if vj.isascii() else len(vj.encode("utf-8", "surrogatepass"))
    return total


def _bucket_bytes(bucket_key: str, name: str, tags_json: str = "[]") -> int:
    return BUCKET_OVERHEAD + sum(len(t.encode("utf-8", "surrogatepass")) for t in (bucket_key, name, tags_json))


def _disk_used(conn: sqlite3.Connection, owner: str) -> int:
    row = conn.execute("SELECT bytes FROM storage WHERE owner = ?", (owner,)).fetchone()
    return row[0] if row else 0


def _add_disk_used(conn: sqlite3.Connection, owner: str, nbytes: int) -> None:
    conn.execute("INSERT INTO storage (owner, bytes) VALUES (?, ?) "
                 "ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes", (owner, nbytes))


def _over_disk_quota(conn: sqlite3.Connection, owner: str, nbytes: int,
                     quota: Optional[int]) -> Optional["IngestResult"]:
    """The 507 for a key holder whose stored bytes plus ``nbytes`` would pass ``quota``, else None."""
    if quota is None:
        return None
    used = _disk_used(conn, owner)
    if used + nbytes <= quota:
        return None
    return IngestResult(507, "DISK_QUOTA_EXCEEDED", "this access key's events would take over %d bytes, the "
                        "collector's disk quota per key (%d used, %d in this request)" % (quota, used, nbytes))


def _when_full(conn: sqlite3.Connection, log: RequestLog, write: Callable[[], "IngestResult"]) -> "IngestResult":
    """``write()`` (one transaction); a database that may not grow makes it a 507 instead."""
    try:
        return write()
    except sqlite3.OperationalError as exc:
        if not is_full(exc):
            raise
    result = IngestResult(507, "STORAGE_FULL", "the collector's database is full (its size cap, or the disk)")
    log.status, log.error_type = result.status, result.error_type
    log_request(conn, log)
    return result


class _txn:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not exc_type:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # SQLite already rolled back after some errors (SQLITE_FULL)
            self.conn.execute("ROLLBACK")


def create_bucket(
    conn: sqlite3.Connection,
    owner: str,
    bucket_key: str,
    name: str,
    tags: Sequence[str],
    now: float,
    log: RequestLog,
    quotas: Quotas = Quotas(),
) -> IngestResult:
    """Create a bucket: 201 if new, 204 if it exists, 400 ``BUCKET_REMOVED`` if removed, 507
    past the owner's disk quota or when the database is full.

    A bucket that was auto-created by events keeps ``auto_created = 1`` but takes the name given
    here. The request is logged in the same transaction.
    """
    def write() -> IngestResult:
        with _txn(conn):
            result = _create_bucket(conn, owner, bucket_key, name, orjson.dumps(list(tags)).decode(), now, quotas)
            log.status, log.error_type = result.status, result.error_type
            _log(conn, log)
        return result

    return _when_full(conn, log, write)


def _create_bucket(conn: sqlite3.Connection, owner: str, bucket_key: str, name: str, tags_json: str, now: float,
                   quotas: Quotas) -> IngestResult:
    row = conn.execute(
        "SELECT id, removed, auto_created FROM buckets WHERE owner = ? AND bucket_key = ?", (owner, bucket_key)
    ).fetchone()
    if row is not None and row[1] is not None:
        return IngestResult(400, "BUCKET_REMOVED", "bucket %r was removed" % bucket_key)
    if row is not None:
        if row[2] and name:
            conn.execute("UPDATE buckets SET name = ? WHERE id = ?", (name, row[0]))
        return IngestResult(204)
    nbytes = _bucket_bytes(bucket_key, name, tags_json)
    refused = _over_disk_quota(conn, owner, nbytes, quotas.disk_bytes)
    if refused is not None:
        return refused
    conn.execute("INSERT INTO buckets (owner, bucket_key, name, tags_json, created, auto_created) "
                 "VALUES (?, ?, ?, ?, ?, 0)", (owner, bucket_key, name, tags_json, now))
    _add_disk_used(conn, owner, nbytes)
    return IngestResult(201)


def ingest(
    conn: sqlite3.Connection,
    owner: str,
    bucket_key: str,
    rows: Sequence[EventRow],
    received: float,
    log: RequestLog,
    quotas: Quotas = Quotas(),
) -> IngestResult:
    """Store a validated batch of events in one transaction, all or nothing.

    Refuses with 400 ``BUCKET_REMOVED`` for a removed bucket, 402 when the owner's events this
    month plus the batch would pass the monthly quota, 507 when its stored bytes would pass the
    disk quota or the database is full. Creates an unknown bucket with ``auto_created = 1``.
    Logs the request (with its final status) in the same transaction.
    """
    def write() -> IngestResult:
        with _txn(conn):
            return _ingest(conn, owner, bucket_key, rows, received, log, quotas)

    return _when_full(conn, log, write)


def _ingest(conn: sqlite3.Connection, owner: str, bucket_key: str, rows: Sequence[EventRow], received: float,
            log: RequestLog, quotas: Quotas) -> IngestResult:
    brow = conn.execute("SELECT id, removed FROM buckets WHERE owner = ? AND bucket_key = ?",
                        (owner, bucket_key)).fetchone()
    nbytes = stored_bytes(rows) + (_bucket_bytes(bucket_key, bucket_key) if brow is None else 0)
    month = month_of(received)
    result = _ingest_verdict(conn, owner, bucket_key, brow, len(rows), nbytes, month, quotas)
    log.status, log.error_type, log.events = result.status, result.error_type, len(rows)
    request_id = _log(conn, log)
    if result.status != 204 or not rows:
        return result
    if brow is None:
        cur = conn.execute("INSERT INTO buckets (owner, bucket_key, name, created, auto_created) "
                           "VALUES (?, ?, ?, ?, 1)", (owner, bucket_key, bucket_key, received))
        bucket_id = int(cur.lastrowid or 0)
    else:
        bucket_id = brow[0]
    _insert_events(conn, bucket_id, rows, received, request_id)
    conn.execute("INSERT INTO usage (owner, month, events) VALUES (?, ?, ?) "
                 "ON CONFLICT (owner, month) DO UPDATE SET events = events + excluded.events",
                 (owner, month, len(rows)))
    _add_disk_used(conn, owner, nbytes)
    return result


def _ingest_verdict(conn: sqlite3.Connection, owner: str, bucket_key: str, brow: Optional[tuple], n: int,
                    nbytes: int, month: str, quotas: Quotas) -> IngestResult:
    """204, or why the batch is refused (removed bucket, monthly quota, disk quota)."""
    if brow is not None and brow[1] is not None:
        return IngestResult(400, "BUCKET_REMOVED", "bucket %r was removed" % bucket_key)
    quota = quotas.monthly_events
    if quota is not None:
        urow = conn.execute("SELECT events FROM usage WHERE owner = ? AND month = ?", (owner, month)).fetchone()
        used = urow[0] if urow else 0
        if used + n > quota:
            return IngestResult(402, "MONTHLY_LIMIT_EXCEEDED", "Event limit exceeded for current cycle (%d events "
                                "per month, %d used, %d in this request)" % (quota, used, n))
    if n:
        refused = _over_disk_quota(conn, owner, nbytes, quotas.disk_bytes)
        if refused is not None:
            return refused
    return IngestResult(204, stored=n)


def _insert_events(conn: sqlite3.Connection, bucket_id: int, rows: Sequence[EventRow], received: float,
                   request_id: int) -> None:
    """The rows, the latest value of each key, the bucket's count."""
    conn.executemany(
        "INSERT INTO events (bucket_id, key, value_json, value_num, epoch, received, request_id) "
        "VALUES (%d, ?, ?, ?, ?, %r, %d)" % (bucket_id, received, request_id),
        rows,
    )
    latest: Dict[str, list] = {}
    for key, vj, vn, ep in rows:
        cur_l = latest.get(key)
        if cur_l is None:
            latest[key] = [bucket_id, key, vj, vn, ep, received, 1]
        else:
            if ep >= cur_l[4]:
                cur_l[2], cur_l[3], cur_l[4] = vj, vn, ep
            cur_l[6] += 1
    conn.executemany(_LATEST_UPSERT, latest.values())
    conn.execute("UPDATE buckets SET event_count = event_count + ?, last_update = ? WHERE id = ?",
                 (len(rows), received, bucket_id))


def remove_bucket(conn: sqlite3.Connection, bucket_key: str, owner: Optional[str] = None) -> int:
    """Mark bucket(s) with this key removed (all owners unless ``owner``); return how many."""
    with _txn(conn):
        sql = "UPDATE buckets SET removed = ? WHERE bucket_key = ? AND removed IS NULL"
        args: list = [time.time(), bucket_key]
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        return conn.execute(sql, args).rowcount


def remove_one_bucket(conn: sqlite3.Connection, bucket_key: str, owner: Optional[str]) -> int:
    """Mark the one live bucket with this key of ``owner`` (a digest or a prefix; None: any)
    removed. Returns 1, 0 when there is none, -1 when several owners match (nothing removed)."""
    clause, args = _owner_clause(owner)
    with _txn(conn):
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM buckets WHERE bucket_key = ? AND removed IS NULL" + clause, [bucket_key] + args)]
        if len(ids) != 1:
            return -1 if ids else 0
        conn.execute("UPDATE buckets SET removed = ? WHERE id = ?", (time.time(), ids[0]))
        return 1


# --------------------------------------------------------------------------- read operations


def _bucket_dict(row: sqlite3.Row) -> Dict[str, Any]:
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


def _owner_clause(owner: Optional[str]) -> Tuple[str, list]:
    """SQL filter on an owner given as a full sha256 digest or a prefix of one."""
    if not owner:
        return "", []
    if len(owner) == 64:
        return " AND owner = ?", [owner]
    return " AND substr(owner, 1, ?) = ?", [len(owner), owner]


def list_buckets(conn: sqlite3.Connection, owner: Optional[str] = None, limit: int = -1) -> List[Dict[str, Any]]:
    """The buckets (the first ``limit``; all when negative) in creation order, as dicts (see
    ``GET /api/buckets``)."""
    clause, args = _owner_clause(owner)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM buckets WHERE 1" + clause + " ORDER BY id LIMIT ?",
                            args + [limit]).fetchall()
    finally:
        conn.row_factory = None
    return [_bucket_dict(r) for r in rows]


def find_buckets(
    conn: sqlite3.Connection, bucket_key: str, owner: Optional[str] = None
) -> List[Dict[str, Any]]:
    """Buckets with this key (one per owner unless ``owner`` narrows it), with their ``id``."""
    clause, args = _owner_clause(owner)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT * FROM buckets WHERE bucket_key = ?" + clause + " ORDER BY id", [bucket_key] + args
        ).fetchall()
    finally:
        conn.row_factory = None
    out = []
    for r in rows:
        d = _bucket_dict(r)
        d["id"] = r["id"]
        out.append(d)
    return out


def _ids_sql(ids: Iterable[int]) -> str:
    return ",".join(str(int(i)) for i in ids) or "NULL"


def latest_values(conn: sqlite3.Connection, bucket_ids: Sequence[int], limit: int = -1,
                  keys: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Latest value (by epoch) of each key across ``bucket_ids`` (of ``keys`` when given; of
    the first ``limit`` keys, all when negative), sorted by key."""
    ids = _ids_sql(bucket_ids)
    if keys is not None:
        wanted, args = "(%s)" % ",".join("?" * len(keys)), list(keys)
    else:
        wanted, args = "(SELECT DISTINCT key FROM latest WHERE bucket_id IN (%s) ORDER BY key LIMIT ?)" % ids, [limit]
    rows = conn.execute(
        "SELECT key, value_json, epoch, received, count FROM latest WHERE bucket_id IN (%s) AND key IN %s "
        "ORDER BY key, epoch" % (ids, wanted), args
    ).fetchall()
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


#: A position in a listing of events: (epoch, id) of the last event of a page.
Position = Tuple[float, int]


def query_events(
    conn: sqlite3.Connection,
    bucket_ids: Sequence[int],
    key: Optional[str] = None,
    since: Optional[float] = None,
    until: Optional[float] = None,
    limit: int = limits.DEFAULT_EVENTS,
    descending: bool = False,
    after: Optional[Position] = None,
    max_bytes: int = limits.PAGE_BYTES,
) -> Tuple[List[Dict[str, Any]], Optional[Position]]:
    """One page of the events of ``bucket_ids`` (one key or all) with ``since <= epoch <= until``,
    by epoch: ``(events, next)``.

    The page holds at most ``limit`` events, and ends early once their keys and values pass
    ``max_bytes`` (it always holds one). ``next`` is where the following page starts (pass it as
    ``after``), None when there is no more. ``descending`` pages from the newest event back
    (each page still returned oldest first).
    """
    sql = "SELECT key, value_json, epoch, received, id FROM events WHERE bucket_id IN (%s)" % _ids_sql(bucket_ids)
    args: list = []
    for clause, value in ((" AND key = ?", key), (" AND epoch >= ?", since), (" AND epoch <= ?", until)):
        if value is not None:
            sql += clause
            args.append(value)
    if after is not None:
        sql += " AND (epoch, id) %s (?, ?)" % ("<" if descending else ">")
        args += [after[0], after[1]]
    order = "DESC" if descending else "ASC"
    sql += " ORDER BY epoch %s, id %s LIMIT ?" % (order, order)
    args.append(int(limit) + 1)
    rows: list = []
    size = 0
    more = False
    for row in conn.execute(sql, args):
        if len(rows) >= limit or (rows and size >= max_bytes):
            more = True
            break
        rows.append(row)
        size += len(row[0]) + len(row[1]) + 40
    following = (rows[-1][2], rows[-1][4]) if more and rows else None
    if descending:
        rows.reverse()
    events = [{"key": k, "value": orjson.loads(vj), "epoch": ep, "received": rc} for k, vj, ep, rc, _ in rows]
    return events, following


def stats(conn: sqlite3.Connection, owner: Optional[str] = None, requests: bool = True) -> Dict[str, Any]:
    """Totals: events stored, buckets and the bytes they take for the disk quota (of one owner,
    or all), and unless ``requests`` is false the write requests served and their per-status counts."""
    clause, args = _owner_clause(owner)
    events, buckets = conn.execute(
        "SELECT COALESCE(SUM(event_count), 0), COUNT(*) FROM buckets WHERE 1" + clause, args
    ).fetchone()
    stored = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM storage WHERE 1" + clause, args).fetchone()[0]
    statuses: Dict[str, int] = {}
    if requests:
        statuses = {str(s): c for s, c in conn.execute("SELECT status, count FROM status_counts ORDER BY status")}
    return {
        "events": events,
        "buckets": buckets,
        "stored_bytes": stored,
        "requests": sum(statuses.values()),
        "statuses": statuses,
    }


_SERIES_SQL = (
    "SELECT MIN(CAST((epoch - ?) * ? AS INTEGER), ?) AS px, MIN(epoch), MAX(epoch), MIN(value_num), "
    "MAX(value_num), COUNT(*) FROM events WHERE bucket_id IN (%s) AND key = ? AND value_num IS NOT NULL "
    "GROUP BY px ORDER BY px"
)


def series(conn: sqlite3.Connection, bucket_ids: Sequence[int], columns: int,
           max_cells: int = -1) -> Dict[str, Dict[str, Any]]:
    """Numeric events of each key reduced to at most ``columns`` columns over the key's time
    range; keys in order until ``max_cells`` columns in all are reached (all when negative).

    Returns ``{key: {"t0", "t1", "count", "columns": [[t_first, t_last, min, max, n], ...]}}``
    for the keys whose latest value is a number: each column keeps the lowest and highest value
    of the events that fall in it, so a chart one column per pixel wide shows every spike
    however many events there are.
    """
    ids = _ids_sql(bucket_ids)
    keys = conn.execute(  # keys whose latest value is a number: the charted ones
        "SELECT DISTINCT key FROM latest WHERE bucket_id IN (%s) AND value_num IS NOT NULL ORDER BY key" % ids)
    out: Dict[str, Dict[str, Any]] = {}
    cells = 0
    for (key,) in keys:
        if 0 <= max_cells <= cells:
            break
        t0, t1 = conn.execute(  # two seeks on the (bucket_id, key, epoch) index
            "SELECT MIN(epoch), MAX(epoch) FROM events WHERE bucket_id IN (%s) AND key = ?" % ids, (key,)).fetchone()
        if t0 is None:
            continue
        scale = columns / max(t1 - t0, 1e-9)
        cols = [[ta, tb, lo, hi, n] for _px, ta, tb, lo, hi, n in
                conn.execute(_SERIES_SQL % ids, (t0, scale, columns - 1, key))]
        out[key] = {"t0": t0, "t1": t1, "count": sum(c[4] for c in cols), "columns": cols}
        cells += len(cols)
    return out


def read_events(path: str, bucket_key: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every stored event (of one bucket key, or all) in insertion order, on a fresh connection.

    Each is ``{"bucket", "key", "value", "epoch", "received", "request_id"}`` with ``value``
    decoded from the stored JSON (so 21, 21.0, "21" and True stay distinct).
    """
    conn = connect(path, readonly=True)
    try:
        sql = (
            "SELECT b.bucket_key, e.key, e.value_json, e.epoch, e.received, e.request_id "
            "FROM events e JOIN buckets b ON b.id = e.bucket_id"
        )
        args: list = []
        if bucket_key is not None:
            sql += " WHERE b.bucket_key = ?"
            args.append(bucket_key)
        sql += " ORDER BY e.id"
        return [
            {"bucket": b, "key": k, "value": orjson.loads(vj), "epoch": ep, "received": rc, "request_id": rid}
            for b, k, vj, ep, rc, rid in conn.execute(sql, args)
        ]
    finally:
        conn.close()


def read_event_count(path: str, bucket_key: Optional[str] = None) -> int:
    """Number of stored events (of one bucket key, or all) on a fresh connection."""
    conn = connect(path, readonly=True)
    try:
        if bucket_key is None:
            return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return conn.execute(
            "SELECT COUNT(*) FROM events e JOIN buckets b ON b.id = e.bucket_id WHERE b.bucket_key = ?",
            (bucket_key,),
        ).fetchone()[0]
    finally:
        conn.close()


def read_buckets(path: str) -> List[Dict[str, Any]]:
    """All buckets in creation order (see :func:`list_buckets`) on a fresh connection."""
    conn = connect(path, readonly=True)
    try:
        return list_buckets(conn)
    finally:
        conn.close()


def read_requests(path: str) -> List[Dict[str, Any]]:
    """The log of write requests served (``POST /api/buckets``, ``/api/events``), oldest first."""
    conn = connect(path, readonly=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        conn.close()


def read_stats(path: str) -> Dict[str, Any]:
    """:func:`stats` on a fresh connection."""
    conn = connect(path, readonly=True)
    try:
        return stats(conn)
    finally:
        conn.close()


# --------------------------------------------------------------------------- the store


class Store:
    """The collector database: one writer thread, a small pool of reader threads.

    ``call_write(fn, flow, cost)`` runs ``fn(conn)`` in the writer thread, in fair order between
    flows (:class:`~isstreamer.collector.sched.FairExecutor`); ``call_read(fn)`` in a reader
    thread; both return a :class:`concurrent.futures.Future` (wrap with ``asyncio.wrap_future``
    on the event loop). ``max_db_bytes`` caps the database file (writes past it get 507). A
    database file is first checked by :func:`prepare_database`; :attr:`path` is what SQLite opens.
    """

    def __init__(self, path: str, readers: int = 2, log_bounds: Optional[LogBounds] = None,
                 max_db_bytes: Optional[int] = None) -> None:
        self.log_bounds = log_bounds or LogBounds()
        self.max_db_bytes = max_db_bytes
        if path != ":memory:" and not path.startswith("file:"):
            path = prepare_database(path)
        self.path = path
        self._writer = FairExecutor("collector-writer")
        self._readers = concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix="collector-reader")
        self._local = threading.local()
        self._read_conns: List[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._wconn: Optional[sqlite3.Connection] = None
        self._closed = False
        self._writer.submit(self._open_writer).result()

    def _open_writer(self) -> None:
        conn = connect(self.path)
        ensure_schema(conn)
        conn.execute("PRAGMA journal_size_limit = %d" % WAL_LIMIT)
        if self.max_db_bytes:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute("PRAGMA max_page_count = %d" % max(1, self.max_db_bytes // page))
        _BOUNDS[id(conn)] = self.log_bounds
        self._wconn = conn

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._read_conns.append(conn)
        return fn(conn)

    def call_write(self, fn: Callable[[sqlite3.Connection], T], flow: Optional[str] = None,
                   cost: float = 1.0) -> "concurrent.futures.Future[T]":
        """Run ``fn(writer_connection)`` in the writer thread, for ``flow`` (the key holder) at
        ``cost`` (about the kilobytes of work it is)."""
        return self._writer.submit(lambda: fn(self._wconn), flow, cost)  # type: ignore[arg-type]

    def call_read(self, fn: Callable[[sqlite3.Connection], T]) -> "concurrent.futures.Future[T]":
        """Run ``fn(reader_connection)`` in a reader thread."""
        return self._readers.submit(self._run_read, fn)

    def remove_bucket(self, bucket_key: str, access_key: Optional[str] = None) -> int:
        """Mark a bucket removed (every owner's unless ``access_key``); return how many."""
        owner = hash_access_key(access_key) if access_key is not None else None
        return self.call_write(lambda c: remove_bucket(c, bucket_key, owner)).result()

    def close(self) -> None:
        """Wait for queued work, then close every connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._readers.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        with self._lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()
        if self._wconn is not None:
            _BOUNDS.pop(id(self._wconn), None)
            self._wconn.close()
            self._wconn = None
