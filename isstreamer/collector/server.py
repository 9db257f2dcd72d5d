"""Running the collector: :class:`CollectorServer` (a background thread, for tests and demos)
and :func:`run_collector` (blocking, for ``isstreamer serve``).

Example::

    with CollectorServer() as server:
        requests.post(server.url + "/api/events", json={"key": "t", "value": 21.5},
                      headers={"X-IS-AccessKey": "k", "X-IS-BucketKey": "b"})
        assert server.events("b")[0]["value"] == 21.5
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from aiohttp import web

from . import store as st
from . import limits
from .app import GUARD, CollectorConfig, create_app, make_config
from .dburl import masked
from .guard import ConnectionGuard, GuardedConnection
from .store import LogBounds, Store

__all__ = ["CollectorServer", "run_collector"]

log = logging.getLogger("isstreamer.collector")


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening socket on ``host:port`` (port 0 picks a free one); ``reuse_port``: with
    SO_REUSEPORT, so that other sockets of this user may listen on the same port (see
    :mod:`~isstreamer.collector.workers`)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family = infos[0][0] if infos else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=512, reuse_port=reuse_port)
    sock.setblocking(False)
    return sock


def _url(host: str, port: int) -> str:
    """The base URL to reach a collector bound to ``host`` from this machine."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = "[%s]" % host
    return "http://%s:%d" % (host, port)


def announcement(sock: socket.socket, db_label: str, workers: int = 1) -> str:
    """What :func:`run_collector` says once listening: the address really bound (with the URL to
    use on this machine when that is every interface), the database (a password masked) and the
    number of worker processes when more than one."""
    host, port = sock.getsockname()[:2]
    line = "isstreamer collector listening on http://%s:%d" % ("[%s]" % host if ":" in host else host, port)
    if host in ("0.0.0.0", "::"):
        line += " (every interface; on this machine %s)" % _url(host, port)
    return line + " (db %s%s)" % (db_label, ", %d worker processes" % workers if workers > 1 else "")


def exposure_warning(sock: socket.socket, config: CollectorConfig) -> Optional[str]:
    """A warning when any-key mode listens beyond the loopback interface, else None."""
    host, port = sock.getsockname()[:2]
    if config.keys_required or ipaddress.ip_address(host.split("%", 1)[0]).is_loopback:
        return None
    return (
        "warning: any-key mode on %s port %d: anyone who can reach it writes with any key and reads every "
        "bucket; configure keys (--access-key-file) or listen on 127.0.0.1" % (host, port)
    )


class _GuardedSite(web.SockSite):
    """A SockSite whose connections go through a :class:`ConnectionGuard`.

    ``accept_batch`` is how many connections asyncio accepts in one go (its ``backlog``
    argument); kept small enough that the guard's cap plus one batch fit in the file limit.
    """

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, guard: ConnectionGuard, accept_batch: int) -> None:
        super().__init__(runner, sock, backlog=accept_batch)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = self._guard
        self._server = await loop.create_server(
            lambda: GuardedConnection(server(), guard), sock=self._sock, backlog=self._backlog
        )


async def _start(config: CollectorConfig, store: Store, sock: socket.socket, shutdown_timeout: float) -> web.AppRunner:
    host, port = sock.getsockname()[:2]
    cap, batch = _connection_limits(config.max_connections)
    guard = ConnectionGuard(
        cap,
        config.header_timeout,
        max_per_client=config.max_per_client,
        idle_timeout=config.idle_timeout,
        write_timeout=config.write_timeout,
    )
    app = create_app(config, store, bound=(host, port), guard=guard)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        auto_decompress=False,  # bodies are decompressed by the handlers, with a cap
        keepalive_timeout=config.idle_timeout + config.header_timeout,  # a backstop: the guard closes first
    )
    await runner.setup()
    site = _GuardedSite(runner, sock, guard, batch)
    await site.start()
    return runner


