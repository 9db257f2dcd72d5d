"""Attacks on the local collector (issue 12, items 1-8), each against a real server on loopback.

Every test first performs the attack as reported, then checks the answer of the fixed collector.
"""

from __future__ import annotations

import gzip
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from typing import Any, Dict, Optional

import orjson
import pytest
import requests

from isstreamer.collector.server import CollectorServer
from isstreamer.collector.store import hash_access_key

from support import ROOT, wait_until

pytestmark = pytest.mark.collector_backends()

K1, K2, ADMIN = "key-one", "key-two", "admin-key"


def h(key: Optional[str] = K1, bucket: Optional[str] = None, **extra: str) -> Dict[str, str]:
    out = {"Content-Type": "application/json"}
    if key is not None:
        out["X-IS-AccessKey"] = key
    if bucket is not None:
        out["X-IS-BucketKey"] = bucket
    out.update(extra)
    return out


def post(
    server: CollectorServer, body: Any, bucket: str = "mine", key: Optional[str] = K1, **extra: str
) -> requests.Response:
    return requests.post(server.url + "/api/events", data=orjson.dumps(body), headers=h(key, bucket, **extra))


def etype(r: requests.Response) -> str:
    return r.json()["message"]["error"]["type"]


@pytest.fixture
def keyed(collector_factory: Any) -> CollectorServer:
    """A collector with two access keys and an admin key."""
    return collector_factory(access_keys=[K1, K2], admin_keys=[ADMIN])


# --------------------------------------------------------------------------- 1. deletes


def test_delete_needs_the_owning_key(keyed: CollectorServer) -> None:
    assert post(keyed, {"key": "t", "value": 1}).status_code == 204
    url = keyed.url + "/api/buckets/mine"
    # the attack: DELETE without a key, or with another key
    assert requests.delete(url).status_code == 401
    assert requests.delete(url, headers=h(K2)).status_code == 404
    assert requests.delete(url, params={"owner": hash_access_key(K1)[:12]}, headers=h(K2)).status_code == 403
    assert post(keyed, {"key": "t", "value": 2}).status_code == 204  # K1 still writes
    assert requests.delete(url, headers=h(K1)).status_code == 204
    assert etype(post(keyed, {"key": "t", "value": 3})) == "BUCKET_REMOVED"


def test_delete_never_crosses_owners(collector: CollectorServer) -> None:
    # any-key mode: two owners with the same bucket key
    assert post(collector, {"key": "t", "value": 1}, key="alice").status_code == 204
    assert post(collector, {"key": "t", "value": 1}, key="bob").status_code == 204
    assert requests.delete(collector.url + "/api/buckets/mine").status_code == 401  # was: both owners' removed
    assert requests.delete(collector.url + "/api/buckets/mine", headers=h("alice")).status_code == 204
    assert post(collector, {"key": "t", "value": 2}, key="bob").status_code == 204
    assert etype(post(collector, {"key": "t", "value": 2}, key="alice")) == "BUCKET_REMOVED"
    assert requests.delete(collector.url + "/api/buckets/mine", headers=h("mallory")).status_code == 404
    assert [b["removed"] for b in collector.buckets()] == [True, False]


def test_admin_delete_picks_one_owner(keyed: CollectorServer) -> None:
    assert post(keyed, {"key": "t", "value": 1}, key=K1).status_code == 204
    assert post(keyed, {"key": "t", "value": 1}, key=K2).status_code == 204
    url = keyed.url + "/api/buckets/mine"
    r = requests.delete(url, headers=h(ADMIN))
    assert r.status_code == 409 and etype(r) == "AMBIGUOUS_OWNER"
    assert requests.delete(url, params={"owner": hash_access_key(K2)[:12]}, headers=h(ADMIN)).status_code == 204
    assert post(keyed, {"key": "t", "value": 2}, key=K1).status_code == 204
    assert etype(post(keyed, {"key": "t", "value": 2}, key=K2)) == "BUCKET_REMOVED"


# --------------------------------------------------------------------------- 2. reads and Host


