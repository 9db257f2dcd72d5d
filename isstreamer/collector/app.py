"""The aiohttp application of the local collector: the Initial State events API, a JSON read
API and the live dashboard.

Write API (what a streamer client talks to; requests to it whose key was accepted are logged in
the database, within the bounds of :class:`~isstreamer.collector.store.LogBounds`; the others,
401s included, are only counted):

- ``POST /api/buckets`` (JSON body, or the URL-parameter form
  ``?accessKey=K&bucketKey=B&bucketName=N``): 201 created, 204 exists, 400, 401.
- ``POST /api/events`` (one event or an array) and the URL-parameter variant
  ``GET|POST /api/events?accessKey=K&bucketKey=B&name=value...``: 204, 400, 401, 402, 413, 429,
  507 (disk quota, database full). Every answer carries ``X-RateLimit-Limit/Remaining/Reset``.

Read API: ``GET /api/buckets``, ``GET|DELETE /api/buckets/{key}``,
``GET /api/buckets/{key}/latest``, ``GET /api/buckets/{key}/events``,
``GET /api/buckets/{key}/dashboard`` (everything a dashboard refresh needs, one request),
``GET /api/stats``, ``GET /api/versions``, ``GET /data/v1/events/latest``. Dashboard: ``GET /``,
``GET /dashboard/{key}``, ``/static/...``. Read answers are bounded: events come in pages with a
``next`` cursor, lists hold ``page_size`` items at most.

Security model (see README "The local collector"): with keys configured every API request but
``/api/versions`` needs one and sees only its own buckets; an admin key sees all and may use
``owner=``. In any-key mode reads are open and writes take any non-empty key. DELETE always
needs the owning key (or an admin key) and never crosses owners. Every request must carry an
allowed ``Host``; writes a browser marks as cross-site are refused. What a connection may hold
is bounded by :mod:`~isstreamer.collector.guard`, what a key holder may store by its quotas.

Errors are JSON: ``{"message": {"error": {"type": ..., "message": ..., ["index": i]}}}``; a 402
is ``{"message": "Event limit exceeded for current cycle ..."}`` as the hosted API answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import mimetypes
import re
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentLengthError, PayloadEncodingError

from . import limits
from . import store as st
from .guard import ConnectionGuard, GuardedConnection
from .iso8601 import parse_iso8601
from .security import HostPolicy, cross_site_reason
from .store import EventRow, RequestLog, Store

log = logging.getLogger("isstreamer.collector")

STATIC_DIR = Path(__file__).with_name("static")
#: Seconds after which a client timestamp is "ten or more years old" and ignored.
TEN_YEARS = 10 * 365.25 * 86400.0
#: Accepted epochs: 0001-01-01 to 9999-12-31 (anything else is refused with a 400).
EPOCH_MIN, EPOCH_MAX = -62135596800.0, 253402300799.0
API_VERSIONS = ["0.0.1", "0.0.2", "0.0.3", "0.0.4"]
#: A dashboard answer charts numeric keys until they reach this many columns in all.
SERIES_CELLS = 100_000
#: Rate-limit window reported (and enforced when ``rate_limit`` is set): the hosted API's 10 s.
DEFAULT_RATE_WINDOW = 10.0
#: ``X-RateLimit-Limit`` reported when no limit is configured (nothing is refused).
UNLIMITED_RATE = 1_000_000
_BAD_BUCKET_CHARS = re.compile(r"[:\"']")
_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_CURSOR_RE = re.compile(r"(-?[0-9][0-9.e+-]{0,30}):([0-9]{1,19})")
_EPOCH_STR_RE = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?\s*")


@dataclass(frozen=True)
class CollectorConfig:
    """Behaviour of a collector (defaults: :mod:`~isstreamer.collector.limits`).

    ``access_keys`` and ``admin_keys`` both empty means any-key mode: any non-empty key writes,
    reads are open. Otherwise every API request needs one of them; an access key sees its own
    buckets, an admin key every bucket. ``rate_limit`` is ``(requests, per_seconds)`` per access
    key on ``/api/events``. ``monthly_quota`` is events per access key per UTC calendar month.
    ``max_body`` is the largest accepted body in bytes, compressed and decompressed. Timestamps
    ten or more years old are replaced by the receive time when ``ignore_old_timestamps`` (as
    the real API does). ``allowed_hosts`` adds ``Host`` names to those of the bound address
    (``*``: any); ``allowed_origins`` are web origins whose pages may write.
    ``max_connections``, ``max_per_client``, ``header_timeout``, ``idle_timeout``,
    ``body_timeout`` and ``write_timeout`` bound what slow clients hold (see
    :mod:`~isstreamer.collector.guard`); ``page_size`` bounds the items of one read answer;
    ``disk_quota`` (bytes of stored events per key holder) and ``max_db_size`` (bytes of the
    database file) bound the disk: None means the default of the mode (see
    :attr:`disk_quota_bytes`), 0 no limit. ``log_rows`` and ``log_days`` bound the request log.
    """

    access_keys: FrozenSet[str] = frozenset()
    rate_limit: Optional[Tuple[int, float]] = None
    monthly_quota: Optional[int] = None
    max_body: int = limits.MAX_BODY
    max_key_chars: int = limits.MAX_KEY_CHARS
    max_value_chars: int = limits.MAX_VALUE_CHARS
    ignore_old_timestamps: bool = True
    admin_keys: FrozenSet[str] = frozenset()
    allowed_hosts: FrozenSet[str] = frozenset()
    allowed_origins: FrozenSet[str] = frozenset()
    max_connections: int = limits.MAX_CONNECTIONS
    max_per_client: int = limits.MAX_PER_CLIENT
    header_timeout: float = limits.HEADER_TIMEOUT
    idle_timeout: float = limits.IDLE_TIMEOUT
    body_timeout: float = limits.BODY_TIMEOUT
    write_timeout: float = limits.WRITE_TIMEOUT
    page_size: int = limits.PAGE_SIZE
    disk_quota: Optional[int] = None
    max_db_size: Optional[int] = None
    log_rows: int = limits.LOG_ROWS
    log_days: float = limits.LOG_DAYS

    @property
    def keys_required(self) -> bool:
        """Whether keys are configured (otherwise: any-key mode)."""
        return bool(self.access_keys or self.admin_keys)

    @property
    def disk_quota_bytes(self) -> Optional[int]:
        """Bytes of stored events each key holder may have (None: no quota): ``disk_quota``, or
        :data:`~isstreamer.collector.limits.ANY_KEY_DISK_QUOTA` in any-key mode."""
        return _mode_default(self.disk_quota, self.keys_required, limits.ANY_KEY_DISK_QUOTA)

    @property
    def max_db_bytes(self) -> Optional[int]:
        """The largest the database file may grow (None: no cap): ``max_db_size``, or
        :data:`~isstreamer.collector.limits.ANY_KEY_MAX_DB_SIZE` in any-key mode."""
        return _mode_default(self.max_db_size, self.keys_required, limits.ANY_KEY_MAX_DB_SIZE)


def _mode_default(value: Optional[int], keys_required: bool, any_key_default: int) -> Optional[int]:
    """A disk limit: the value given (0: none), else the any-key default (none with keys)."""
    if value is None:
        return None if keys_required else any_key_default
    return int(value) or None


class ApiError(Exception):
    """An error answer of the API, rendered as the JSON error body."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        index: Optional[int] = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.index = status, type_, message, index
        self.headers = headers or {}

    def response(self) -> web.Response:
        """The JSON response for this error (a 402 in the hosted API's ``{"message": ...}`` shape)."""
        if self.status == 402:
            return json_response({"message": self.message}, status=402, headers=self.headers)
        err: Dict[str, Any] = {"type": self.type, "message": self.message}
        if self.index is not None:
            err["index"] = self.index
        return json_response({"message": {"error": err}}, status=self.status, headers=self.headers)


