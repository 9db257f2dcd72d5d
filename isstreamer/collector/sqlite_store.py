"""The SQLite backend of the collector (the default; WAL mode, a file of this user).

One writer thread owns the only writing connection of a process, and every write transaction
is ``BEGIN IMMEDIATE``: writes are serialized (across processes too: ``serve --workers N``
shares the file through SQLite's locks). Readers use their own connections beside the writer.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import orjson

from .. import safefile
from . import limits
from .store import (
    BUCKET_OVERHEAD,
    STORAGE_FULL,
    Database,
    EventRow,
    IngestResult,
    LogBounds,
    Position,
    Quotas,
    RequestLog,
    Session,
    bucket_bytes,
    bucket_dict,
    disk_refusal,
    event_dicts,
    merge_latest,
    month_of,
    monthly_refusal,
    owner_prefix,
    page_of_events,
    removed_refusal,
    stored_bytes,
    PRUNE_EVERY,
)

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
_REQUEST_INSERT = "INSERT INTO requests (%s) VALUES (%s)" % (
    ", ".join(RequestLog.COLUMNS),
    ", ".join("?" * len(RequestLog.COLUMNS)),
)
_STATUS_UPSERT = (
    "INSERT INTO status_counts (status, count) VALUES (?, 1) ON CONFLICT (status) DO UPDATE SET count = count + 1"
)
_SERIES_SQL = (
    "SELECT MIN(CAST((epoch - ?) * ? AS INTEGER), ?) AS px, MIN(epoch), MAX(epoch), MIN(value_num), "
    "MAX(value_num), COUNT(*) FROM events WHERE bucket_id IN (%s) AND key = ? AND value_num IS NOT NULL "
    "GROUP BY px ORDER BY px"
)

#: The write-ahead log is truncated back to this size after a checkpoint (its disk use stays near it).
WAL_LIMIT = 16 * limits.MIB
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


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables that are missing, in one transaction (collectors starting together
    create them once); a database made before the disk quota existed gets its ``storage`` table
    filled from what it holds."""
    with _txn(conn):
        had_storage = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'storage'").fetchone()
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        if not had_storage:
            conn.execute(_STORAGE_BACKFILL)