def test_reads_need_a_key_and_see_only_its_buckets(keyed: CollectorServer) -> None:
    assert post(keyed, {"key": "t", "value": 1}, bucket="mine", key=K1).status_code == 204
    assert post(keyed, {"key": "u", "value": 2}, bucket="theirs", key=K2).status_code == 204
    u = keyed.url
    for path in (
        "/api/buckets",
        "/api/buckets/mine",
        "/api/buckets/mine/events",
        "/api/buckets/mine/latest",
        "/api/buckets/mine/dashboard",
        "/api/stats",
    ):
        assert requests.get(u + path).status_code == 401, path
        assert requests.get(u + path, headers=h("wrong")).status_code == 401, path
    assert requests.get(u + "/api/buckets/mine/events", headers=h(K2)).status_code == 404
    assert [b["key"] for b in requests.get(u + "/api/buckets", headers=h(K2)).json()["buckets"]] == ["theirs"]
    assert requests.get(u + "/api/buckets", params={"owner": hash_access_key(K1)[:8]}, headers=h(K2)).status_code == 403
    assert [e["value"] for e in requests.get(u + "/api/buckets/mine/events", headers=h(K1)).json()["events"]] == [1]
    mine = requests.get(u + "/api/stats", headers=h(K1)).json()
    assert (mine["events"], mine["buckets"], mine["statuses"]) == (1, 1, {})
    # an admin key sees everything and may filter by owner
    assert len(requests.get(u + "/api/buckets", headers=h(ADMIN)).json()["buckets"]) == 2
    only = requests.get(u + "/api/buckets", params={"owner": hash_access_key(K2)[:8]}, headers=h(ADMIN)).json()
    assert [b["key"] for b in only["buckets"]] == ["theirs"]
    assert requests.get(u + "/api/stats", headers=h(ADMIN)).json()["statuses"] == {"204": 2}
    assert requests.get(u + "/api/versions").status_code == 200


def test_host_header_checked(collector_factory: Any) -> None:
    server = collector_factory()
    assert post(server, {"key": "t", "value": 1}).status_code == 204
    # DNS rebinding: the browser sends the attacker's name as Host
    r = requests.get(server.url + "/api/buckets", headers={"Host": "attacker.example:%d" % server.port})
    assert r.status_code == 403 and etype(r) == "HOST_NOT_ALLOWED" and "mine" not in r.text
    assert requests.get(server.url + "/", headers={"Host": "attacker.example"}).status_code == 403
    assert post(server, {"key": "t", "value": 2}, Host="attacker.example").status_code == 403
    assert requests.get(server.url + "/api/buckets", headers={"Host": "127.0.0.1:1"}).status_code == 403
    for ok in ("localhost:%d" % server.port, "127.0.0.1:%d" % server.port, "LOCALHOST"):
        assert requests.get(server.url + "/api/buckets", headers={"Host": ok}).status_code == 200, ok
    named = collector_factory(allowed_hosts=["collector.lan"])
    assert requests.get(named.url + "/api/buckets", headers={"Host": "collector.lan"}).status_code == 200
    assert requests.get(named.url + "/api/buckets", headers={"Host": "other.lan"}).status_code == 403


# --------------------------------------------------------------------------- 3. cross-site writes


def test_cross_site_writes_refused(collector: CollectorServer) -> None:
    u = collector.url
    # <img src=".../api/events?..."> on another site
    img = requests.get(
        u + "/api/events",
        params={"accessKey": "attacker", "bucketKey": "mine", "t": "666"},
        headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
    )
    assert img.status_code == 403 and etype(img) == "CROSS_SITE_REFUSED"
    # fetch(url, {mode: "no-cors", method: "POST", body: "...text/plain..."}) from another origin
    text = requests.post(
        u + "/api/events",
        params={"accessKey": "attacker", "bucketKey": "mine"},
        data=b'[{"key":"t","value":666}]',
        headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
    )
    assert text.status_code == 403
    same_site = post(collector, {"key": "t", "value": 666}, **{"Sec-Fetch-Site": "same-site"})
    assert same_site.status_code == 403
    null = post(collector, {"key": "t", "value": 666}, Origin="null")
    assert null.status_code == 403
    assert (
        requests.post(u + "/api/buckets", json={"bucketKey": "x"}, headers=h(Origin="http://evil.example")).status_code
        == 403
    )
    assert collector.event_count() == 0 and collector.buckets() == []
    # scripts and curl (no browser headers) and the collector's own pages keep working
    assert requests.get(u + "/api/events", params={"accessKey": "me", "bucketKey": "mine", "t": "1"}).status_code == 204
    assert post(collector, {"key": "t", "value": 2}).status_code == 204
    own = post(collector, {"key": "t", "value": 3}, Origin=u, **{"Sec-Fetch-Site": "same-origin"})
    assert own.status_code == 204
    assert [e["value"] for e in collector.events()] == [1, 2, 3]