def _connection_limits(wanted: int) -> Tuple[int, int]:
    """``(connection cap, accept batch)``: ``wanted`` connections and batches of 128, both
    lowered so that they fit the process's file limit with room for the database and the
    listening socket (a connection accepted beyond the limit could not even be refused)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return wanted, 128
    if soft == resource.RLIM_INFINITY:
        return wanted, 128
    spare = max(8, soft - 48)
    cap = max(4, min(wanted, spare * 2 // 3))
    return cap, max(4, min(128, spare - cap))


def _log_bounds(config: CollectorConfig) -> LogBounds:
    return LogBounds(rows=config.log_rows, max_age=config.log_days * 86400.0)


def open_store(config: CollectorConfig, db: str) -> Store:
    """The :class:`Store` of a collector with ``config`` on database ``db`` (a file or a URL)."""
    return Store(db, log_bounds=_log_bounds(config), max_db_bytes=config.max_db_bytes)


class CollectorServer:
    """A collector running on its own event loop in a background thread.

    ``db_path`` is an SQLite file or a ``postgresql://`` URL; ``db_path=None`` uses a temporary
    SQLite file that lives as long as this object. ``port=0`` picks a
    free port (see :attr:`url` after :meth:`start`). The other arguments (``options``: admin_keys,
    allowed_hosts, allowed_origins, max_connections, max_per_client, header_timeout,
    idle_timeout, body_timeout, write_timeout, page_size, disk_quota, max_db_size, log_rows,
    log_days) are those of :class:`~isstreamer.collector.app.CollectorConfig`. The
    ``events``/``buckets``/... helpers read
    the database on a fresh session and work before and after :meth:`stop`.
    """

    def __init__(
        self,
        db_path: Optional[str] = None,
        host: str = "127.0.0.1",
        port: int = 0,
        access_keys: Iterable[str] = (),
        rate_limit: Optional[Tuple[int, float]] = None,
        monthly_quota: Optional[int] = None,
        max_body: int = limits.MAX_BODY,
        max_key_chars: int = limits.MAX_KEY_CHARS,
        *,
        ignore_old_timestamps: bool = True,
        shutdown_timeout: float = 10.0,
        **options: Any,
    ) -> None:
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None
        if db_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="isstreamer-collector-")
            db_path = os.path.join(self._tmpdir.name, "collector.db")
        self.db_path: str = str(db_path)
        self.host = host
        self.port = port
        self.config: CollectorConfig = make_config(
            access_keys, rate_limit, monthly_quota, max_body, max_key_chars, ignore_old_timestamps, **options
        )
        self.shutdown_timeout = shutdown_timeout
        self._store: Optional[Store] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._thread: Optional[threading.Thread] = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (available once started)."""
        if self._runner is None:
            raise RuntimeError("CollectorServer is not running")
        return _url(self.host, self.port)

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._runner is not None

    @property
    def store(self) -> Optional[Store]:
        """The database the running server writes (None when stopped): for tools and tests."""
        return self._store

    @property
    def guard(self) -> ConnectionGuard:
        """The running server's connection guard (its counters and connections): for tools and tests."""
        if self._runner is None:
            raise RuntimeError("CollectorServer is not running")
        return self._runner.app[GUARD]

    def start(self) -> "CollectorServer":
        """Open the database, start listening in a background thread; return once ready."""
        if self._thread is not None:
            raise RuntimeError("CollectorServer already started")
        store = open_store(self.config, self.db_path)
        try:
            sock = bind(self.host, self.port)
        except BaseException:
            store.close()
            raise
        self._store = store
        self.port = sock.getsockname()[1]
        warning = exposure_warning(sock, self.config)
        if warning is not None:
            log.warning("isstreamer collector: %s", warning)
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: List[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._runner = loop.run_until_complete(_start(self.config, store, sock, self.shutdown_timeout))
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="isstreamer-collector", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            store.close()
            self._store = None
            sock.close()
            raise failure[0]
        return self

    def stop(self) -> None:
        """Finish in-flight requests, stop listening, close the database (idempotent)."""
        if self._thread is None:
            return
        loop, runner = self._loop, self._runner
        assert loop is not None
        if runner is not None:
            done = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
            try:  # in-flight requests get shutdown_timeout; never wait forever on the loop
                done.result(self.shutdown_timeout + 10.0)
            except concurrent.futures.TimeoutError:
                log.warning(
                    "isstreamer collector: shutdown did not finish in %gs; stopping anyway", self.shutdown_timeout
                )
        self._runner = None
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10.0)
        self._thread = None
        self._loop = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> "CollectorServer":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.url if self.running else "stopped"
        return "<CollectorServer %s db=%s>" % (state, masked(self.db_path))

    # ----------------------------------------------------------------- looking at the data

    def events(self, bucket_key: Optional[str] = None) -> List[Dict[str, Any]]:
        """Stored events (of one bucket key, or all) in insertion order.

        Each is ``{"bucket", "key", "value", "epoch", "received", "request_id"}``; ``value`` is
        decoded from the stored JSON, so 21, 21.0, "21" and True stay distinct.
        """
        return st.read_events(self.db_path, bucket_key)

    def event_count(self, bucket_key: Optional[str] = None) -> int:
        """Number of stored events (of one bucket key, or all)."""
        return st.read_event_count(self.db_path, bucket_key)

    def buckets(self) -> List[Dict[str, Any]]:
        """Buckets in creation order: ``key, name, auto_created, removed, event_count, ...``."""
        return st.read_buckets(self.db_path)

    def remove_bucket(self, bucket_key: str, access_key: Optional[str] = None) -> int:
        """Mark a bucket removed (events to it then get 400 ``BUCKET_REMOVED``); return count."""
        if self._store is not None:
            return self._store.remove_bucket(bucket_key, access_key)
        owner = st.hash_access_key(access_key) if access_key is not None else None
        return st.remove_bucket(self.db_path, bucket_key, owner)

    def requests_log(self) -> List[Dict[str, Any]]:
        """Write requests served, oldest first: ``method, path, status, error_type, events,
        bucket_key, body_bytes, content_type, content_encoding, accept_version, user_agent``."""
        return st.read_requests(self.db_path)

    def status_counts(self) -> Dict[int, int]:
        """How many write requests were answered with each status code."""
        return {int(k): v for k, v in st.read_stats(self.db_path)["statuses"].items()}

    def stats(self) -> Dict[str, Any]:
        """Same as ``GET /api/stats``: ``events, buckets, requests, statuses``."""
        return st.read_stats(self.db_path)


