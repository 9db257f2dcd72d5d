"""A fault-injecting Initial State events API for delivery tests.

:class:`FaultServer` is an aiohttp app on its own event loop in a background thread, on
127.0.0.1 (a free port, or a fixed one given to it so that it can be started *after* a client
already points at it). It keeps every accepted event (``bucket, key, value, epoch``), every
bucket creation and a log of every request (arrival and answer times on ``time.monotonic()``,
which is system-wide on Linux, so they compare with other processes' clocks). The test turns
faults on and off with thread-safe methods: ``fail_next``, ``reset_next``, ``slow``,
``rate_limit``, ``max_body``, ``poison``, ``unauthorized``, ``bucket_removed``, ``down``/``up``.

Answers are made after the request is processed, like a real server: a slow answer whose
client gave up (or died) has still been stored.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from aiohttp import web

EVENTS = "/api/events"
BUCKETS = "/api/buckets"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for a server started later on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Request:
    """One request the server saw."""

    path: str
    t_in: float  # monotonic time the request arrived
    t_out: float = 0.0  # monotonic time the answer was made (or the connection reset)
    status: int = -1  # 0 = connection reset without an answer, -1 = not answered (yet)
    nevents: int = 0
    bucket: str = ""
    nbytes: int = 0
    cancelled: bool = False  # the client went away before the answer was sent


# the key of a request's log entry in the aiohttp request (typed keys from aiohttp 3.13 on)
_REC: Any = web.RequestKey("rec", Request) if hasattr(web, "RequestKey") else "rec"


class FaultServer:
    """A fault-injecting events API server (see the module docstring)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self.events: List[Dict[str, Any]] = []
        self.buckets: List[Dict[str, Any]] = []
        self.requests: List[Request] = []
        self.access_keys: List[str] = []
        self.arrived = 0  # event requests whose body was read (answered or not yet)
        self._fail_n = 0
        self._fail_after = 0
        self._fail_status = 503
        self._reset_n = 0
        self._slow = 0.0
        self._rl_times = 0
        self._rl_after = 0.0
        self._max_body: Optional[int] = None
        self._poison: List[Any] = []
        self._unauthorized = False
        self._removed: set = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (the port is known once started, or given up front)."""
        return "http://%s:%d" % (self.host, self.port)

    @property
    def listening(self) -> bool:
        """True while the server accepts connections."""
        return self._runner is not None

    def start(self) -> "FaultServer":
        """Start the loop thread and listen; returns once connections are accepted."""
        if self._thread is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()
                loop.close()

            self._loop = loop
            self._thread = threading.Thread(target=run, name="faultserver", daemon=True)
            self._thread.start()
            ready.wait()
        self.up()
        return self

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None, "FaultServer is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def up(self) -> None:
        """Listen (again) on the same port."""
        if self._thread is None:
            self.start()
            return
        if self._runner is None:
            self._runner = self._call(self._listen())

    def down(self) -> None:
        """Stop listening and drop open connections: clients get connection refused."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._call(runner.cleanup())

    def stop(self) -> None:
        """Stop listening and end the loop thread (idempotent)."""
        self.down()
        if self._thread is not None:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
            self._loop = None

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _listen(self) -> web.AppRunner:
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._log_request])
        app.router.add_post(EVENTS, self._events)
        app.router.add_post(BUCKETS, self._buckets)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        sock = socket.create_server((self.host, self.port), backlog=512)  # SO_REUSEADDR on POSIX
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        return runner

    # ---- faults (thread-safe) -------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 503, after: int = 0) -> None:
        """Answer ``n`` event requests with ``status`` (nothing stored), from the ``after``+1-th one on."""
        with self._lock:
            self._fail_n, self._fail_status, self._fail_after = n, status, after

    def reset_next(self, n: int) -> None:
        """Abort the connection (TCP RST, no answer) of the next ``n`` event requests."""
        with self._lock:
            self._reset_n = n

    def slow(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` after processing the request (0 = off)."""
        with self._lock:
            self._slow = seconds

    def rate_limit(self, retry_after: float, times: int = 1) -> None:
        """Answer the next ``times`` requests (events or buckets) with 429 and ``Retry-After``."""
        with self._lock:
            self._rl_after, self._rl_times = retry_after, times

    def max_body(self, nbytes: Optional[int]) -> None:
        """Answer 413 to event bodies larger than ``nbytes`` (None = no limit)."""
        with self._lock:
            self._max_body = nbytes

    def poison(self, value: Any) -> None:
        """Answer 400 (JSON error body) to any batch holding an event with this value."""
        with self._lock:
            self._poison.append(value)

    def unauthorized(self, on: bool = True) -> None:
        """Answer 401 to every request while on."""
        with self._lock:
            self._unauthorized = on

    def bucket_removed(self, key: str) -> None:
        """Answer 400 ``BUCKET_REMOVED`` to events for bucket ``key``."""
        with self._lock:
            self._removed.add(key)

    # ---- looking at what happened ---------------------------------------------------------------
    def values(self, key: Optional[str] = None, bucket: Optional[str] = None) -> List[Any]:
        """Values of the stored events (of one event key and/or bucket), in arrival order."""
        with self._lock:
            return [
                e["value"]
                for e in self.events
                if (key is None or e["key"] == key) and (bucket is None or e["bucket"] == bucket)
            ]

    def duplicates(self, key: Optional[str] = None) -> Dict[Any, int]:
        """Values stored more than once, with their count."""
        return {v: n for v, n in Counter(self.values(key)).items() if n > 1}

    def log(self, path: Optional[str] = EVENTS) -> List[Request]:
        """A copy of the request log (of one path, or all with ``path=None``)."""
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def statuses(self, path: Optional[str] = EVENTS) -> Counter:
        """How many requests got each status (0 = reset)."""
        return Counter(r.status for r in self.log(path))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        """Poll ``predicate`` until true or ``timeout`` seconds passed; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() > deadline:
                return bool(predicate())
            time.sleep(0.02)

    def wait_events(self, n: int, timeout: float = 20.0) -> bool:
        """Wait until at least ``n`` events are stored."""
        return self.wait_for(lambda: len(self.events) >= n, timeout)

    # ---- handlers ----------------------------------------------------------------------------------
    async def _read(self, request: web.Request) -> bytes:
        body = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip" and body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)  # in case the framework did not already
        return body

    @web.middleware
    async def _log_request(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Log every request on arrival, so that none escapes the log (not even a cancelled one)."""
        rec = Request(request.path, time.monotonic(), bucket=request.headers.get("X-IS-BucketKey", ""))
        with self._lock:
            self.requests.append(rec)
        request[_REC] = rec
        try:
            return await handler(request)
        except asyncio.CancelledError:  # the client hung up (timeout, killed)
            rec.cancelled = True
            raise

    def _record(self, request: web.Request, t_in: float, status: int, nevents: int, nbytes: int) -> None:
        rec: Request = request[_REC]
        with self._lock:
            rec.t_out, rec.status, rec.nevents, rec.nbytes = time.monotonic(), status, nevents, nbytes

    async def _answer(
        self,
        request: web.Request,
        t_in: float,
        status: int,
        nevents: int,
        nbytes: int,
        body: Any = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> web.StreamResponse:
        with self._lock:
            delay = self._slow
        if delay:
            rec = request[_REC]
            with self._lock:  # decided (and stored if 2xx); the answer comes late
                rec.status, rec.nevents, rec.nbytes = status, nevents, nbytes
            await asyncio.sleep(delay)
        self._record(request, t_in, status, nevents, nbytes)
        if body is None:
            return web.Response(status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    def _common_fault(self, path: str) -> Optional[tuple]:
        """(status, body, headers) of a fault that applies to any request, under the lock."""
        if self._unauthorized:
            return 401, {"error": "UNAUTHORIZED", "message": "access key refused"}, None
        if self._rl_times > 0:
            self._rl_times -= 1
            return 429, {"error": "RATE_LIMITED"}, {"Retry-After": "%g" % self._rl_after}
        return None

    def _reset(self, request: web.Request, t_in: float, nevents: int, nbytes: int) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:  # linger 0: close() sends a RST instead of a FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()
        self._record(request, t_in, 0, nevents, nbytes)
        return web.Response(status=500)  # never reaches the client: the connection is gone

    async def _events(self, request: web.Request) -> web.StreamResponse:
        t_in = time.monotonic()
        body = await self._read(request)
        bucket = request.headers.get("X-IS-BucketKey", "")
        nbytes = len(body)
        try:
            data = json.loads(body)
        except ValueError:
            return await self._answer(request, t_in, 400, 0, nbytes, {"error": "INVALID_JSON"})
        events = data if isinstance(data, list) else [data]
        n = len(events)
        with self._lock:
            self.arrived += 1
            if self._reset_n > 0:
                self._reset_n -= 1
                reset = True
            else:
                reset = False
            fault = None if reset else self._common_fault(EVENTS)
            if not reset and fault is None and self._fail_n > 0:
                if self._fail_after > 0:
                    self._fail_after -= 1
                else:
                    self._fail_n -= 1
                    fault = (self._fail_status, {"error": "INJECTED_FAILURE"}, None)
            if not reset and fault is None and self._max_body is not None and nbytes > self._max_body:
                fault = (413, {"error": "PAYLOAD_TOO_LARGE", "max": self._max_body}, None)
            if not reset and fault is None and bucket in self._removed:
                fault = (400, {"error": "BUCKET_REMOVED", "message": "bucket %s was removed" % bucket}, None)
            if not reset and fault is None:
                bad = [
                    e
                    for e in events
                    if isinstance(e, dict)
                    and any(type(e.get("value")) is type(p) and e.get("value") == p for p in self._poison)
                ]
                if bad:
                    fault = (400, {"error": "INVALID_EVENT", "message": "poisoned value", "event": bad[0]}, None)
            if not reset and fault is None:
                for e in events:
                    self.events.append(
                        {"bucket": bucket, "key": e.get("key"), "value": e.get("value"), "epoch": e.get("epoch")}
                    )
                self.access_keys.append(request.headers.get("X-IS-AccessKey", ""))
        if reset:
            return self._reset(request, t_in, n, nbytes)
        if fault is not None:
            status, payload, headers = fault
            return await self._answer(request, t_in, status, n, nbytes, payload, headers)
        return await self._answer(request, t_in, 204, n, nbytes)

    async def _buckets(self, request: web.Request) -> web.StreamResponse:
        t_in = time.monotonic()
        body = await self._read(request)
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        key = data.get("bucketKey") or request.headers.get("X-IS-BucketKey", "")
        with self._lock:
            fault = self._common_fault(BUCKETS)
            if fault is None:
                known = any(b["bucket"] == key for b in self.buckets)
                self.buckets.append({"bucket": key, "name": data.get("bucketName", "")})
        if fault is not None:
            status, payload, headers = fault
            return await self._answer(request, t_in, status, 0, len(body), payload, headers)
        return await self._answer(request, t_in, 204 if known else 201, 0, len(body))