def json_response(obj: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> web.Response:
    """A response with ``obj`` serialised by orjson."""
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers)


class RateLimiter:
    """Fixed windows per access key, each starting at the key's first request after the last one.

    Anchoring the window on the first request (not on wall-clock multiples of the window) makes
    "N requests then a 429" deterministic in tests. ``enforce=False`` only counts (for headers).
    """

    def __init__(self, limit: int, window: float, enforce: bool = True) -> None:
        self.limit, self.window, self.enforce = int(limit), float(window), enforce
        self._windows: Dict[str, List[float]] = {}

    def hit(self, owner: str, now: float) -> Tuple[bool, int, float]:
        """Count one request; return ``(allowed, remaining, reset_epoch)``."""
        w = self._windows.get(owner)
        if w is None or now >= w[0] + self.window:
            if len(self._windows) > 100_000:  # many one-off keys: forget expired windows
                self._windows = {k: v for k, v in self._windows.items() if now < v[0] + self.window}
            w = self._windows[owner] = [now, 0.0]
        reset = w[0] + self.window
        if w[1] >= self.limit and self.enforce:
            return False, 0, reset
        w[1] += 1
        return True, max(0, self.limit - int(w[1])), reset


# --------------------------------------------------------------------------- validation


def _bad(index: int, message: str) -> ApiError:
    return ApiError(400, "INVALID_EVENT", "event %d: %s" % (index, message), index)


def parse_epoch(value: Any, index: int) -> float:
    """A client ``epoch``: a number, or a string holding one (as Initial State's Node client sends)."""
    t = type(value)
    if t is int or t is float:
        ep = float(value)
    elif t is str and len(value) <= 64 and _EPOCH_STR_RE.fullmatch(value):
        ep = float(value)
    else:
        raise _bad(index, "epoch must be a number of seconds (or a string holding one)")
    return _in_range(ep, index, "epoch %r" % (value if t is not str else value[:64]))


def _in_range(ep: float, index: int, shown: str) -> float:
    """``ep`` if it falls in years 1-9999 (what the read API can show as a date), else a 400."""
    if not (EPOCH_MIN <= ep <= EPOCH_MAX):  # also false for NaN
        raise _bad(index, "%s is outside years 1-9999" % shown)
    return ep


def parse_timestamp(ev: Dict[str, Any], now: float, index: int, ignore_old: bool) -> float:
    """The event's epoch: ``epoch`` wins over ``iso8601``; none (or too old) means ``now``."""
    if "epoch" in ev:
        ep = parse_epoch(ev["epoch"], index)
    elif "iso8601" in ev:
        iso = ev["iso8601"]
        if type(iso) is not str:
            raise _bad(index, "iso8601 must be a string")
        parsed = parse_iso8601(iso) if len(iso) <= 64 else None
        if parsed is None:
            raise _bad(index, "bad iso8601 timestamp %r" % iso[:64])
        ep = _in_range(parsed, index, "iso8601 %r" % iso)
    else:
        return now
    if ignore_old and ep <= now - TEN_YEARS:
        return now
    return ep


def encode_value(value: Any, index: int, max_chars: int) -> Tuple[str, Optional[float]]:
    """``(value_json, value_num)`` of a valid value (str, bool or number), else an ApiError."""
    t = type(value)
    if t is str:
        if len(value) > max_chars:
            raise _bad(index, "value longer than %d characters" % max_chars)
        return orjson.dumps(value).decode(), None
    if t is bool:
        return ("true" if value else "false"), None
    if t is int:
        return str(value), float(value)
    if t is float:
        if not math.isfinite(value):
            raise _bad(index, "value is not finite")
        return orjson.dumps(value).decode(), value
    kind = "null" if value is None else ("an object" if t is dict else ("an array" if t is list else t.__name__))
    raise _bad(index, "value must be a string, boolean or number, not %s" % kind)