def test_allowed_origin_may_write(collector_factory: Any) -> None:
    server = collector_factory(allowed_origins=["http://localhost:3000"])
    ok = post(server, {"key": "t", "value": 1}, Origin="http://localhost:3000", **{"Sec-Fetch-Site": "same-site"})
    assert ok.status_code == 204
    assert post(server, {"key": "t", "value": 1}, Origin="http://localhost:3001").status_code == 403


# --------------------------------------------------------------------------- 4. gzip bomb


def _bomb(decoded: int) -> bytes:
    return gzip.compress(b"[" + b" " * (decoded - 2) + b"]", 9)


def test_gzip_bomb_refused_without_inflating_it(collector: CollectorServer) -> None:
    bomb = _bomb(200 * 1024 * 1024)  # ~200 KB on the wire, 200 MiB inflated
    assert len(bomb) < 1_000_000
    hdr = h(bucket="mine", **{"Content-Encoding": "gzip"})
    r = requests.post(collector.url + "/api/events", data=bomb, headers=hdr)
    assert r.status_code == 413 and etype(r) == "PAYLOAD_TOO_LARGE"
    assert r.headers.get("Connection", "").lower() == "close"
    r = requests.post(collector.url + "/api/events", data=bomb, headers=dict(hdr, **{"X-IS-AccessKey": ""}))
    assert r.status_code == 401 and r.headers.get("Connection", "").lower() == "close"
    # a gzip body under the cap still works; so does deflate
    small = gzip.compress(orjson.dumps([{"key": "z", "value": 1}]))
    assert requests.post(collector.url + "/api/events", data=small, headers=hdr).status_code == 204
    import zlib

    deflated = zlib.compress(orjson.dumps([{"key": "z", "value": 2}]))
    assert (
        requests.post(
            collector.url + "/api/events", data=deflated, headers=dict(hdr, **{"Content-Encoding": "deflate"})
        ).status_code
        == 204
    )
    r = requests.post(collector.url + "/api/events", data=small[:-8], headers=hdr)
    assert r.status_code == 400 and "truncated" in r.text
    r = requests.post(collector.url + "/api/events", data=small, headers=dict(hdr, **{"Content-Encoding": "br"}))
    assert r.status_code == 400 and "Content-Encoding" in r.text
    assert collector.event_count() == 2


def test_gzip_bomb_in_bucket_creation(collector: CollectorServer) -> None:
    r = requests.post(
        collector.url + "/api/buckets", data=_bomb(50 * 1024 * 1024), headers=h(**{"Content-Encoding": "gzip"})
    )
    assert r.status_code == 413 and collector.buckets() == []


# --------------------------------------------------------------------------- 5. request log


def test_401s_counted_not_stored_and_fields_capped(collector_factory: Any) -> None:
    server = collector_factory(access_keys=[K1])
    with requests.Session() as s:
        for _ in range(60):
            r = s.post(
                server.url + "/api/events", data=b"{}", headers={"User-Agent": "x" * 6000, "X-IS-BucketKey": "b"}
            )
            assert r.status_code == 401
    assert server.requests_log() == []
    assert server.status_counts() == {401: 60}
    r = post(
        server, {"key": "t", "value": 1}, **{"User-Agent": "y" * 6000, "Content-Type": "application/" + "z" * 6000}
    )
    assert r.status_code == 204
    [row] = server.requests_log()
    assert len(row["user_agent"]) <= 200 and len(row["content_type"]) <= 200 and row["user_agent"].startswith("yyy")


def test_request_log_bounded(collector_factory: Any) -> None:
    server = collector_factory(log_rows=20)
    with requests.Session() as s:
        for _ in range(150):
            r = s.post(server.url + "/api/events", data=b'{"key":"t","value":1}', headers=h(bucket="b"))
            assert r.status_code == 204
    rows = server.requests_log()
    assert len(rows) <= 40 and rows[-1]["id"] == 150
    assert server.status_counts() == {204: 150} and server.event_count() == 150


