"""The connection guard (issue 20 item 1) phase by phase, on a real collector with small caps:
the per-client cap, eviction order, the idle and write timeouts, busy connections kept."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, List

import pytest
import requests

from isstreamer.collector.guard import client_of

from support import wait_until

pytestmark = pytest.mark.collector_backends()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (answers are read and dropped)."""
    deadline = time.monotonic() + within
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        if time.monotonic() >= deadline:
            return False


def connect(port: int, n: int, send: bytes = b"") -> List[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if send:
            s.sendall(send)
        out.append(s)
    return out


def get(port: int, path: str = "/api/versions") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path.encode(), port)


def tiers(server: Any) -> List[int]:
    """The eviction tier of each open connection of an in-process server (9: busy)."""
    guard = server.guard
    while True:
        try:
            conns = list(guard.open)
            break
        except RuntimeError:  # changed while read (the server runs in another thread)
            continue
    return sorted((c.eviction_rank() or (9, 0.0))[0] for c in conns)


def test_per_client_cap_keeps_the_newest(collector_factory: Any) -> None:
    server = collector_factory(max_per_client=4, header_timeout=60)
    socks = connect(server.port, 10, b"GET / HTTP/1.1\r\n")  # heads never finished
    try:
        assert requests.get(server.url + "/api/versions", timeout=10).status_code == 200
        closed = [closed_by_server(s, 0.5) for s in socks]
        assert sum(closed) >= 6 and not any(closed[-3:]), closed  # the oldest went first
        assert requests.get(server.url + "/api/stats").json()["connections"]["evicted"] >= 6
    finally:
        for s in socks:
            s.close()


def test_idle_connections_evicted_before_heads_and_bodies(collector_factory: Any) -> None:
    server = collector_factory(max_connections=6, max_per_client=6, header_timeout=60, idle_timeout=60)
    port = server.port
    head = connect(port, 2, b"GET / HTTP/1.1\r\n")
    time.sleep(0.2)
    body = connect(
        port,
        2,
        b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-IS-AccessKey: k\r\n"
        b"X-IS-BucketKey: b\r\nContent-Length: 100\r\n\r\n[" % port,
    )
    idle = connect(port, 2, get(port))
    assert wait_until(lambda: tiers(server) == [1, 1, 2, 2, 2, 2], 20)  # 2 idle after an answer, 4 sending
    newcomers = connect(port, 2)
    try:
        assert all(closed_by_server(s, 5) for s in idle)
        assert not any(closed_by_server(s, 0.3) for s in head + body)
        newcomers += connect(port, 2)  # no idle one left: those sending a request the longest go next
        assert all(closed_by_server(s, 5) for s in head)
        assert not any(closed_by_server(s, 0.3) for s in body)
        newcomers += connect(port, 2)
        assert all(closed_by_server(s, 5) for s in body)
    finally:
        for s in body + head + idle + newcomers:
            s.close()


def test_idle_keep_alive_times_out(collector_factory: Any) -> None:
    server = collector_factory(idle_timeout=0.5)
    [s] = connect(server.port, 1, get(server.port))
    try:
        assert closed_by_server(s, 20)
    finally:
        s.close()


@pytest.mark.slow
def test_answers_never_read_time_out(collector_factory: Any) -> None:
    server = collector_factory(write_timeout=0.5)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", server.port))
    try:
        s.sendall(get(server.port, "/static/chart.js") * 3000)  # 25 MB of answers: more than the buffers hold
        time.sleep(8)  # never read: the answers stall, then the connection is closed
        s.setblocking(False)
        received = b""
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
        except (BlockingIOError, ConnectionResetError):
            pass
        assert received.count(b"HTTP/1.1 200") < 3000
        assert closed_by_server(s, 10)
    finally:
        s.close()
    assert requests.get(server.url + "/api/stats", timeout=10).json()["connections"]["write_timeouts"] >= 1


def test_busy_connections_are_never_evicted(collector_factory: Any, hold_writers: Any) -> None:
    server = collector_factory(max_connections=3, max_per_client=3)
    gate = threading.Event()
    hold_writers(server, gate)  # POSTs stay busy
    answers: List[int] = []

    def post() -> None:
        answers.append(
            requests.post(
                server.url + "/api/events",
                json={"key": "t", "value": 1},
                timeout=30,
                headers={"X-IS-AccessKey": "k", "X-IS-BucketKey": "b"},
            ).status_code
        )

    posters = [threading.Thread(target=post) for _ in range(3)]
    for t in posters:
        t.start()
    try:
        assert wait_until(lambda: tiers(server) == [9, 9, 9], 20)  # three requests being answered
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url + "/api/versions", timeout=10)  # refused: nothing could make room
    finally:
        gate.set()
        for t in posters:
            t.join(30)
    assert answers == [204, 204, 204]
    assert requests.get(server.url + "/api/versions", timeout=10).status_code == 200


def test_client_of() -> None:
    assert client_of(("192.0.2.7", 5000)) == "192.0.2.7"
    assert client_of(("::ffff:192.0.2.7", 5000, 0, 0)) == "192.0.2.7"
    assert client_of(("2001:db8:1:2:3:4:5:6", 5000, 0, 0)) == "2001:db8:1:2::/64"
    assert client_of(("fe80::1%eth0", 5000, 0, 2)) == "fe80::/64"
    assert client_of(None) == "" and client_of("/run/sock") == ""


def test_static_files_from_memory_with_etags(collector: Any) -> None:
    r = requests.get(collector.url + "/static/chart.js")
    assert r.status_code == 200 and "javascript" in r.headers["Content-Type"]
    assert r.headers["Cache-Control"] == "no-cache"
    again = requests.get(collector.url + "/static/chart.js", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""
    assert requests.get(collector.url + "/static/nothing.js").status_code == 404
    assert requests.get(collector.url + "/static/../app.py").status_code == 404
    assert "<html" in requests.get(collector.url + "/dashboard/some/bucket").text.lower()