def parse_events(payload: Any, now: float, config: CollectorConfig) -> List[EventRow]:
    """Validate a decoded body (one event object or an array of them) into rows to store.

    All or nothing: the first invalid event raises ``ApiError(400, "INVALID_EVENT", index=i)``.
    """
    if type(payload) is dict:
        items: List[Any] = [payload]
    elif type(payload) is list:
        items = payload
    else:
        raise ApiError(400, "INVALID_EVENT", "body must be an event object or an array of events", 0)
    max_key = config.max_key_chars
    max_value = config.max_value_chars
    ignore_old = config.ignore_old_timestamps
    rows: List[EventRow] = []
    append = rows.append
    for i, ev in enumerate(items):
        if type(ev) is not dict:
            raise ApiError(400, "INVALID_EVENT", "event %d is not an object" % i, i)
        key = ev.get("key")
        if type(key) is not str or not key:
            raise _bad(i, "key must be a non-empty string")
        if len(key) > max_key:
            raise _bad(i, "key longer than %d characters" % max_key)
        if "value" not in ev:
            raise _bad(i, "value is required")
        vj, vn = encode_value(ev["value"], i, max_value)
        if "epoch" in ev or "iso8601" in ev:
            ep = parse_timestamp(ev, now, i, ignore_old)
        else:
            ep = now
        append((key, vj, vn, ep))
    return rows


def parse_url_value(text: str) -> Any:
    """A URL-parameter value: a JSON-style number that fits (int64, finite float),
    ``true``/``false``, else the string itself (so 400 digits stay an exact string)."""
    if text == "true":
        return True
    if text == "false":
        return False
    if len(text) > 400:
        return text
    if _INT_RE.fullmatch(text):
        if len(text) <= 20:
            n = int(text)
            if -(2**63) <= n < 2**63:
                return n
        return text
    if _FLOAT_RE.fullmatch(text):
        f = float(text)
        if math.isfinite(f):
            return f
    return text


def validate_bucket_key(bucket_key: Any) -> str:
    """Return a valid bucket key or raise a 400 ``INVALID_BUCKET_KEY``."""
    if type(bucket_key) is not str or not bucket_key:
        raise ApiError(400, "INVALID_BUCKET_KEY", "bucketKey is required")
    if len(bucket_key) > 250:
        raise ApiError(400, "INVALID_BUCKET_KEY", "bucketKey longer than 250 characters")
    if _BAD_BUCKET_CHARS.search(bucket_key):
        raise ApiError(400, "INVALID_BUCKET_KEY", "bucketKey must not contain : \" or '")
    _check_text(bucket_key, "bucketKey")
    return bucket_key


def _check_text(value: str, what: str) -> str:
    """``value`` if it is valid UTF-8 text, else a 400 naming ``what``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "INVALID_ENCODING", "%s is not valid UTF-8" % what) from None
    return value


# --------------------------------------------------------------------------- the application

CONFIG = web.AppKey("config", CollectorConfig)
STORE = web.AppKey("store", Store)
LIMITER = web.AppKey("limiter", RateLimiter)
HOSTS = web.AppKey("hosts", object)
SERIES = web.AppKey("series", object)
GUARD = web.AppKey("guard", ConnectionGuard)
STATIC = web.AppKey("static", object)
_RequestKey = getattr(web, "RequestKey", None)  # aiohttp >= 3.13 wants typed request keys
_LOG: Any = _RequestKey("isstreamer_log", RequestLog) if _RequestKey else "isstreamer_log"
_LOGGED: Any = _RequestKey("isstreamer_logged", bool) if _RequestKey else "isstreamer_logged"
_EXTRA_HEADERS: Any = _RequestKey("isstreamer_headers", dict) if _RequestKey else "isstreamer_headers"
_CONN: Any = _RequestKey("isstreamer_conn", GuardedConnection) if _RequestKey else "isstreamer_conn"
#: Statuses of requests refused before their key was known: counted, never stored in the log
#: (nor is any request whose key was not accepted).
_COUNT_ONLY = (401, 403)
#: Answers after which the connection is closed (the rest of the body is not worth reading).
_CLOSE_AFTER = (401, 403, 408, 413, 499)
#: At most this long is spent reading (and dropping) the rest of a refused body.
DRAIN_SECONDS = 2.0


def _is_write(request: web.Request) -> bool:
    path, method = request.path, request.method
    return (
        path == "/api/events"
        or (path == "/api/buckets" and method == "POST")
        or (method == "DELETE" and path.startswith("/api/buckets/"))
    )


def _is_logged(request: web.Request) -> bool:
    path = request.path
    return path == "/api/events" or (path == "/api/buckets" and request.method == "POST")


@web.middleware
async def connection_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tell the connection guard what the request's connection does, and write the whole answer
    before the request counts as done (an answer the client does not read stalls it here)."""
    guard: Optional[ConnectionGuard] = request.app.get(GUARD)  # type: ignore[assignment]
    conn = guard.connection(request.transport) if guard is not None else None
    if conn is None:
        return await handler(request)
    request[_CONN] = conn
    conn.request_started()
    try:
        resp = await handler(request)
        await _send(request, resp)
        return resp
    except web.HTTPException as exc:
        await _send(request, exc)
        raise
    finally:
        conn.request_done()


async def _send(request: web.Request, resp: web.StreamResponse) -> None:
    """Write ``resp`` now (aiohttp's own write after the middlewares then has nothing left to
    do); a client gone meanwhile is not an error."""
    try:
        await resp.prepare(request)
        await resp.write_eof()
    except ConnectionError:
        pass


def _body_phase(request: web.Request, reading: bool) -> None:
    """Mark the request's connection as reading its body (or done with it)."""
    conn: Optional[GuardedConnection] = request.get(_CONN)
    if conn is None:
        return
    if reading:
        conn.body_started()
    else:
        conn.body_done()