def test_request_log_age_bound(collector_db: Any) -> None:
    from isstreamer.collector import store as st

    db = collector_db()
    s = st.Store(db)
    try:
        now = time.time()
        for age_days in (30, 8, 6, 0):
            entry = st.RequestLog(
                request_uid="u%d" % age_days, time=now - age_days * 86400, method="POST", path="/api/events", status=204
            )
            s.call_write(lambda c, e=entry: c.log_request(e)).result()
        s.call_write(lambda c: c.prune_requests(st.LogBounds(rows=100, max_age=7 * 86400), now)).result()
    finally:
        s.close()
    assert [r["request_uid"] for r in st.read_requests(db)] == ["u6", "u0"]


# --------------------------------------------------------------------------- 6. parse errors are 400s


def test_huge_epoch_is_400_and_reads_keep_working(collector: CollectorServer) -> None:
    for bad in (1e300, -1e300, "1e300", 253402300800):
        r = post(collector, [{"key": "t", "value": 1, "epoch": bad}])
        assert r.status_code == 400 and "epoch" in r.json()["message"]["error"]["message"], bad
    assert post(collector, [{"key": "t", "value": 1, "epoch": 253402300799}]).status_code == 204
    for path in ("/api/buckets/mine/latest", "/api/buckets/mine/events", "/api/buckets/mine/dashboard"):
        assert requests.get(collector.url + path).status_code == 200, path
    r = requests.get(collector.url + "/data/v1/events/latest", headers=h(bucket="mine"))
    assert r.status_code == 200 and r.json()["t"]["date"].startswith("9999-12-31")


def test_long_numeric_url_values_are_kept_as_text(collector: CollectorServer) -> None:
    digits400, digits5000 = "9" * 400, "1" * 5000
    r = requests.get(
        collector.url + "/api/events",
        params={"accessKey": K1, "bucketKey": "u", "a": digits400, "b": "1e999", "c": "-" + "9" * 25, "d": "12"},
    )
    assert r.status_code == 204
    r = requests.post(collector.url + "/api/events", params={"accessKey": K1, "bucketKey": "u", "e": digits5000})
    assert r.status_code == 400 and "longer than 2000 characters" in r.json()["message"]["error"]["message"]
    r = requests.post(collector.url + "/api/events", params={"accessKey": K1, "bucketKey": "u", "e": digits5000[:2000]})
    assert r.status_code == 204
    got = {e["key"]: e["value"] for e in collector.events("u")}
    assert got == {"a": digits400, "b": "1e999", "c": "-" + "9" * 25, "d": 12, "e": digits5000[:2000]}
    assert requests.get(collector.url + "/api/buckets/u/events", params={"limit": "9" * 400}).status_code == 400


