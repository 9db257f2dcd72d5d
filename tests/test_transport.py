"""The sender's HTTP transport (its own HTTP/1.1 client) against real sockets: TLS with the CA bundle requests
would use, a keep-alive connection the server closed while idle, an oversized answer, an
environment that names a proxy (then a requests session serves, as before)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
from typing import List, Optional

import pytest

from isstreamer.sender.transport import Headers, Transport, proxy_configured

ANSWER_204 = b"HTTP/1.1 204 No Content\r\nServer: t\r\n\r\n"


class RawServer:
    """A loopback HTTP/1.1 server on raw sockets, one thread per connection: it records each
    request line, answers ``answer``, and closes a connection ``close_after`` s after answering
    (without saying so: the stale keep-alive connection a client must notice)."""

    def __init__(
        self, answer: bytes = ANSWER_204, close_after: Optional[float] = None, tls: Optional[ssl.SSLContext] = None
    ) -> None:
        self.answer = answer
        self.close_after = close_after
        self.tls = tls
        self.requests: List[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.port)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                self.requests.append(head.split(b"\r\n")[0])
                conn.sendall(self.answer)
                if self.close_after is not None:
                    time.sleep(self.close_after)
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_keep_alive_connection_the_server_closed_is_not_used_for_the_next_request() -> None:
    server = RawServer(close_after=0.05)
    t = Transport(server.url, "k")
    try:
        assert t.post_events("b", b"[]").status == 204
        time.sleep(0.3)  # the server has closed the connection meanwhile
        a = t.post_events("b", b"[]")
        assert a.status == 204, a.error
        assert len(server.requests) == 2  # each sent once: nothing resent on a guess
    finally:
        t.close()
        server.close()


def test_an_oversized_answer_is_cut_and_its_connection_not_reused() -> None:
    body = b"x" * (3 << 20)
    server = RawServer(answer=b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    t = Transport(server.url, "k")
    try:
        a = t.post_events("b", b"[]")
        assert a.status == 500 and len(a.text) == 2000
        server.answer = ANSWER_204
        assert t.post_events("b", b"[]").status == 204
    finally:
        t.close()
        server.close()


def test_a_refused_connection_is_an_answer_with_an_error_not_an_exception() -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    a = Transport("http://127.0.0.1:%d" % port, "k").post_events("b", b"[]")
    assert a.status == 0 and a.error is not None and a.error.startswith("ConnectionError: ConnectionRefusedError")


def test_a_silent_server_times_out_within_the_request_timeout() -> None:
    quiet = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog), never answers
    t = Transport("http://127.0.0.1:%d" % quiet.getsockname()[1], "k", timeout=0.3)
    t0 = time.monotonic()
    a = t.post_events("b", b"[]")
    assert a.status == 0 and a.error is not None and a.error.startswith("Timeout"), a.error
    assert time.monotonic() - t0 < 5
    quiet.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A self-signed certificate for 127.0.0.1 (cert and key in one PEM file)."""
    d = tmp_path_factory.mktemp("tls")
    pem = str(d / "server.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", pem + ".key", "-out", pem],
        check=True,
        capture_output=True,
    )
    with open(pem, "a") as out, open(pem + ".key") as key:
        out.write(key.read())
    return pem


def _tls_server(pem: str) -> RawServer:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    return RawServer(tls=ctx)


def test_https_trusts_the_bundle_requests_would_use_and_nothing_else(
    certificate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _tls_server(certificate)
    try:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        a = Transport(server.url, "k").post_events("b", b"[]")  # certifi's bundle: not trusted
        assert a.status == 0 and a.error is not None and a.error.startswith("SSLError"), a.error
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate)
        t = Transport(server.url, "k")
        assert t.post_events("b", b"[]").status == 204
        assert t.post_events("b", b"[]").status == 204  # the same connection
        t.close()
        assert server.requests == [b"POST /api/events HTTP/1.1"] * 2
    finally:
        server.close()


def test_a_proxy_in_the_environment_is_used_through_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = RawServer()  # an HTTP proxy sees the absolute URL in the request line
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert proxy_configured()
        t = Transport("http://events.example.invalid/prefix", "k")
        assert t.post_events("b", b"[]").status == 204
        t.close()
        assert proxy.requests == [b"POST http://events.example.invalid/prefix/api/events HTTP/1.1"]
    finally:
        proxy.close()


def test_no_proxy_variables_no_requests() -> None:
    assert not proxy_configured({"PATH": "/bin", "HTTPS_PROXY": ""})
    assert proxy_configured({"https_proxy": "http://p:3128"})
    code = (
        "import sys; from isstreamer.sender.transport import Transport; Transport('http://127.0.0.1:9', 'k');"
        "print('requests' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    out = subprocess.run(
        [__import__("sys").executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_answer_headers_are_found_whatever_their_case() -> None:
    h = Headers([("Retry-After", "3"), ("x-ratelimit-reset", "9"), ("Vary", "a"), ("vary", "b")])
    assert h.get("retry-after") == "3" and h["X-RateLimit-Reset"] == "9" and "RETRY-AFTER" in h
    assert h.get("Vary") == "a, b" and h.get("Missing", "d") == "d"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "https://groker.init.st/api",
        "https://Groker.Init.ST",
        "http://h:80/a/b/",
        "http://[::1]:9/x",
        "http://u@h:1/p",
        "http://h:/p",
        "HTTP://h",
        "http://h:00080",
    ],
)
def test_an_api_base_is_read_as_urlsplit_reads_it(url: str) -> None:
    from urllib.parse import urlsplit

    from isstreamer.sender.transport import split_base

    p = urlsplit(url)
    assert split_base(url) == (p.scheme, p.hostname or "", p.port, p.path)


def test_a_chunked_answer_is_read_whole_and_its_connection_kept() -> None:
    answer = (
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    server = RawServer(answer=answer)
    t = Transport(server.url, "k")
    try:
        a = t.post_events("b", b"[]")
        assert (a.status, a.text, a.headers.get("retry-after")) == (400, "hello world", "3"), a.error
        conn = t.via.sock
        server.answer = ANSWER_204
        assert t.post_events("b", b"[]").status == 204
        assert t.via.sock is conn  # the same connection
    finally:
        t.close()
        server.close()


def test_an_interim_100_is_skipped_and_an_unsized_answer_read_to_the_close() -> None:
    server = RawServer(
        answer=b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nServer: old\r\n\r\nall of it", close_after=0
    )
    t = Transport(server.url, "k", timeout=5)
    try:
        a = t.post_events("b", b"[]")
        assert (a.status, a.text, a.headers.get("server")) == (200, "all of it", "old"), a.error
        assert t.via.sock is None  # the answer ended with the connection
    finally:
        t.close()
        server.close()


def test_what_is_not_an_http_answer_is_an_error_not_an_exception() -> None:
    server = RawServer(answer=b"SMTP ready\r\n\r\n")
    t = Transport(server.url, "k", timeout=5)
    try:
        a = t.post_events("b", b"[]")
        assert a.status == 0 and a.error is not None and a.error.startswith("ConnectionError: BadAnswer"), a.error
    finally:
        t.close()
        server.close()


def test_a_header_value_that_would_end_the_header_is_refused_unsent() -> None:
    server = RawServer()
    t = Transport(server.url, "k")
    try:
        a = t.post_events("b\r\nX-Injected: 1", b"[]")
        assert a.status == 0 and a.error is not None and "Invalid header value" in a.error, a.error
        assert server.requests == []
    finally:
        t.close()
        server.close()