@web.middleware
async def guard_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse unknown ``Host`` headers (DNS rebinding) and writes a browser marks cross-site."""
    hosts: Optional[HostPolicy] = request.app.get(HOSTS)  # type: ignore[assignment]
    config = request.app[CONFIG]
    err: Optional[ApiError] = None
    if hosts is not None and not hosts.allows(request.headers.get("Host")):
        err = ApiError(
            403,
            "HOST_NOT_ALLOWED",
            "Host %r is not this collector (start it with --allowed-host NAME)"
            % st.cap_text(request.headers.get("Host"), 100),
        )
    elif _is_write(request):
        reason = cross_site_reason(request.headers, config.allowed_origins)
        if reason is not None:
            err = ApiError(
                403,
                "CROSS_SITE_REFUSED",
                "refused a write from another site (%s); "
                "start the collector with --allow-origin ORIGIN to accept it" % reason,
            )
    if err is None:
        return await handler(request)
    resp = err.response()
    resp.force_close()
    if _is_logged(request):
        await _record(request, lambda s: s.count_status(403))
    return resp


@web.middleware
async def api_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """JSON errors for /api and /data paths, ``X-Request-Id``, and the write-request log."""
    uid = uuid.uuid4().hex
    entry: Optional[RequestLog] = None
    if _is_logged(request):
        h = request.headers
        entry = RequestLog(
            request_uid=uid,
            time=time.time(),
            method=request.method,
            path=request.path,
            content_type=h.get("Content-Type"),
            content_encoding=h.get("Content-Encoding"),
            accept_version=h.get("Accept-Version"),
            user_agent=h.get("User-Agent"),
            body_bytes=request.content_length,
        )
        request[_LOG] = entry
    is_api = request.path.startswith(("/api/", "/data/"))
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = exc.response()
        if entry is not None:
            entry.error_type = exc.type
    except web.HTTPException as exc:
        if not is_api:
            raise
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        resp = ApiError(exc.status, exc.reason.upper().replace(" ", "_"), exc.reason, headers=keep).response()
    except st.Unavailable as exc:
        log.warning("collector: %s %s: %s", request.method, request.path, exc)
        if entry is not None:
            entry.error_type = "DATABASE_UNAVAILABLE"
        resp = ApiError(
            503, "DATABASE_UNAVAILABLE", "the collector's database is unavailable; retry", headers={"Retry-After": "1"}
        ).response()
    except Exception:  # noqa: BLE001 - answer 500 as JSON and keep serving
        log.exception("collector: unhandled error on %s %s", request.method, request.path)
        if entry is not None:
            entry.error_type = "INTERNAL"
        resp = ApiError(500, "INTERNAL", "internal server error").response()
    extra = request.get(_EXTRA_HEADERS)
    if extra:
        resp.headers.update(extra)
    resp.headers["X-Request-Id"] = uid
    if resp.status in _CLOSE_AFTER or not request.content.at_eof():
        resp.force_close()
        max_body = request.app[CONFIG].max_body
        if not request.content.at_eof() and (request.content_length or 0) <= max_body:
            # read (never inflate) what is left of a body of acceptable size, so that a client
            # still sending it gets this answer rather than a reset connection
            await _drain(request, max_body, DRAIN_SECONDS)
    if entry is not None and not request.get(_LOGGED):
        if resp.status in _COUNT_ONLY or entry.owner is None:  # no key accepted: only counted
            status = resp.status
            await _record(request, lambda s: s.count_status(status))
        else:
            entry.status = resp.status
            await _record(request, lambda s: s.log_request(entry), entry.owner)
    return resp


async def _record(request: web.Request, fn: Callable[[st.Session], None], flow: Optional[str] = None) -> None:
    """Log or count a request (nothing, with a warning, when the database is unavailable)."""
    try:
        await asyncio.wrap_future(request.app[STORE].call_write(fn, flow))
    except st.Unavailable as exc:
        log.warning("collector: request not logged: %s", exc)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class Caller:
    """Who sent a request: ``owner`` (sha256 of the access key, None without a key) and whether
    the key is an admin key."""

    owner: Optional[str]
    admin: bool = False


def _raw_key(request: web.Request) -> Optional[str]:
    key = request.headers.get("X-IS-AccessKey") or request.query.get("accessKey")
    return _check_text(key, "the access key") if key else None


def _caller(request: web.Request, required: bool) -> Caller:
    """The request's caller; 401 when a key is needed (``required``, or keys configured) and
    missing or unknown."""
    config = request.app[CONFIG]
    key = _raw_key(request)
    if not key:
        if required or config.keys_required:
            raise ApiError(401, "UNAUTHORIZED", "missing access key (X-IS-AccessKey header or accessKey parameter)")
        return Caller(None)
    if key in config.admin_keys:
        return Caller(st.hash_access_key(key), admin=True)
    if config.keys_required and key not in config.access_keys:
        raise ApiError(401, "UNAUTHORIZED", "unknown access key")
    return Caller(st.hash_access_key(key))


def _write_caller(request: web.Request) -> Caller:
    caller = _caller(request, required=True)
    entry: Optional[RequestLog] = request.get(_LOG)
    if entry is not None:
        entry.owner = caller.owner
    return caller


def _read_scope(request: web.Request) -> Optional[str]:
    """The owner filter of a read: the caller's own buckets; ``owner=`` (a hash prefix) only for
    an admin key (or in any-key mode, where reads are open anyway)."""
    caller = _caller(request, required=False)
    owner = request.query.get("owner")
    if owner:
        if request.app[CONFIG].keys_required and not caller.admin:
            raise ApiError(403, "FORBIDDEN", "owner= needs an admin key")
        if not re.fullmatch(r"[0-9a-fA-F]{1,64}", owner):
            raise ApiError(400, "INVALID_PARAMETER", "owner must be a hexadecimal key hash prefix")
        return owner.lower()
    if caller.admin:
        return None
    return caller.owner


# --------------------------------------------------------------------------- bodies


async def _drain(request: web.Request, limit: int, timeout: float) -> None:
    """Read and drop up to ``limit`` more raw bytes of the body (so a short error answer reaches
    a client still sending), for at most ``timeout`` seconds."""

    async def drop() -> None:
        left = limit
        while left > 0:
            chunk = await request.content.readany()
            if not chunk:
                return
            left -= len(chunk)

    _body_phase(request, True)
    try:
        await asyncio.wait_for(drop(), timeout)
    except Exception:  # noqa: BLE001 - best effort: timeout, reset, payload errors
        pass
    finally:
        _body_phase(request, False)


def _decompressor(encoding: str) -> Optional[Any]:
    """A zlib decompressor for the body's ``Content-Encoding`` (None: identity), or a 400."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, detected
    raise ApiError(400, "INVALID_BODY", "unsupported Content-Encoding %r (gzip, deflate or none)" % enc[:40])


