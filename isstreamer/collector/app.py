"""The aiohttp application of the local collector: the Initial State events API, a JSON read
API and the live dashboard.

Write API (what a streamer client talks to; every request to it is logged in the database):

- ``POST /api/buckets``: 201 created, 204 exists, 400 invalid / ``BUCKET_REMOVED``, 401.
- ``POST /api/events`` (one event or an array) and the URL-parameter variant
  ``GET|POST /api/events?accessKey=K&bucketKey=B&name=value...``: 204, 400, 401, 402, 413, 429.

Read API (open): ``GET /api/buckets``, ``GET|DELETE /api/buckets/{key}``,
``GET /api/buckets/{key}/latest``, ``GET /api/buckets/{key}/events``, ``GET /api/stats``,
``GET /api/versions``, ``GET /data/v1/events/latest``. Dashboard: ``GET /``,
``GET /dashboard/{key}``, ``/static/...``.

Errors are JSON: ``{"message": {"error": {"type": ..., "message": ..., ["index": i]}}}``.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

import orjson
from aiohttp import web

try:
    from aiohttp.web_protocol import RequestPayloadError
except ImportError:  # pragma: no cover - moved in some aiohttp version
    RequestPayloadError = ValueError  # type: ignore[misc,assignment]

from . import store as st
from .store import EventRow, RequestLog, Store

log = logging.getLogger("isstreamer.collector")

STATIC_DIR = Path(__file__).with_name("static")
#: Seconds after which a client timestamp is "ten or more years old" and ignored.
TEN_YEARS = 10 * 365.25 * 86400.0
API_VERSIONS = ["0.0.1", "0.0.2", "0.0.3", "0.0.4"]
_BAD_BUCKET_CHARS = re.compile(r"[:\"']")
_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class CollectorConfig:
    """Behaviour of a collector.

    ``access_keys`` empty means any non-empty key is accepted. ``rate_limit`` is
    ``(requests, per_seconds)`` per access key on ``/api/events``. ``monthly_quota`` is events per
    access key per UTC calendar month. ``max_body`` is the largest accepted (decoded) body in
    bytes. Timestamps ten or more years old are replaced by the receive time when
    ``ignore_old_timestamps`` (as the real API does).
    """

    access_keys: FrozenSet[str] = frozenset()
    rate_limit: Optional[Tuple[int, float]] = None
    monthly_quota: Optional[int] = None
    max_body: int = 1_000_000
    max_key_chars: int = 250
    max_value_chars: int = 2000
    ignore_old_timestamps: bool = True


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
        """The JSON response for this error."""
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
    "N requests then a 429" deterministic in tests.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = int(limit), float(window)
        self._windows: Dict[str, List[float]] = {}

    def hit(self, owner: str, now: float) -> Tuple[bool, int, float]:
        """Count one request; return ``(allowed, remaining, reset_epoch)``."""
        w = self._windows.get(owner)
        if w is None or now >= w[0] + self.window:
            w = self._windows[owner] = [now, 0.0]
        reset = w[0] + self.window
        if w[1] >= self.limit:
            return False, 0, reset
        w[1] += 1
        return True, self.limit - int(w[1]), reset


# --------------------------------------------------------------------------- validation


def parse_timestamp(ev: Dict[str, Any], now: float, index: int, ignore_old: bool) -> float:
    """The event's epoch: ``epoch`` wins over ``iso8601``; none (or too old) means ``now``."""
    if "epoch" in ev:
        ep = ev["epoch"]
        if type(ep) not in (int, float):
            raise ApiError(400, "INVALID_EVENT", "event %d: epoch must be a number of seconds" % index, index)
        ep = float(ep)
    elif "iso8601" in ev:
        iso = ev["iso8601"]
        if type(iso) is not str:
            raise ApiError(400, "INVALID_EVENT", "event %d: iso8601 must be a string" % index, index)
        try:
            dt = datetime.fromisoformat(iso[:-1] + "+00:00" if iso.endswith(("Z", "z")) else iso)
        except ValueError:
            raise ApiError(400, "INVALID_EVENT", "event %d: bad iso8601 timestamp %r" % (index, iso), index) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        ep = dt.timestamp()
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
            raise ApiError(
                400, "INVALID_EVENT", "event %d: value longer than %d characters" % (index, max_chars), index
            )
        return orjson.dumps(value).decode(), None
    if t is bool:
        return ("true" if value else "false"), None
    if t is int:
        return str(value), float(value)
    if t is float:
        if not math.isfinite(value):
            raise ApiError(400, "INVALID_EVENT", "event %d: value is not finite" % index, index)
        return orjson.dumps(value).decode(), value
    kind = "null" if value is None else ("an object" if t is dict else ("an array" if t is list else t.__name__))
    raise ApiError(
        400, "INVALID_EVENT", "event %d: value must be a string, boolean or number, not %s" % (index, kind), index
    )


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
            raise ApiError(400, "INVALID_EVENT", "event %d: key must be a non-empty string" % i, i)
        if len(key) > max_key:
            raise ApiError(400, "INVALID_EVENT", "event %d: key longer than %d characters" % (i, max_key), i)
        if "value" not in ev:
            raise ApiError(400, "INVALID_EVENT", "event %d: value is required" % i, i)
        vj, vn = encode_value(ev["value"], i, max_value)
        if "epoch" in ev or "iso8601" in ev:
            ep = parse_timestamp(ev, now, i, ignore_old)
        else:
            ep = now
        append((key, vj, vn, ep))
    return rows


