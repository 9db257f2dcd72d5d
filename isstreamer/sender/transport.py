"""HTTP to the events API over one keep-alive connection of the standard library's ``http.client``.

``requests`` would cost the sender about 100 ms of start-up (more than the rest of what it
imports together), and a one-shot script waits for that at ``close()``. Its behaviour is kept
where it matters: the same CA bundle (``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else
certifi's, else the system's), certificate and host name checks, a stale keep-alive connection
noticed before a request is sent on it (as urllib3 does), and, when the environment names a
proxy (``HTTPS_PROXY`` and friends), a ``requests`` session instead: its proxy handling
(``NO_PROXY``, CONNECT tunnels, credentials) is the reference.
"""

from __future__ import annotations

import gzip
import http.client
import os
import socket
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .. import __version__, lazy
from ..options import DEFAULTS
from ..record import record

ACCEPT_VERSION = "<=0.0.4"  # what ISStreamer 2.0.0 sends
USER_AGENT = "isstreamer/%s (PyStreamer-compatible)" % __version__
MAX_ANSWER_BYTES = 1 << 20  # of an answer's body read (the rest is left, the connection closed)
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


@record()
class Answer:
    """What one request got: a status and headers, or the connection error that stopped it."""

    status: int  # 0 when no HTTP answer arrived
    headers: Mapping[str, str]
    text: str
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """True for 2xx."""
        return 200 <= self.status < 300


class Headers(Dict[str, str]):
    """An answer's headers, looked up without regard to case (repeated ones joined by ", ")."""

    def __init__(self, items: Iterable[Tuple[str, str]] = ()) -> None:
        super().__init__()
        for k, v in items:
            k = k.lower()
            dict.__setitem__(self, k, "%s, %s" % (self[k], v) if k in self else v)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """The header's value, or ``default``."""
        return dict.get(self, key.lower(), default)


def proxy_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the environment names an HTTP proxy (then ``requests`` resolves it)."""
    return any(k.lower() in PROXY_VARIABLES and v for k, v in environ.items())


def ca_locations() -> Tuple[Optional[str], Optional[str]]:
    """(cafile, capath) as ``requests`` chooses them: ``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE`` (a file or a directory), else certifi's bundle (found without importing
    it), else (None, None): the system's store."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        return (None, bundle) if os.path.isdir(bundle) else (bundle, None)
    spec = lazy.load("importlib.util").find_spec("certifi")
    for d in (spec.submodule_search_locations or []) if spec else []:
        pem = os.path.join(d, "cacert.pem")
        if os.path.isfile(pem):
            return pem, None
    return None, None


def describe(exc: BaseException) -> str:
    """One line for a request that got no answer: the kind first (as ``requests`` named it)."""
    ssl = lazy.load("ssl")
    kind = "Timeout" if isinstance(exc, socket.timeout) else "SSLError" if isinstance(exc, ssl.SSLError) else None
    detail = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
    return _short("%s: %s" % (kind or "ConnectionError", detail))


def _dropped(sock: socket.socket) -> bool:
    """True when an idle keep-alive socket can be read: the server closed it (or sent what
    nobody asked for). Either way it must not carry the next request."""
    select = lazy.load("select")
    try:
        if hasattr(select, "poll"):
            p = select.poll()
            p.register(sock, select.POLLIN)
            return bool(p.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _Connection:
    """One keep-alive connection to the API's host, opened when needed, closed on any error."""

    def __init__(self, api_base: str) -> None:
        parts = urlsplit(api_base)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.conn: Optional[http.client.HTTPConnection] = None
        self.context: Any = None

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        conn = self.conn
        if conn is not None and conn.sock is not None and _dropped(conn.sock):
            self.close()
            conn = None
        if conn is None:
            if self.https:
                if self.context is None:
                    ssl = lazy.load("ssl")
                    cafile, capath = ca_locations()
                    self.context = ssl.create_default_context(cafile=cafile, capath=capath)
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self.conn = conn
        else:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        return conn

    def post(self, path: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
        """POST ``body`` to ``prefix + path``; never raises for network trouble."""
        try:
            conn = self._open(timeout)
            conn.request("POST", self.prefix + path, body=body, headers=dict(headers))
            resp = conn.getresponse()
            data = resp.read(MAX_ANSWER_BYTES)
            if not resp.isclosed():  # more than we read: not worth keeping the connection for
                self.close()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.close()
            return Answer(0, {}, "", describe(exc))
        return Answer(resp.status, Headers(resp.getheaders()), data[:8000].decode("utf-8", "replace")[:2000])

    def close(self) -> None:
        """Close the connection (the next request opens another)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


class _ProxiedSession:
    """A ``requests`` session, for an environment that names a proxy."""

    def __init__(self, api_base: str) -> None:
        requests = lazy.load("requests")
        self.api_base = api_base
        self.requests = requests
        self.session = requests.Session()
        # resolve proxies and CA bundle once, not on every request (requests re-reads them per
        # request when trust_env is on)
        self.session.proxies.update(requests.utils.get_environ_proxies(api_base))
        cafile, capath = ca_locations()
        if cafile or capath:
            self.session.verify = cafile or capath
        self.session.trust_env = False

    def post(self, path: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
        """POST through the session; never raises for network trouble."""
        try:
            r = self.session.post(self.api_base + path, data=body, headers=dict(headers), timeout=timeout)
        except self.requests.RequestException as exc:
            return Answer(0, {}, "", "%s: %s" % (type(exc).__name__, _short(str(exc))))
        return Answer(r.status_code, r.headers, r.text[:2000])

    def close(self) -> None:
        """Close the session's connections."""
        self.session.close()


class Transport:
    """Posts events and creates buckets; never raises for network trouble (see Answer.error)."""

    def __init__(
        self, api_base: str, access_key: str, timeout: float = DEFAULTS.request_timeout, use_gzip: bool = False
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.use_gzip = use_gzip
        self.headers = {
            "Content-Type": "application/json",
            "Accept-Version": ACCEPT_VERSION,
            "User-Agent": USER_AGENT,
            "X-IS-AccessKey": access_key,
        }
        self.via = _ProxiedSession(self.api_base) if proxy_configured() else _Connection(self.api_base)

    def _post(self, path: str, body: bytes, headers: Mapping[str, str], timeout: Optional[float]) -> Answer:
        hdrs = dict(self.headers)
        hdrs.update(headers)
        if self.use_gzip and len(body) > 1024:
            body = gzip.compress(body, 5)
            hdrs["Content-Encoding"] = "gzip"
        t = self.timeout if timeout is None else min(self.timeout, max(0.05, timeout))
        return self.via.post(path, body, hdrs, t)

    def post_events(self, bucket_key: str, body: bytes, timeout: Optional[float] = None) -> Answer:
        """POST a JSON array of events to ``/api/events`` for ``bucket_key``."""
        return self._post("/api/events", body, {"X-IS-BucketKey": bucket_key}, timeout)

    def create_bucket(self, bucket_key: str, bucket_name: str, timeout: Optional[float] = None) -> Answer:
        """POST ``/api/buckets``; 201 created and 204 already there are both success."""
        body = (
            lazy.load("json").dumps({"bucketKey": bucket_key, "bucketName": bucket_name}, ensure_ascii=False).encode()
        )
        return self._post("/api/buckets", body, {"X-IS-BucketKey": bucket_key}, timeout)

    def close(self) -> None:
        """Close the keep-alive connection."""
        self.via.close()


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