async def _next_chunk(request: web.Request) -> bytes:
    """The next piece of the body (b"" at its end). A client gone before the end is a 499 (as
    nginx logs it), a malformed chunked encoding a 400: neither is an error of the collector."""
    gone = ApiError(499, "CLIENT_CLOSED_REQUEST", "the client closed the connection before sending its body")
    try:
        return await request.content.readany()
    except (ConnectionError, ContentLengthError):
        raise gone from None
    except RuntimeError:  # aiohttp's "Connection closed." when the body is awaited after the end
        if request.transport is None:
            raise gone from None
        raise
    except PayloadEncodingError as exc:
        raise ApiError(400, "INVALID_BODY", "malformed body: %s" % st.cap_text(str(exc), 100)) from None


async def _read_raw(request: web.Request, max_body: int, d: Optional[Any]) -> bytes:
    """The body, decompressed as it streams in; 413 once it passes ``max_body`` (either side)."""
    too_big = ApiError(413, "PAYLOAD_TOO_LARGE", "body over %d bytes" % max_body)
    out = bytearray()
    raw = 0
    while True:
        chunk = await _next_chunk(request)
        if not chunk:
            break
        raw += len(chunk)
        if raw > max_body:
            raise too_big
        if d is None:
            out += chunk
            continue
        try:
            out += d.decompress(chunk, max_body + 1 - len(out))
        except zlib.error as exc:
            raise ApiError(400, "INVALID_BODY", "cannot decompress the body: %s" % exc) from None
        if len(out) > max_body or d.unconsumed_tail:
            raise too_big
    if d is not None and not d.eof:
        raise ApiError(400, "INVALID_BODY", "cannot decompress the body: it is truncated")
    return bytes(out)


async def _read_body(request: web.Request) -> bytes:
    """The (decompressed) body: at most ``max_body`` bytes read and produced, within
    ``body_timeout`` seconds (408 past it)."""
    config = request.app[CONFIG]
    max_body = config.max_body
    if (request.content_length or 0) > max_body:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", "body over %d bytes" % max_body)
    d = _decompressor(request.headers.get("Content-Encoding", ""))
    _body_phase(request, True)
    try:
        return await asyncio.wait_for(_read_raw(request, max_body, d), config.body_timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, "REQUEST_TIMEOUT", "the body did not arrive within %gs" % config.body_timeout) from None
    finally:
        _body_phase(request, False)


def _loads(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "INVALID_JSON", "empty body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "INVALID_JSON", "body is not valid JSON: %s" % exc) from None


# --------------------------------------------------------------------------- write API


async def post_buckets(request: web.Request) -> web.Response:
    """``POST /api/buckets``: create a bucket (201), or 204 when it exists.

    The bucket comes from a JSON body or, without one, from the ``bucketKey``, ``bucketName``
    (and ``tags``, comma separated) URL parameters.
    """
    caller = _write_caller(request)
    assert caller.owner is not None
    body = await _read_body(request)
    if body.strip() or "bucketKey" not in request.query:
        payload = _loads(body)
        if type(payload) is not dict:
            raise ApiError(400, "INVALID_JSON", "body must be a JSON object")
    else:
        q = request.query
        payload = {"bucketKey": q.get("bucketKey"), "bucketName": q.get("bucketName", "")}
        if q.get("tags"):
            payload["tags"] = [t for t in q["tags"].split(",") if t]
    bucket_key = validate_bucket_key(payload.get("bucketKey"))
    entry: RequestLog = request[_LOG]
    entry.bucket_key = bucket_key
    name = payload.get("bucketName", "")
    if name is None:
        name = ""
    if type(name) is not str or len(name) > 250:
        raise ApiError(400, "INVALID_BUCKET_NAME", "bucketName must be a string of at most 250 characters")
    _check_text(name, "bucketName")
    tags = payload.get("tags", [])
    if tags is None:
        tags = []
    if type(tags) is not list or not all(type(t) is str for t in tags):
        raise ApiError(400, "INVALID_TAGS", "tags must be an array of strings")
    owner = caller.owner
    now = time.time()
    quotas = _quotas(request.app[CONFIG])
    result = await asyncio.wrap_future(
        request.app[STORE].call_write(
            lambda s: s.create_bucket(owner, bucket_key, name, tags, now, entry, quotas), owner
        )
    )
    request[_LOGGED] = True
    if result.status == 201:
        return json_response({"bucketKey": bucket_key, "bucketName": name}, status=201)
    if result.status == 204:
        return web.Response(status=204)
    err = ApiError(result.status, result.error_type or "ERROR", result.message, result.extra.get("index"))
    entry.error_type = err.type
    raise err


async def _rate_limit(request: web.Request, owner: str, now: float) -> None:
    """Count the request; set the ``X-RateLimit-*`` headers; 429 past a configured limit.

    A configured limit is counted in the database when other collectors may share it (on the
    database's clock), else in this process's memory."""
    limiter = request.app[LIMITER]
    store = request.app[STORE]
    if limiter.enforce and store.database.shared:
        allowed, remaining, reset, now = await asyncio.wrap_future(
            store.call_read(lambda s: s.rate_hit(owner, limiter.limit, limiter.window))
        )  # type: ignore[attr-defined]
    else:
        allowed, remaining, reset = limiter.hit(owner, now)
    request[_EXTRA_HEADERS] = {
        "X-RateLimit-Limit": str(limiter.limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(math.ceil(reset))),
    }
    if not allowed:
        retry = max(1, int(math.ceil(reset - now)))
        raise ApiError(
            429,
            "RATE_LIMITED",
            "rate limit of %d requests per %gs exceeded" % (limiter.limit, limiter.window),
            headers={"Retry-After": str(retry)},
        )


def _url_pairs(request: web.Request) -> List[Tuple[str, str]]:
    """The URL-parameter events of a request, ``(name, value)``, checked to be text."""
    pairs = [(k, v) for k, v in request.query.items() if k not in ("accessKey", "bucketKey")]
    for k, v in pairs:
        _check_text(k, "a URL parameter name")
        _check_text(v, "the value of URL parameter %r" % k[:50])
    return pairs


def _url_events(pairs: List[Tuple[str, str]], base: int, now: float, config: CollectorConfig) -> List[EventRow]:
    try:
        return parse_events([{"key": k, "value": parse_url_value(v)} for k, v in pairs], now, config)
    except ApiError as exc:
        if exc.index is not None:
            exc.index += base
        raise


def _event_rows(
    body: Optional[bytes], pairs: List[Tuple[str, str]], now: float, config: CollectorConfig
) -> List[EventRow]:
    """The events of a JSON body (None: no body) and of URL parameters, validated, all or nothing."""
    rows = parse_events(_loads(body), now, config) if body is not None else []
    if pairs:
        rows.extend(_url_events(pairs, len(rows), now, config))
    return rows


def _quotas(config: CollectorConfig) -> st.Quotas:
    return st.Quotas(monthly_events=config.monthly_quota, disk_bytes=config.disk_quota_bytes)


async def events(request: web.Request) -> web.Response:
    """``GET|POST /api/events``: store one event, an array, or URL-parameter events (204).

    The body is read (and inflated) here; decoding, validating and storing it is one call of
    the writer, scheduled fairly between key holders at a cost of its size.
    """
    app = request.app
    config = app[CONFIG]
    entry: RequestLog = request[_LOG]
    caller = _write_caller(request)
    owner = caller.owner
    assert owner is not None
    now = time.time()
    await _rate_limit(request, owner, now)
    bucket_key = validate_bucket_key(request.headers.get("X-IS-BucketKey") or request.query.get("bucketKey"))
    entry.bucket_key = bucket_key
    pairs = _url_pairs(request)
    body: Optional[bytes] = None
    has_body = request.method == "POST" and (request.can_read_body or (request.content_length or 0) > 0)
    if has_body or not pairs:
        raw = await _read_body(request)
        if raw.strip() or not pairs:
            body = raw
    quotas = _quotas(config)

    def write(session: st.Session) -> st.IngestResult:
        rows = _event_rows(body, pairs, now, config)
        return session.ingest(owner, bucket_key, rows, time.time(), entry, quotas)

    cost = 1.0 + len(body or b"") / 1024
    result = await asyncio.wrap_future(app[STORE].call_write(write, owner, cost))
    request[_LOGGED] = True
    if result.status == 204:
        return web.Response(status=204)
    err = ApiError(result.status, result.error_type or "ERROR", result.message, result.extra.get("index"))
    entry.error_type = err.type
    raise err


# --------------------------------------------------------------------------- read API


def _float_param(request: web.Request, name: str) -> Optional[float]:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > 64:
        raise ApiError(400, "INVALID_PARAMETER", "%s must be a number" % name)
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "INVALID_PARAMETER", "%s must be a number" % name) from None
    if not math.isfinite(value):
        raise ApiError(400, "INVALID_PARAMETER", "%s must be finite" % name)
    return value


