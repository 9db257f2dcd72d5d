"""The defaults of every limit of the local collector, in one place.

:class:`~isstreamer.collector.app.CollectorConfig`, the server and the ``isstreamer serve``
options all read them from here (README "The local collector" lists them). It imports only
:mod:`isstreamer.values` (standard-library modules), so that ``isstreamer.cli`` may read it
when it is imported.
"""

from __future__ import annotations

from .. import values

MIB = 2**20

# ---- requests
#: Largest request body in bytes, compressed and decompressed (413 past it).
MAX_BODY = 1_000_000
#: Longest event key, and longest string value, in characters: the events API's own limits,
#: which the library's value rules apply too (isstreamer.values).
MAX_KEY_CHARS = values.MAX_KEY_CHARS
MAX_VALUE_CHARS = values.MAX_VALUE_CHARS

# ---- connections
#: Open connections at most (lowered to fit the process's file limit).
MAX_CONNECTIONS = 256
#: Open connections of one client at most (an IPv4 address; an IPv6 client: its /64).
MAX_PER_CLIENT = 32
#: Seconds a new connection may take to send its first request head.
HEADER_TIMEOUT = 10.0
#: Seconds a kept-alive connection may stay idle before its next request head is complete.
IDLE_TIMEOUT = 15.0
#: Seconds a request body may take to arrive (408 past it).
BODY_TIMEOUT = 30.0
#: Seconds an answer may wait in the send buffer without the client reading any of it.
WRITE_TIMEOUT = 10.0

# ---- read answers
#: Most items in one answer of the read API (events, buckets, keys); the rest comes page by page.
PAGE_SIZE = 10_000
#: Events listed when a request gives no ``limit``.
DEFAULT_EVENTS = 1000
#: A page of events ends early once its keys and values pass this many bytes.
PAGE_BYTES = 1 * MIB

# ---- disk
#: Any-key mode: bytes of stored events per key holder (with keys configured: no quota by default).
ANY_KEY_DISK_QUOTA = 256 * MIB
#: Any-key mode: the largest the database file may grow (with keys configured: no cap by default).
ANY_KEY_MAX_DB_SIZE = 1024 * MIB

# ---- the request log
#: Write requests kept in the request log.
LOG_ROWS = 10_000
#: Days a request stays in the request log.
LOG_DAYS = 7.0

# ---- the database
#: Writer threads (each with its connection) of a collector on PostgreSQL; on SQLite: one.
PG_WRITERS = 4
#: Collector processes ``isstreamer serve`` runs on one port (``--workers``; SO_REUSEPORT).
WORKERS = 1