def parse_url_value(text: str) -> Any:
    """A URL-parameter value: JSON-style number, ``true``/``false``, else the string itself."""
    if text == "true":
        return True
    if text == "false":
        return False
    if _INT_RE.fullmatch(text):
        return int(text)
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
    return bucket_key


# --------------------------------------------------------------------------- the application

CONFIG = web.AppKey("config", CollectorConfig)
STORE = web.AppKey("store", Store)
LIMITER = web.AppKey("limiter", object)
_RequestKey = getattr(web, "RequestKey", None)  # aiohttp >= 3.13 wants typed request keys
_LOG: Any = _RequestKey("isstreamer_log", RequestLog) if _RequestKey else "isstreamer_log"
_LOGGED: Any = _RequestKey("isstreamer_logged", bool) if _RequestKey else "isstreamer_logged"
_EXTRA_HEADERS: Any = _RequestKey("isstreamer_headers", dict) if _RequestKey else "isstreamer_headers"


def _is_write_api(request: web.Request) -> bool:
    path = request.path
    return path == "/api/events" or (path == "/api/buckets" and request.method == "POST")


@web.middleware
async def api_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """JSON errors for /api and /data paths, ``X-Request-Id``, and the write-request log."""
    uid = uuid.uuid4().hex
    entry: Optional[RequestLog] = None
    if _is_write_api(request):
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
    except Exception:  # noqa: BLE001 - answer 500 as JSON and keep serving
        log.exception("collector: unhandled error on %s %s", request.method, request.path)
        if entry is not None:
            entry.error_type = "INTERNAL"
        resp = ApiError(500, "INTERNAL", "internal server error").response()
    extra = request.get(_EXTRA_HEADERS)
    if extra:
        resp.headers.update(extra)
    resp.headers["X-Request-Id"] = uid
    if entry is not None and not request.get(_LOGGED):
        entry.status = resp.status
        await asyncio.wrap_future(request.app[STORE].call_write(lambda c: st.log_request(c, entry)))
    return resp


def _access_key(request: web.Request, required: bool = True) -> Optional[str]:
    """The request's access key (header or ``accessKey`` parameter), checked against config."""
    key = request.headers.get("X-IS-AccessKey") or request.query.get("accessKey")
    config = request.app[CONFIG]
    if not key:
        if not required:
            return None
        raise ApiError(401, "UNAUTHORIZED", "missing access key (X-IS-AccessKey header or accessKey parameter)")
    if config.access_keys and key not in config.access_keys:
        raise ApiError(401, "UNAUTHORIZED", "unknown access key")
    return key