def is_full(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error says the database may not grow (``max_db_size``, or the disk)."""
    return getattr(exc, "sqlite_errorcode", None) == getattr(sqlite3, "SQLITE_FULL", 13) or "is full" in str(exc)


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


def _ids_sql(ids: Iterable[int]) -> str:
    return ",".join(str(int(i)) for i in ids) or "NULL"


def _owner_clause(owner: Optional[str]) -> Tuple[str, list]:
    """SQL filter on an owner given as a full sha256 digest or a prefix of one."""
    digest, prefix = owner_prefix(owner)
    if digest is not None:
        return " AND owner = ?", [digest]
    if prefix is not None:
        return " AND substr(owner, 1, ?) = ?", [len(prefix), prefix]
    return "", []


class SqliteDatabase(Database):
    """An SQLite file (see :func:`prepare_database` for what is refused); ``max_db_bytes`` caps
    its size (SQLite's ``max_page_count``)."""

    def __init__(self, path: str, log_bounds: LogBounds, max_db_bytes: Optional[int] = None) -> None:
        if path != ":memory:" and not path.startswith("file:"):
            path = prepare_database(path)
        self.target = self.label = path
        self.log_bounds = log_bounds
        self.max_db_bytes = max_db_bytes

    def prepare(self) -> None:
        """Create the missing tables."""
        conn = connect(self.target)
        try:
            ensure_schema(conn)
        finally:
            conn.close()

    def session(self, write: bool) -> "SqliteSession":
        """A connection: a writer's gets the WAL size limit and the database size cap."""
        conn = connect(self.target, readonly=not write)
        if write:
            conn.execute("PRAGMA journal_size_limit = %d" % WAL_LIMIT)
            if self.max_db_bytes:
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute("PRAGMA max_page_count = %d" % max(1, self.max_db_bytes // page))
        return SqliteSession(conn, self.log_bounds)


class SqliteSession(Session):
    """The collector's operations on one SQLite connection (see :class:`~.store.Session`)."""

    def __init__(self, conn: sqlite3.Connection, log_bounds: LogBounds = LogBounds()) -> None:
        self.conn = conn
        self.log_bounds = log_bounds

    # ------------------------------------------------------------------ writes

    def _log(self, log: RequestLog) -> int:
        cur = self.conn.execute(_REQUEST_INSERT, log.row())
        self.conn.execute(_STATUS_UPSERT, (log.status,))
        rid = int(cur.lastrowid or 0)
        if rid % max(1, min(PRUNE_EVERY, self.log_bounds.rows)) == 0:
            self.prune_requests(self.log_bounds, log.time)
        return rid

    def prune_requests(self, bounds: LogBounds, now: float) -> None:
        """Drop request-log rows beyond ``bounds`` (the per-status counts are kept)."""
        self.conn.execute("DELETE FROM requests WHERE id <= (SELECT MAX(id) FROM requests) - ?", (max(0, bounds.rows),))
        self.conn.execute("DELETE FROM requests WHERE time < ?", (now - bounds.max_age,))

    def count_status(self, status: int) -> None:
        """Count an answer without logging the request; not even that when the database is full."""
        try:
            self.conn.execute(_STATUS_UPSERT, (status,))
        except sqlite3.OperationalError as exc:
            if not is_full(exc):
                raise

    def log_request(self, log: RequestLog) -> None:
        """Record one served request (and count its status); when the database is full, only count it."""
        try:
            with _txn(self.conn):
                self._log(log)
        except sqlite3.OperationalError as exc:
            if not is_full(exc):
                raise
            self.count_status(log.status)

    def _when_full(self, log: RequestLog, write: Callable[[], IngestResult]) -> IngestResult:
        """``write()`` (one transaction); a database that may not grow makes it a 507 instead."""
        try:
            return write()
        except sqlite3.OperationalError as exc:
            if not is_full(exc):
                raise
        result = IngestResult(507, *STORAGE_FULL)
        log.status, log.error_type = result.status, result.error_type
        self.log_request(log)
        return result

    def _disk_used(self, owner: str) -> int:
        row = self.conn.execute("SELECT bytes FROM storage WHERE owner = ?", (owner,)).fetchone()
        return row[0] if row else 0

    def _add_disk_used(self, owner: str, nbytes: int) -> None:
        self.conn.execute(
            "INSERT INTO storage (owner, bytes) VALUES (?, ?) "
            "ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes",
            (owner, nbytes),
        )

    def _over_disk_quota(self, owner: str, nbytes: int, quota: Optional[int]) -> Optional[IngestResult]:
        if quota is None:
            return None
        used = self._disk_used(owner)
        return None if used + nbytes <= quota else disk_refusal(quota, used, nbytes)

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
        """See :meth:`~.store.Session.create_bucket`."""

        def write() -> IngestResult:
            with _txn(self.conn):
                result = self._create_bucket(owner, bucket_key, name, orjson.dumps(list(tags)).decode(), now, quotas)
                log.status, log.error_type = result.status, result.error_type
                self._log(log)
            return result

        return self._when_full(log, write)

    def _create_bucket(
        self, owner: str, bucket_key: str, name: str, tags_json: str, now: float, quotas: Quotas
    ) -> IngestResult:
        row = self.conn.execute(
            "SELECT id, removed, auto_created FROM buckets WHERE owner = ? AND bucket_key = ?", (owner, bucket_key)
        ).fetchone()
        if row is not None and row[1] is not None:
            return removed_refusal(bucket_key)
        if row is not None:
            if row[2] and name:
                self.conn.execute("UPDATE buckets SET name = ? WHERE id = ?", (name, row[0]))
            return IngestResult(204)
        nbytes = bucket_bytes(bucket_key, name, tags_json)
        refused = self._over_disk_quota(owner, nbytes, quotas.disk_bytes)
        if refused is not None:
            return refused
        self.conn.execute(
            "INSERT INTO buckets (owner, bucket_key, name, tags_json, created, auto_created) VALUES (?, ?, ?, ?, ?, 0)",
            (owner, bucket_key, name, tags_json, now),
        )
        self._add_disk_used(owner, nbytes)
        return IngestResult(201)

    def ingest(
        self,
        owner: str,
        bucket_key: str,
        rows: Sequence[EventRow],
        received: float,
        log: RequestLog,
        quotas: Quotas = Quotas(),
    ) -> IngestResult:
        """See :meth:`~.store.Session.ingest`."""

        def write() -> IngestResult:
            with _txn(self.conn):
                return self._ingest(owner, bucket_key, rows, received, log, quotas)

        return self._when_full(log, write)

    def _ingest(
        self, owner: str, bucket_key: str, rows: Sequence[EventRow], received: float, log: RequestLog, quotas: Quotas
    ) -> IngestResult:
        conn = self.conn
        brow = conn.execute(
            "SELECT id, removed FROM buckets WHERE owner = ? AND bucket_key = ?", (owner, bucket_key)
        ).fetchone()
        nbytes = stored_bytes(rows, EVENT_OVERHEAD) + (bucket_bytes(bucket_key, bucket_key) if brow is None else 0)
        month = month_of(received)
        result = self._ingest_verdict(owner, bucket_key, brow, len(rows), nbytes, month, quotas)
        log.status, log.error_type, log.events = result.status, result.error_type, len(rows)
        request_id = self._log(log)
        if result.status != 204 or not rows:
            return result
        if brow is None:
            cur = conn.execute(
                "INSERT INTO buckets (owner, bucket_key, name, created, auto_created) VALUES (?, ?, ?, ?, 1)",
                (owner, bucket_key, bucket_key, received),
            )
            bucket_id = int(cur.lastrowid or 0)
        else:
            bucket_id = brow[0]
        self._insert_events(bucket_id, rows, received, request_id)
        conn.execute(
            "INSERT INTO usage (owner, month, events) VALUES (?, ?, ?) "
            "ON CONFLICT (owner, month) DO UPDATE SET events = events + excluded.events",
            (owner, month, len(rows)),
        )
        self._add_disk_used(owner, nbytes)
        return result

    def _ingest_verdict(
        self, owner: str, bucket_key: str, brow: Optional[tuple], n: int, nbytes: int, month: str, quotas: Quotas
    ) -> IngestResult:
        """204, or why the batch is refused (removed bucket, monthly quota, disk quota)."""
        if brow is not None and brow[1] is not None:
            return removed_refusal(bucket_key)
        quota = quotas.monthly_events
        if quota is not None:
            urow = self.conn.execute(
                "SELECT events FROM usage WHERE owner = ? AND month = ?", (owner, month)
            ).fetchone()
            used = urow[0] if urow else 0
            if used + n > quota:
                return monthly_refusal(quota, used, n)
        if n:
            refused = self._over_disk_quota(owner, nbytes, quotas.disk_bytes)
            if refused is not None:
                return refused
        return IngestResult(204, stored=n)

    def _insert_events(self, bucket_id: int, rows: Sequence[EventRow], received: float, request_id: int) -> None:
        """The rows, the latest value of each key, the bucket's count."""
        conn = self.conn
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
        conn.execute(
            "UPDATE buckets SET event_count = event_count + ?, last_update = ? WHERE id = ?",
            (len(rows), received, bucket_id),
        )

    def remove_bucket(self, bucket_key: str, owner: Optional[str] = None) -> int:
        """See :meth:`~.store.Session.remove_bucket`."""
        with _txn(self.conn):
            sql = "UPDATE buckets SET removed = ? WHERE bucket_key = ? AND removed IS NULL"
            args: list = [time.time(), bucket_key]
            if owner is not None:
                sql += " AND owner = ?"
                args.append(owner)
            return self.conn.execute(sql, args).rowcount

    def remove_one_bucket(self, bucket_key: str, owner: Optional[str]) -> int:
        """See :meth:`~.store.Session.remove_one_bucket`."""
        clause, args = _owner_clause(owner)
        with _txn(self.conn):
            ids = [
                r[0]
                for r in self.conn.execute(
                    "SELECT id FROM buckets WHERE bucket_key = ? AND removed IS NULL" + clause, [bucket_key] + args
                )
            ]
            if len(ids) != 1:
                return -1 if ids else 0
            self.conn.execute("UPDATE buckets SET removed = ? WHERE id = ?", (time.time(), ids[0]))
            return 1

    # ------------------------------------------------------------------ reads

    def _bucket_rows(self, sql: str, args: list) -> List[sqlite3.Row]:
        self.conn.row_factory = sqlite3.Row
        try:
            return self.conn.execute(sql, args).fetchall()
        finally:
            self.conn.row_factory = None

    def list_buckets(self, owner: Optional[str] = None, limit: int = -1) -> List[Dict[str, Any]]:
        """See :meth:`~.store.Session.list_buckets`."""
        clause, args = _owner_clause(owner)
        rows = self._bucket_rows("SELECT * FROM buckets WHERE 1" + clause + " ORDER BY id LIMIT ?", args + [limit])
        return [bucket_dict(r) for r in rows]

    def find_buckets(self, bucket_key: str, owner: Optional[str] = None) -> List[Dict[str, Any]]:
        """See :meth:`~.store.Session.find_buckets`."""
        clause, args = _owner_clause(owner)
        rows = self._bucket_rows(
            "SELECT * FROM buckets WHERE bucket_key = ?" + clause + " ORDER BY id", [bucket_key] + args
        )
        return [dict(bucket_dict(r), id=r["id"]) for r in rows]

    def latest_values(
        self, bucket_ids: Sequence[int], limit: int = -1, keys: Optional[Sequence[str]] = None
    ) -> List[Dict[str, Any]]:
        """See :meth:`~.store.Session.latest_values`."""
        ids = _ids_sql(bucket_ids)
        if keys is not None:
            wanted, args = "(%s)" % ",".join("?" * len(keys)), list(keys)
        else:
            wanted = "(SELECT DISTINCT key FROM latest WHERE bucket_id IN (%s) ORDER BY key LIMIT ?)" % ids
            args = [limit]
        return merge_latest(
            self.conn.execute(
                "SELECT key, value_json, epoch, received, count FROM latest WHERE bucket_id IN (%s) AND key IN %s "
                "ORDER BY key, epoch" % (ids, wanted),
                args,
            )
        )

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
        """See :meth:`~.store.Session.query_events`."""
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
        return page_of_events(self.conn.execute(sql, args), limit, max_bytes, descending)

    def stats(self, owner: Optional[str] = None, requests: bool = True) -> Dict[str, Any]:
        """See :meth:`~.store.Session.stats`."""
        clause, args = _owner_clause(owner)
        events, buckets = self.conn.execute(
            "SELECT COALESCE(SUM(event_count), 0), COUNT(*) FROM buckets WHERE 1" + clause, args
        ).fetchone()
        stored = self.conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM storage WHERE 1" + clause, args).fetchone()[0]
        statuses: Dict[str, int] = {}
        if requests:
            statuses = {
                str(s): c for s, c in self.conn.execute("SELECT status, count FROM status_counts ORDER BY status")
            }
        return {
            "events": events,
            "buckets": buckets,
            "stored_bytes": stored,
            "requests": sum(statuses.values()),
            "statuses": statuses,
        }

    def series(self, bucket_ids: Sequence[int], columns: int, max_cells: int = -1) -> Dict[str, Dict[str, Any]]:
        """See :meth:`~.store.Session.series`."""
        ids = _ids_sql(bucket_ids)
        keys = self.conn.execute(  # keys whose latest value is a number: the charted ones
            "SELECT DISTINCT key FROM latest WHERE bucket_id IN (%s) AND value_num IS NOT NULL ORDER BY key" % ids
        )
        out: Dict[str, Dict[str, Any]] = {}
        cells = 0
        for (key,) in keys.fetchall():
            if 0 <= max_cells <= cells:
                break
            t0, t1 = self.conn.execute(  # two seeks on the (bucket_id, key, epoch) index
                "SELECT MIN(epoch), MAX(epoch) FROM events WHERE bucket_id IN (%s) AND key = ?" % ids, (key,)
            ).fetchone()
            if t0 is None:
                continue
            scale = columns / max(t1 - t0, 1e-9)
            cols = [
                [ta, tb, lo, hi, n]
                for _px, ta, tb, lo, hi, n in self.conn.execute(_SERIES_SQL % ids, (t0, scale, columns - 1, key))
            ]
            out[key] = {"t0": t0, "t1": t1, "count": sum(c[4] for c in cols), "columns": cols}
            cells += len(cols)
        return out

    def all_events(self, bucket_key: Optional[str] = None) -> List[Dict[str, Any]]:
        """See :meth:`~.store.Session.all_events`."""
        sql = (
            "SELECT b.bucket_key, e.key, e.value_json, e.epoch, e.received, e.request_id "
            "FROM events e JOIN buckets b ON b.id = e.bucket_id"
        )
        args: list = []
        if bucket_key is not None:
            sql += " WHERE b.bucket_key = ?"
            args.append(bucket_key)
        return event_dicts(self.conn.execute(sql + " ORDER BY e.id", args))

    def event_count(self, bucket_key: Optional[str] = None) -> int:
        """See :meth:`~.store.Session.event_count`."""
        if bucket_key is None:
            return self.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return self.conn.execute(
            "SELECT COUNT(*) FROM events e JOIN buckets b ON b.id = e.bucket_id WHERE b.bucket_key = ?", (bucket_key,)
        ).fetchone()[0]

    def requests_log(self) -> List[Dict[str, Any]]:
        """See :meth:`~.store.Session.requests_log`."""
        self.conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in self.conn.execute("SELECT * FROM requests ORDER BY id")]
        finally:
            self.conn.row_factory = None

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