def _merge_buckets(found: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One view of every owner's bucket with the same key."""
    first = dict(found[0])
    first.pop("id", None)
    if len(found) > 1:
        first["event_count"] = sum(b["event_count"] for b in found)
        updates = [b["last_update"] for b in found if b["last_update"] is not None]
        first["last_update"] = max(updates) if updates else None
        first["owners"] = [b["owner"] for b in found]
    return first


async def _find(request: web.Request) -> Tuple[Dict[str, Any], List[int]]:
    bucket_key = request.match_info["bucketKey"]
    owner = _read_scope(request)
    found = await asyncio.wrap_future(request.app[STORE].call_read(lambda s: s.find_buckets(bucket_key, owner)))
    if not found:
        raise ApiError(404, "BUCKET_NOT_FOUND", "no bucket %r" % bucket_key[:250])
    return _merge_buckets(found), [b["id"] for b in found]


def _capped(items: List[Any], page_size: int) -> Tuple[List[Any], bool]:
    """``(the first page_size items, whether there were more)`` of a list fetched one longer."""
    return items[:page_size], len(items) > page_size


async def list_buckets(request: web.Request) -> web.Response:
    """``GET /api/buckets``: the caller's buckets (key, name, created, auto_created, event_count ...),
    the first ``page_size`` of them (``truncated`` says whether there are more)."""
    owner = _read_scope(request)
    page_size = request.app[CONFIG].page_size
    found = await asyncio.wrap_future(request.app[STORE].call_read(lambda s: s.list_buckets(owner, page_size + 1)))
    buckets, truncated = _capped(found, page_size)
    return json_response({"buckets": buckets, "truncated": truncated})


async def get_bucket(request: web.Request) -> web.Response:
    """``GET /api/buckets/{bucketKey}``: one bucket's description."""
    info, _ = await _find(request)
    return json_response(info)


async def delete_bucket(request: web.Request) -> web.Response:
    """``DELETE /api/buckets/{bucketKey}``: mark the caller's bucket removed (204, or 404).

    Needs the owning access key, or an admin key with ``owner=`` when several owners have a
    bucket with this key; never removes another owner's bucket.
    """
    bucket_key = request.match_info["bucketKey"]
    caller = _caller(request, required=True)
    if caller.admin:
        owner = _read_scope(request)
    elif request.query.get("owner"):
        raise ApiError(403, "FORBIDDEN", "owner= needs an admin key")
    else:
        owner = caller.owner
    n = await asyncio.wrap_future(
        request.app[STORE].call_write(lambda s: s.remove_one_bucket(bucket_key, owner), caller.owner)
    )
    if n < 0:
        raise ApiError(409, "AMBIGUOUS_OWNER", "several owners have bucket %r: add owner=" % bucket_key[:250])
    if not n:
        raise ApiError(404, "BUCKET_NOT_FOUND", "no bucket %r to remove" % bucket_key[:250])
    return web.Response(status=204)


async def _latest(request: web.Request, ids: List[int]) -> Tuple[List[Dict[str, Any]], bool]:
    """The latest value of the first ``page_size`` keys, and whether there are more keys."""
    page_size = request.app[CONFIG].page_size
    found = await asyncio.wrap_future(request.app[STORE].call_read(lambda s: s.latest_values(ids, page_size + 1)))
    return _capped(found, page_size)


async def bucket_latest(request: web.Request) -> web.Response:
    """``GET /api/buckets/{bucketKey}/latest``: the bucket and the latest value of each key (of
    the first ``page_size`` keys; ``truncated`` says whether there are more)."""
    info, ids = await _find(request)
    latest, truncated = await _latest(request, ids)
    return json_response({"bucket": info, "latest": latest, "truncated": truncated})


class SeriesCache:
    """The last reduced series of each (buckets, columns), so that dashboards polling a bucket
    that keeps receiving events cost a bounded share of a core: a series is recomputed at most
    every ``max(min_interval, cost_factor * seconds the last computation took)``. At most
    ``size`` series are kept, and ``max_cells`` columns in all (the oldest go first)."""

    def __init__(
        self, size: int = 64, min_interval: float = 1.0, cost_factor: float = 4.0, max_cells: int = 4 * SERIES_CELLS
    ) -> None:
        self.size, self.min_interval, self.cost_factor, self.max_cells = size, min_interval, cost_factor, max_cells
        self._entries: Dict[Tuple[Tuple[int, ...], int], Tuple[int, float, float, Any, int]] = {}
        self._cells = 0

    def get(self, key: Tuple[Tuple[int, ...], int], count: int, now: float) -> Optional[Tuple[int, Any]]:
        """``(count the series reflect, series)`` if still usable for a bucket holding ``count``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        done_count, done_at, cost, data, _ = entry
        if done_count == count or now - done_at < max(self.min_interval, self.cost_factor * cost):
            return done_count, data
        return None

    def put(
        self, key: Tuple[Tuple[int, ...], int], count: int, now: float, cost: float, data: Any, cells: int = 0
    ) -> None:
        """Remember a computed series of ``cells`` columns (all keys together)."""
        self._drop(key)
        self._entries[key] = (count, now, cost, data, cells)
        self._cells += cells
        while len(self._entries) > 1 and (len(self._entries) > self.size or self._cells > self.max_cells):
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Tuple[Tuple[int, ...], int]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._cells -= entry[4]


async def bucket_dashboard(request: web.Request) -> web.Response:
    """``GET /api/buckets/{bucketKey}/dashboard?columns=N&known=C``: one refresh of a dashboard.

    The bucket, the latest value of each key (as ``/latest``) and, unless the series drawn already
    reflect the bucket's ``known`` event count, ``series`` (each numeric key reduced to at most
    ``columns`` min/max columns over its time range; keys in order until :data:`SERIES_CELLS`
    columns in all are reached) with ``series_count``, the event count they reflect.
    """
    info, ids = await _find(request)
    columns_f = _float_param(request, "columns")
    columns = 600 if columns_f is None else max(2, min(int(columns_f), 4000))
    known = _float_param(request, "known")
    count = info["event_count"]
    store = request.app[STORE]
    latest, truncated = await _latest(request, ids)
    out: Dict[str, Any] = {"bucket": info, "latest": latest, "truncated": truncated}
    if known is not None and int(known) == count:
        return json_response(out)
    cache: SeriesCache = request.app[SERIES]  # type: ignore[assignment]
    key = (tuple(ids), columns)
    cached = cache.get(key, count, time.monotonic())
    if cached is None:
        t0 = time.monotonic()
        data = await asyncio.wrap_future(store.call_read(lambda s: s.series(ids, columns, SERIES_CELLS)))
        done = time.monotonic()
        cache.put(key, count, done, done - t0, data, sum(len(s["columns"]) for s in data.values()))
        cached = (count, data)
    if known is None or int(known) != cached[0]:
        out["series_count"], out["series"] = cached
    return json_response(out)


def _cursor_param(request: web.Request) -> Optional[st.Position]:
    """The ``cursor`` of a listing of events: ``EPOCH:ID`` as a previous page's ``next`` gave it."""
    raw = request.query.get("cursor")
    if not raw:
        return None
    m = _CURSOR_RE.fullmatch(raw)
    try:
        position = (float(m.group(1)), int(m.group(2))) if m else None
    except ValueError:
        position = None
    if position is None or not math.isfinite(position[0]):
        raise ApiError(400, "INVALID_PARAMETER", "cursor must be the next value of a previous page")
    return position