def _raw_request(server: CollectorServer, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_invalid_utf8_in_headers_is_400_not_500(collector: CollectorServer) -> None:
    body = b'{"key":"t","value":1}'
    base = (
        b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        % (collector.port, len(body))
    )
    for hdr in (
        b"X-IS-AccessKey: k\r\nX-IS-BucketKey: b\xff\xfe\r\n",
        b"X-IS-AccessKey: k\xc3\x28\r\nX-IS-BucketKey: b\r\n",
    ):
        answer = _raw_request(collector, base + hdr + b"Connection: close\r\n\r\n", body)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    answer = _raw_request(
        collector,
        base + b"X-IS-AccessKey: k\r\nX-IS-BucketKey: b\r\nUser-Agent: agent\xff\xfe\r\nConnection: close\r\n\r\n",
        body,
    )
    assert answer.startswith(b"HTTP/1.1 204"), answer[:200]
    assert collector.requests_log()[-1]["user_agent"].startswith("agent")
    assert collector.status_counts().get(500) is None


# --------------------------------------------------------------------------- 7. slow connections


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_slow_request_head_is_cut(collector_factory: Any) -> None:
    server = collector_factory(header_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert _closed_by_server(s, 20)
    with socket.create_connection(("127.0.0.1", server.port)) as s:  # not a byte at all
        assert _closed_by_server(s, 20)
    assert requests.get(server.url + "/api/versions").status_code == 200


def test_connection_cap_evicts_slow_heads(collector_factory: Any) -> None:
    server = collector_factory(max_connections=5, header_timeout=60)
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        for s in slow:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # the cap holds 5 connections; a client with a whole request still gets through
        assert requests.get(server.url + "/api/versions", timeout=10).status_code == 200
        assert post(server, {"key": "t", "value": 1}).status_code == 204
        closed = sum(_closed_by_server(s, 0.5) for s in slow)
        assert closed >= 15
    finally:
        for s in slow:
            s.close()


# --------------------------------------------------------------------------- 8. keys off the command line, private files


def _serve(tmp_path: Any, *args: str, env: Optional[Dict[str, str]] = None) -> "tuple[subprocess.Popen, str]":
    e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "isstreamer.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=e,
    )
    line = proc.stdout.readline()  # type: ignore[union-attr]
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        proc.kill()
        raise AssertionError((line, proc.communicate()[1]))
    return proc, m.group(1)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_keys_from_file_and_env_not_on_the_command_line(tmp_path: Any) -> None:
    keyfile = tmp_path / "keys"
    keyfile.write_text("# collector keys\nfile-secret-1\n\nfile-secret-2\n")
    os.chmod(keyfile, 0o600)  # a key file others may read is refused (test_planted_files.py)
    db = tmp_path / "new" / "deeper" / "c.db"
    old_umask = os.umask(0o022)
    try:
        proc, url = _serve(
            tmp_path,
            "--db",
            str(db),
            "--access-key-file",
            str(keyfile),
            env={"ISSTREAMER_COLLECTOR_KEYS": "env-secret-1, env-secret-2"},
        )
    finally:
        os.umask(old_umask)
    try:
        cmdline = open("/proc/%d/cmdline" % proc.pid, "rb").read()
        assert b"secret" not in cmdline
        for key in ("file-secret-1", "file-secret-2", "env-secret-2"):
            r = requests.post(url + "/api/events", json={"key": "t", "value": 1}, headers=h(key, "b"))
            assert r.status_code == 204, key
        assert (
            requests.post(url + "/api/events", json={"key": "t", "value": 1}, headers=h("nope", "b")).status_code == 401
        )
        # 8: the database (events, key hashes) is private to its user
        for path in (db, db.parent / "c.db-wal"):
            assert wait_until(path.exists, 10)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        for d in (db.parent, db.parent.parent):
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    finally:
        _stop(proc)
    out = proc.stdout.read() + proc.stderr.read()  # type: ignore[union-attr]
    assert "secret" not in out


def test_existing_database_is_made_private(tmp_path: Any) -> None:
    db = tmp_path / "old.db"
    sqlite3.connect(str(db)).close()
    os.chmod(db, 0o644)
    with CollectorServer(db_path=str(db)) as server:
        assert post(server, {"key": "t", "value": 1}).status_code == 204
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


def test_host_policy_on_every_interface() -> None:
    import socket as so

    from isstreamer.collector.security import HostPolicy

    policy = HostPolicy("0.0.0.0", 8080)
    name = so.gethostname().lower()
    for ok in ("192.168.1.7:8080", "[::1]:8080", "localhost", name + ":8080", name + ".local:8080", None):
        assert policy.allows(ok), ok
    for bad in ("rebind.attacker.example:8080", "192.168.1.7:8081", "[::1]:80"):
        assert not policy.allows(bad), bad
    assert HostPolicy("127.0.0.1", 80, ["*"]).allows("anything.example")
    assert HostPolicy("::1", 80).allows("[::1]:80") and not HostPolicy("::1", 80).allows("[::2]:80")


@pytest.mark.slow
def test_slow_connections_beyond_the_file_limit(tmp_path: Any) -> None:
    import resource

    def low_file_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    errors = open(tmp_path / "stderr", "w+")  # a file: a full pipe would stall the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "isstreamer.cli", "serve", "--port", "0", "--db", str(tmp_path / "c.db")],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        env=e,
        preexec_fn=low_file_limit,
    )
    slow: list = []
    try:
        m = re.search(r"listening on http://127.0.0.1:(\d+)", proc.stdout.readline())  # type: ignore[union-attr]
        assert m, (tmp_path / "stderr").read_text()
        port = int(m.group(1))
        for _ in range(200):  # more slow connections than the server has file descriptors
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(s)
        r = requests.post(
            "http://127.0.0.1:%d/api/events" % port, data=b'{"key":"t","value":1}', headers=h(bucket="b"), timeout=10
        )
        assert r.status_code == 204
        assert proc.poll() is None, "the collector died"
    finally:
        for s in slow:
            s.close()
        _stop(proc)
        errors.close()
    # (asyncio may still log an EMFILE from accept() while the connections arrive faster than the
    # guard evicts them on a loaded machine; what matters is that the real request was served)