async def _read_body(request: web.Request) -> bytes:
    """The (decompressed) body, or a 413 when it is over ``max_body``."""
    max_body = request.app[CONFIG].max_body
    if not request.headers.get("Content-Encoding") and (request.content_length or 0) > max_body:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", "body over %d bytes" % max_body)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", "body over %d bytes" % max_body) from None
    except RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a body that is not gzip
        raise ApiError(400, "INVALID_BODY", "cannot read the body: %s" % str(exc).strip()) from None


def _loads(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "INVALID_JSON", "empty body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "INVALID_JSON", "body is not valid JSON: %s" % exc) from None


async def post_buckets(request: web.Request) -> web.Response:
    """``POST /api/buckets``: create a bucket (201), or 204 when it exists."""
    access_key = _access_key(request)
    assert access_key is not None
    payload = _loads(await _read_body(request))
    if type(payload) is not dict:
        raise ApiError(400, "INVALID_JSON", "body must be a JSON object")
    bucket_key = validate_bucket_key(payload.get("bucketKey"))
    entry: RequestLog = request[_LOG]
    entry.bucket_key = bucket_key
    name = payload.get("bucketName", "")
    if name is None:
        name = ""
    if type(name) is not str or len(name) > 250:
        raise ApiError(400, "INVALID_BUCKET_NAME", "bucketName must be a string of at most 250 characters")
    tags = payload.get("tags", [])
    if tags is None:
        tags = []
    if type(tags) is not list or not all(type(t) is str for t in tags):
        raise ApiError(400, "INVALID_TAGS", "tags must be an array of strings")
    owner = st.hash_access_key(access_key)
    entry.owner = owner
    now = time.time()
    result = await asyncio.wrap_future(
        request.app[STORE].call_write(lambda c: st.create_bucket(c, owner, bucket_key, name, tags, now, entry))
    )
    request[_LOGGED] = True
    if result.status == 201:
        return json_response({"bucketKey": bucket_key, "bucketName": name}, status=201)
    if result.status == 204:
        return web.Response(status=204)
    err = ApiError(result.status, result.error_type or "ERROR", result.message)
    entry.error_type = err.type
    raise err


async def events(request: web.Request) -> web.Response:
    """``GET|POST /api/events``: store one event, an array, or URL-parameter events (204)."""
    app = request.app
    config = app[CONFIG]
    entry: RequestLog = request[_LOG]
    access_key = _access_key(request)
    assert access_key is not None
    owner = st.hash_access_key(access_key)
    entry.owner = owner
    now = time.time()
    limiter: Optional[RateLimiter] = app[LIMITER]  # type: ignore[assignment]
    if limiter is not None:
        allowed, remaining, reset = limiter.hit(owner, now)
        headers = {
            "X-RateLimit-Limit": str(limiter.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(int(math.ceil(reset))),
        }
        request[_EXTRA_HEADERS] = headers
        if not allowed:
            retry = max(1, int(math.ceil(reset - now)))
            raise ApiError(
                429, "RATE_LIMITED", "rate limit of %d requests per %gs exceeded" % (limiter.limit, limiter.window),
                headers={"Retry-After": str(retry)},
            )
    bucket_key = validate_bucket_key(request.headers.get("X-IS-BucketKey") or request.query.get("bucketKey"))
    entry.bucket_key = bucket_key

    rows: List[EventRow] = []
    url_pairs = [(k, v) for k, v in request.query.items() if k not in ("accessKey", "bucketKey")]
    has_body = request.method == "POST" and (request.can_read_body or (request.content_length or 0) > 0)
    if has_body or not url_pairs:
        body = await _read_body(request)
        if body.strip() or not url_pairs:
            rows = parse_events(_loads(body), now, config)
    if url_pairs:
        base = len(rows)
        url_events = [{"key": k, "value": parse_url_value(v)} for k, v in url_pairs]
        try:
            rows.extend(parse_events(url_events, now, config))
        except ApiError as exc:
            if exc.index is not None:
                exc.index += base
            raise
    received = time.time()
    quota = config.monthly_quota
    result = await asyncio.wrap_future(
        app[STORE].call_write(lambda c: st.ingest(c, owner, bucket_key, rows, received, quota, entry))
    )
    request[_LOGGED] = True
    if result.status == 204:
        return web.Response(status=204)
    err = ApiError(result.status, result.error_type or "ERROR", result.message)
    entry.error_type = err.type
    raise err


# --------------------------------------------------------------------------- read API


def _owner_filter(request: web.Request) -> Optional[str]:
    """Owner filter of a read request: ``owner`` (hash prefix) or an access key."""
    owner = request.query.get("owner")
    if owner:
        return owner.lower()
    key = request.headers.get("X-IS-AccessKey") or request.query.get("accessKey")
    return st.hash_access_key(key) if key else None


def _float_param(request: web.Request, name: str) -> Optional[float]:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
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
    owner = _owner_filter(request)
    found = await asyncio.wrap_future(request.app[STORE].call_read(lambda c: st.find_buckets(c, bucket_key, owner)))
    if not found:
        raise ApiError(404, "BUCKET_NOT_FOUND", "no bucket %r" % bucket_key)
    return _merge_buckets(found), [b["id"] for b in found]


async def list_buckets(request: web.Request) -> web.Response:
    """``GET /api/buckets``: every bucket (key, name, created, auto_created, event_count ...)."""
    owner = _owner_filter(request)
    buckets = await asyncio.wrap_future(request.app[STORE].call_read(lambda c: st.list_buckets(c, owner)))
    return json_response({"buckets": buckets})


async def get_bucket(request: web.Request) -> web.Response:
    """``GET /api/buckets/{bucketKey}``: one bucket's description."""
    info, _ = await _find(request)
    return json_response(info)


async def delete_bucket(request: web.Request) -> web.Response:
    """``DELETE /api/buckets/{bucketKey}``: mark the bucket removed (admin; 204, or 404)."""
    bucket_key = request.match_info["bucketKey"]
    owner = _owner_filter(request)
    n = await asyncio.wrap_future(request.app[STORE].call_write(lambda c: st.remove_bucket(c, bucket_key, owner)))
    if not n:
        raise ApiError(404, "BUCKET_NOT_FOUND", "no bucket %r to remove" % bucket_key)
    return web.Response(status=204)


async def bucket_latest(request: web.Request) -> web.Response:
    """``GET /api/buckets/{bucketKey}/latest``: the bucket and the latest value of each key."""
    info, ids = await _find(request)
    latest = await asyncio.wrap_future(request.app[STORE].call_read(lambda c: st.latest_values(c, ids)))
    return json_response({"bucket": info, "latest": latest})


async def bucket_events(request: web.Request) -> web.Response:
    """``GET /api/buckets/{bucketKey}/events?key=&since=&until=&limit=&order=``: events by epoch.

    ``order=desc`` selects the newest ``limit`` events (still listed oldest first).
    """
    info, ids = await _find(request)
    key = request.query.get("key") or None
    since, until = _float_param(request, "since"), _float_param(request, "until")
    limit_f = _float_param(request, "limit")
    limit = 1000 if limit_f is None else max(0, min(int(limit_f), 1_000_000))
    order = request.query.get("order", "asc").lower()
    if order not in ("asc", "desc"):
        raise ApiError(400, "INVALID_PARAMETER", "order must be asc or desc")
    rows = await asyncio.wrap_future(
        request.app[STORE].call_read(lambda c: st.query_events(c, ids, key, since, until, limit, order == "desc"))
    )
    return json_response({"bucket": info["key"], "events": rows})


async def get_stats(request: web.Request) -> web.Response:
    """``GET /api/stats``: events stored, buckets, write requests and per-status counts."""
    data = await asyncio.wrap_future(request.app[STORE].call_read(st.stats))
    return json_response(data)


async def versions(request: web.Request) -> web.Response:
    """``GET /api/versions``: the API versions this collector speaks."""
    return json_response(API_VERSIONS)


async def data_latest(request: web.Request) -> web.Response:
    """``GET /data/v1/events/latest?key=``: ``{key: {"value", "epoch", "date"}}`` (compat read API)."""
    access_key = _access_key(request)
    assert access_key is not None
    bucket_key = validate_bucket_key(request.headers.get("X-IS-BucketKey") or request.query.get("bucketKey"))
    owner = st.hash_access_key(access_key)
    found = await asyncio.wrap_future(request.app[STORE].call_read(lambda c: st.find_buckets(c, bucket_key, owner)))
    if not found:
        raise ApiError(404, "BUCKET_NOT_FOUND", "no bucket %r" % bucket_key)
    ids = [b["id"] for b in found]
    latest = await asyncio.wrap_future(request.app[STORE].call_read(lambda c: st.latest_values(c, ids)))
    wanted = set(k for v in request.query.getall("key", []) for k in v.split(",") if k)
    out = {}
    for item in latest:
        if wanted and item["key"] not in wanted:
            continue
        date = datetime.fromtimestamp(item["epoch"], timezone.utc).isoformat().replace("+00:00", "Z")
        out[item["key"]] = {"value": item["value"], "epoch": item["epoch"], "date": date}
    return json_response(out)


# --------------------------------------------------------------------------- dashboard


def _page(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    path = STATIC_DIR / name

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    handler.__doc__ = "Serve static/%s." % name
    return handler


@web.middleware
async def no_cache_static(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Have browsers revalidate dashboard assets (they change with the package)."""
    resp = await handler(request)
    if request.path.startswith("/static/"):
        resp.headers["Cache-Control"] = "no-cache"
    return resp


def create_app(config: CollectorConfig, store: Store) -> web.Application:
    """Build the collector application over an open :class:`Store`."""
    app = web.Application(client_max_size=config.max_body, middlewares=[api_middleware, no_cache_static])
    app[CONFIG] = config
    app[STORE] = store
    app[LIMITER] = RateLimiter(*config.rate_limit) if config.rate_limit else None  # type: ignore[assignment]
    r = app.router
    r.add_post("/api/buckets", post_buckets)
    r.add_get("/api/buckets", list_buckets)
    r.add_route("*", "/api/events", events)
    r.add_get("/api/stats", get_stats)
    r.add_get("/api/versions", versions)
    r.add_get("/api/buckets/{bucketKey:.+}/latest", bucket_latest)
    r.add_get("/api/buckets/{bucketKey:.+}/events", bucket_events)
    r.add_get("/api/buckets/{bucketKey:.+}", get_bucket)
    r.add_delete("/api/buckets/{bucketKey:.+}", delete_bucket)
    r.add_get("/data/v1/events/latest", data_latest)
    r.add_get("/", _page("index.html"))
    r.add_get("/dashboard/{bucketKey:.+}", _page("dashboard.html"))
    r.add_static("/static/", STATIC_DIR)
    return app


def make_config(
    access_keys: Iterable[str] = (),
    rate_limit: Optional[Tuple[int, float]] = None,
    monthly_quota: Optional[int] = None,
    max_body: int = 1_000_000,
    max_key_chars: int = 250,
    ignore_old_timestamps: bool = True,
) -> CollectorConfig:
    """A :class:`CollectorConfig` from plain arguments (as the server and CLI take them)."""
    return CollectorConfig(
        access_keys=frozenset(k for k in access_keys if k),
        rate_limit=(int(rate_limit[0]), float(rate_limit[1])) if rate_limit else None,
        monthly_quota=monthly_quota,
        max_body=int(max_body),
        max_key_chars=int(max_key_chars),
        ignore_old_timestamps=ignore_old_timestamps,
    )