def _encode_cursor(position: Optional[st.Position]) -> Optional[str]:
    return None if position is None else "%r:%d" % position


async def bucket_events(request: web.Request) -> web.Response:
    """``GET /api/buckets/{bucketKey}/events?key=&since=&until=&limit=&order=&cursor=``: one page
    of events by epoch.

    A page holds ``limit`` events (default 1000) at most, and never more than the collector's
    page size (``page_size``) nor much more than a megabyte of keys and values. ``next`` is the
    ``cursor`` of the following page (null at the end). ``order=desc`` pages from the newest
    event back (each page still listed oldest first).
    """
    info, ids = await _find(request)
    key = request.query.get("key") or None
    since, until = _float_param(request, "since"), _float_param(request, "until")
    limit_f = _float_param(request, "limit")
    page_size = request.app[CONFIG].page_size
    limit = min(limits.DEFAULT_EVENTS, page_size) if limit_f is None else max(0, min(int(limit_f), page_size))
    order = request.query.get("order", "asc").lower()
    if order not in ("asc", "desc"):
        raise ApiError(400, "INVALID_PARAMETER", "order must be asc or desc")
    after = _cursor_param(request)
    rows, following = await asyncio.wrap_future(
        request.app[STORE].call_read(lambda s: s.query_events(ids, key, since, until, limit, order == "desc", after))
    )
    return json_response({"bucket": info["key"], "events": rows, "next": _encode_cursor(following)})


async def get_stats(request: web.Request) -> web.Response:
    """``GET /api/stats``: events stored, buckets and the bytes they count for the disk quota
    (the caller's), and with any-key mode or an admin key the write requests, their per-status
    counts and the connection guard's (``connections``: open, refused, evicted, timed_out,
    write_timeouts)."""
    owner = _read_scope(request)
    config = request.app[CONFIG]
    caller = _caller(request, required=False)
    everything = not config.keys_required or caller.admin
    data = await asyncio.wrap_future(request.app[STORE].call_read(lambda s: s.stats(owner, everything)))
    guard: Optional[ConnectionGuard] = request.app.get(GUARD)  # type: ignore[assignment]
    if everything and guard is not None:
        data["connections"] = guard.counts()
    return json_response(data)


async def versions(request: web.Request) -> web.Response:
    """``GET /api/versions``: the API versions this collector speaks."""
    return json_response(API_VERSIONS)


