"""HTTP to the events API over one keep-alive connection (a POST and its answer on a socket).

``requests`` would cost the sender about 100 ms of start-up (more than the rest of what it
imports together), and a one-shot script waits for that at ``close()``; the standard library's
``http.client`` another 10 ms (it imports the ``email`` package to parse headers), so the
request and its answer are written and read here, as ``http.client`` reads them. Its behaviour is kept
where it matters: the same CA bundle (``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else
certifi's, else the system's), certificate and host name checks, a stale keep-alive connection
noticed before a request is sent on it (as urllib3 does), and, when the environment names a
proxy (``HTTPS_PROXY`` and friends), a ``requests`` session instead: its proxy handling
(``NO_PROXY``, CONNECT tunnels, credentials) is the reference.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

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
    ssl = sys.modules.get("ssl")  # not imported: not a TLS error (plain HTTP never imports it)
    kind = (
        "Timeout"
        if isinstance(exc, socket.timeout)
        else "SSLError"
        if ssl is not None and isinstance(exc, ssl.SSLError)
        else None
    )
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


class BadAnswer(ValueError):
    """What came back is not an HTTP/1.x answer (as ``http.client``'s BadStatusLine and friends)."""


class RemoteDisconnected(ConnectionResetError):
    """The server closed the connection without answering (``http.client``'s name for it)."""


class _Reader:
    """The answer's bytes as they arrive on a socket: lines and counted reads, with limits."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def line(self) -> bytes:
        """One line, its end included (b"" at the end of the stream)."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                out = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return out
            if len(self.buf) > MAX_LINE:
                raise BadAnswer("a line of the answer is too long")
            start = len(self.buf)
            if not self._fill():
                out = bytes(self.buf)
                self.buf.clear()
                return out

    def read(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the stream."""
        while len(self.buf) < n and self._fill():
            pass
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_end(self, limit: int) -> Tuple[bytes, bool]:
        """Up to ``limit`` bytes until the server closes; (bytes, whether all came)."""
        while len(self.buf) <= limit and self._fill():
            pass
        out = bytes(self.buf[:limit])
        complete = len(self.buf) <= limit
        self.buf.clear()
        return out, complete


MAX_LINE = 65536  # of a status or header line (http.client's limit)
MAX_HEADERS = 100  # http.client's limit


def _read_answer(r: _Reader) -> Tuple[int, List[Tuple[str, str]], bytes, bool]:
    """(status, headers, body up to MAX_ANSWER_BYTES, whether the connection may carry another
    request), read as ``http.client`` does: interim 1xx answers skipped, the body by
    ``Transfer-Encoding: chunked``, ``Content-Length`` or the end of the stream."""
    while True:
        line = r.line()
        if not line:
            raise RemoteDisconnected("Remote end closed connection without response")
        parts = line.decode("iso-8859-1").rstrip("\r\n").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise BadAnswer("not an HTTP answer: %r" % line[:80])
        version, status = parts[0], int(parts[1])
        headers: List[Tuple[str, str]] = []
        while True:
            h = r.line()
            if h in (b"\r\n", b"\n", b""):
                break
            if len(headers) >= MAX_HEADERS:
                raise BadAnswer("more than %d headers" % MAX_HEADERS)
            text = h.decode("iso-8859-1").rstrip("\r\n")
            if text[:1] in (" ", "\t") and headers:  # an obsolete folded line continues the last one
                name, value = headers[-1]
                headers[-1] = (name, value + " " + text.strip())
                continue
            name, sep, value = text.partition(":")
            if sep:
                headers.append((name.strip(), value.strip()))
        if status >= 200 or status == 101:
            break  # 100 Continue and other interim answers: the real one follows
    found = {k.lower(): v for k, v in headers}
    conn_tokens = [t.strip().lower() for t in found.get("connection", "").split(",")]
    reusable = "close" not in conn_tokens and (version != "HTTP/1.0" or "keep-alive" in conn_tokens)
    if status in (204, 304) or status < 200:
        return status, headers, b"", reusable
    if "chunked" in found.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size_line = r.line()
            if not size_line:
                raise RemoteDisconnected("the answer ended inside its body")
            size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
            if size == 0:
                while r.line() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                break
            if len(body) + size > MAX_ANSWER_BYTES:
                body += r.read(MAX_ANSWER_BYTES - len(body))
                return status, headers, bytes(body), False
            chunk = r.read(size)
            if len(chunk) < size:
                raise RemoteDisconnected("the answer ended inside its body")
            body += chunk
            r.line()  # the chunk's CRLF
        return status, headers, bytes(body), reusable
    length = found.get("content-length")
    if length is not None:
        n = int(length)
        if n < 0:
            raise BadAnswer("a negative Content-Length")
        data = r.read(min(n, MAX_ANSWER_BYTES))
        if len(data) < min(n, MAX_ANSWER_BYTES):
            raise RemoteDisconnected("the answer ended inside its body")
        return status, headers, data, reusable and n <= MAX_ANSWER_BYTES
    data, _ = r.read_to_end(MAX_ANSWER_BYTES)  # no length: the body ends with the connection
    return status, headers, data, False


def _host_header(host: str, port: Optional[int], https: bool) -> str:
    name = "[%s]" % host if ":" in host else host
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        name = name.encode("idna").decode("ascii")
    return name if port is None or port == (443 if https else 80) else "%s:%d" % (name, port)


def split_base(api_base: str) -> Tuple[str, str, Optional[int], str]:
    """(scheme, host name in lower case, port or None, path) of an API base, as ``urlsplit``
    gives them; a plain ``scheme://host[:port][/path]`` (what the configuration normalizes to)
    without importing ``urllib.parse``, anything else through it."""
    scheme, sep, rest = api_base.partition("://")
    netloc, slash, path = rest.partition("/")
    host, colon, port = netloc.partition(":")
    if (
        sep
        and scheme.isalpha()
        and host
        and not any(c in rest for c in "[]@?#%\\")
        and (not colon or (port.isdigit() and port.isascii() and int(port) <= 65535))
    ):
        return scheme.lower(), host.lower(), int(port) if colon else None, slash + path
    parts = lazy.load("urllib.parse").urlsplit(api_base)
    return parts.scheme, parts.hostname or "", parts.port, parts.path


class _Connection:
    """One keep-alive HTTP/1.1 connection to the API's host, opened when needed, closed on any
    error. A POST and its answer, nothing more: ``http.client`` imports the ``email`` package to
    parse headers (about 10 ms of the sender's start-up, a one-shot script's ``close()``)."""

    def __init__(self, api_base: str) -> None:
        scheme, self.host, self.port, path = split_base(api_base)
        self.https = scheme == "https"
        self.prefix = path.rstrip("/")
        self.host_header = _host_header(self.host, self.port, self.https)
        self.sock: Any = None
        self.reader: Optional[_Reader] = None
        self.context: Any = None

    def _open(self, timeout: float) -> Tuple[Any, _Reader]:
        if self.sock is not None and (self.reader is None or self.reader.buf or _dropped(self.sock)):
            self.close()
        if self.sock is None:
            # an ASCII name (or address) as bytes: a str would make getaddrinfo load the idna codec
            host: Any = self.host.encode("ascii") if self.host.isascii() else self.host
            sock = socket.create_connection((host, self.port or (443 if self.https else 80)), timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.https:
                    if self.context is None:
                        ssl = lazy.load("ssl")
                        cafile, capath = ca_locations()
                        self.context = ssl.create_default_context(cafile=cafile, capath=capath)
                    sock = self.context.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
            self.sock, self.reader = sock, _Reader(sock)
        else:
            self.sock.settimeout(timeout)
        assert self.reader is not None
        return self.sock, self.reader

    def post(self, path: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
        """POST ``body`` to ``prefix + path``; never raises for network trouble."""
        try:
            sock, reader = self._open(timeout)
            lines = ["POST %s HTTP/1.1" % (self.prefix + path), "Host: " + self.host_header]
            lines.append("Accept-Encoding: identity")
            lines.append("Content-Length: %d" % len(body))
            for k, v in headers.items():
                if any(c in v for c in "\r\n\0"):  # never a header of our own making (the value unshown)
                    raise ValueError("Invalid header value for %s" % k)
                lines.append("%s: %s" % (k, v))
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            if len(body) <= 65536:
                sock.sendall(head + body)  # one segment for a small request
            else:  # a large batch is not copied
                sock.sendall(head)
                sock.sendall(body)
            status, items, data, reusable = _read_answer(reader)
            if not reusable:  # closed by the server, or more than we read
                self.close()
        except (OSError, ValueError, UnicodeError) as exc:
            self.close()
            return Answer(0, {}, "", describe(exc))
        return Answer(status, Headers(items), data[:8000].decode("utf-8", "replace")[:2000])

    def close(self) -> None:
        """Close the connection (the next request opens another)."""
        sock, self.sock, self.reader = self.sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


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
            body = lazy.load("gzip").compress(body, 5)
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