def run_collector(
    host: str = "127.0.0.1",
    port: int = 8080,
    db: Optional[str] = None,
    access_keys: Iterable[str] = (),
    rate_limit: Optional[Tuple[int, float]] = None,
    monthly_quota: Optional[int] = None,
    max_body: int = limits.MAX_BODY,
    max_key_chars: int = limits.MAX_KEY_CHARS,
    *,
    workers: int = limits.WORKERS,
    shutdown_timeout: float = 10.0,
    announce: Optional[Callable[[str], None]] = None,
    **options: Any,
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then shut down gracefully.

    ``db`` is an SQLite file (None: ``collector.db`` in the current directory, created 0600;
    missing directories 0700; see :func:`~isstreamer.collector.sqlite_store.prepare_database`
    for what is refused) or a ``postgresql://`` URL. ``workers`` > 1 runs that many processes on
    one port (:mod:`~isstreamer.collector.workers`). ``options`` are further
    :class:`CollectorConfig` fields. Once listening, ``announce`` (by default a line on stdout)
    is called with ``"isstreamer collector listening on http://ADDRESS:PORT ..."``, the address
    as bound; any-key mode beyond the loopback interface is warned about on stderr.
    """
    config = make_config(access_keys, rate_limit, monthly_quota, max_body, max_key_chars, **options)
    db = db or "collector.db"
    say = announce if announce is not None else (lambda line: print(line, flush=True))
    if workers > 1:
        from .workers import run_workers

        run_workers(config, db, host, port, workers, shutdown_timeout, say)
    else:
        store = open_store(config, db)
        try:
            sock = bind(host, port)
        except BaseException:
            store.close()
            raise
        warn_if_exposed(sock, config)
        serve_socket(config, store, sock, shutdown_timeout, ready=lambda: say(announcement(sock, store.label)))
    if announce is None:
        print("isstreamer collector stopped", file=sys.stderr, flush=True)


def warn_if_exposed(sock: socket.socket, config: CollectorConfig) -> None:
    """Print :func:`exposure_warning` on stderr when there is one."""
    warning = exposure_warning(sock, config)
    if warning is not None:
        print("isstreamer serve: " + warning, file=sys.stderr, flush=True)


def serve_socket(
    config: CollectorConfig,
    store: Store,
    sock: socket.socket,
    shutdown_timeout: float,
    ready: Optional[Callable[[], None]] = None,
) -> None:
    """Serve on a listening socket until SIGINT or SIGTERM, then finish in-flight requests and
    close ``store``; ``ready()`` is called once serving, the signal handlers in place."""

    async def main() -> None:
        try:
            runner = await _start(config, store, sock, shutdown_timeout)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop.set)
                except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                    signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
            if ready is not None:
                ready()
            await stop.wait()
            await runner.cleanup()
        finally:
            store.close()

    asyncio.run(main())