async def data_latest(request: web.Request) -> web.Response:
    """``GET /data/v1/events/latest?key=``: ``{key: {"value", "epoch", "date"}}`` (compat read API):
    the keys asked for, or the first ``page_size`` keys."""
    caller = _caller(request, required=True)
    bucket_key = validate_bucket_key(request.headers.get("X-IS-BucketKey") or request.query.get("bucketKey"))
    owner = caller.owner
    found = await asyncio.wrap_future(request.app[STORE].call_read(lambda s: s.find_buckets(bucket_key, owner)))
    if not found:
        raise ApiError(404, "BUCKET_NOT_FOUND", "no bucket %r" % bucket_key)
    ids = [b["id"] for b in found]
    wanted = sorted(set(k for v in request.query.getall("key", []) for k in v.split(",") if k))
    if wanted:
        latest = await asyncio.wrap_future(request.app[STORE].call_read(lambda s: s.latest_values(ids, keys=wanted)))
    else:
        latest, _ = await _latest(request, ids)
    out = {
        item["key"]: {"value": item["value"], "epoch": item["epoch"], "date": _iso_date(item["epoch"])}
        for item in latest
    }
    return json_response(out)


def _iso_date(epoch: float) -> Optional[str]:
    """``2023-11-14T22:13:20Z`` for an epoch; None outside years 1-9999 (an older version stored such epochs)."""
    try:
        return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return None


# --------------------------------------------------------------------------- dashboard


class StaticFiles:
    """The dashboard's files, read into memory once.

    They are answered as ordinary responses (not with sendfile) so that every byte goes
    through the transport, where the connection guard sees a client that does not read. Each
    carries an ``ETag`` and ``Cache-Control: no-cache``: browsers revalidate (the files change
    with the package) and get a 304 when nothing changed.
    """

    def __init__(self, directory: Path) -> None:
        self.files: Dict[str, Tuple[bytes, str, str]] = {}
        for path in sorted(directory.iterdir()):
            if path.is_file():
                body = path.read_bytes()
                ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self.files[path.name] = (body, ctype, '"%s"' % hashlib.sha256(body).hexdigest()[:24])

    def response(self, request: web.Request, name: str) -> web.Response:
        """The answer for file ``name`` (404 when there is none)."""
        found = self.files.get(name)
        if found is None:
            raise web.HTTPNotFound()
        body, ctype, etag = found
        headers = {"Cache-Control": "no-cache", "ETag": etag}
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        charset = "utf-8" if ctype.startswith("text/") or ctype.endswith("javascript") else None
        return web.Response(body=body, content_type=ctype, charset=charset, headers=headers)


def _page(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return request.app[STATIC].response(request, name)  # type: ignore[attr-defined]

    handler.__doc__ = "Serve static/%s." % name
    return handler


async def static_file(request: web.Request) -> web.StreamResponse:
    """``GET /static/{name}``: a file of the dashboard."""
    return request.app[STATIC].response(request, request.match_info["name"])  # type: ignore[attr-defined]


def create_app(
    config: CollectorConfig,
    store: Store,
    bound: Optional[Tuple[str, int]] = None,
    guard: Optional[ConnectionGuard] = None,
) -> web.Application:
    """Build the collector application over an open :class:`Store`.

    ``bound`` is the listening ``(host, port)``: requests must then carry a ``Host`` header naming
    it (or one of ``config.allowed_hosts``). ``guard`` is the :class:`ConnectionGuard` of the
    server's connections, told what each one does.
    """
    app = web.Application(
        client_max_size=config.max_body, middlewares=[connection_middleware, guard_middleware, api_middleware]
    )
    app[CONFIG] = config
    app[STORE] = store
    app[STATIC] = StaticFiles(STATIC_DIR)
    if guard is not None:
        app[GUARD] = guard
    if config.rate_limit:
        app[LIMITER] = RateLimiter(*config.rate_limit)
    else:
        app[LIMITER] = RateLimiter(UNLIMITED_RATE, DEFAULT_RATE_WINDOW, enforce=False)
    if bound is not None:
        app[HOSTS] = HostPolicy(bound[0], bound[1], config.allowed_hosts)
    app[SERIES] = SeriesCache()
    r = app.router
    r.add_post("/api/buckets", post_buckets)
    r.add_get("/api/buckets", list_buckets)
    r.add_route("*", "/api/events", events)
    r.add_get("/api/stats", get_stats)
    r.add_get("/api/versions", versions)
    r.add_get("/api/buckets/{bucketKey:.+}/latest", bucket_latest)
    r.add_get("/api/buckets/{bucketKey:.+}/dashboard", bucket_dashboard)
    r.add_get("/api/buckets/{bucketKey:.+}/events", bucket_events)
    r.add_get("/api/buckets/{bucketKey:.+}", get_bucket)
    r.add_delete("/api/buckets/{bucketKey:.+}", delete_bucket)
    r.add_get("/data/v1/events/latest", data_latest)
    r.add_get("/", _page("index.html"))
    r.add_get("/dashboard/{bucketKey:.+}", _page("dashboard.html"))
    r.add_get("/static/{name}", static_file)
    return app


def make_config(
    access_keys: Iterable[str] = (),
    rate_limit: Optional[Tuple[int, float]] = None,
    monthly_quota: Optional[int] = None,
    max_body: int = limits.MAX_BODY,
    max_key_chars: int = limits.MAX_KEY_CHARS,
    ignore_old_timestamps: bool = True,
    **options: Any,
) -> CollectorConfig:
    """A :class:`CollectorConfig` from plain arguments (as the server and CLI take them).

    ``options`` are the other :class:`CollectorConfig` fields; key, host and origin lists may be
    any iterable.
    """
    for name in ("admin_keys", "allowed_hosts", "allowed_origins"):
        if name in options:
            values = (v.strip() for v in options[name] or ())
            if name == "allowed_origins":
                values = (v.rstrip("/").lower() for v in values)
            options[name] = frozenset(v for v in values if v)
    return CollectorConfig(
        access_keys=frozenset(k for k in access_keys if k),
        rate_limit=(int(rate_limit[0]), float(rate_limit[1])) if rate_limit else None,
        monthly_quota=monthly_quota,
        max_body=int(max_body),
        max_key_chars=int(max_key_chars),
        ignore_old_timestamps=ignore_old_timestamps,
        **options,
    )
