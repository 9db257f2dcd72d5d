"""Attacks on the collector as a client on its port (issue 20, items 1, 2 and 5), each against a
real ``isstreamer serve`` on 127.0.0.1.

Every attack is bounded in count and time. The tests here assert what holds on a loaded
machine (the legitimate client is served, memory and disk stay bounded); the issue's acceptance
figures (>= 95% of the legitimate requests answered within a second) are measured by the tests
marked ``slow`` at the end, over a longer attack; they run in the slow run:
``python -m pytest -m slow tests/test_collector_attack.py``.
"""

from __future__ import annotations

import gzip
import os
import socket
import time
from typing import Any, Callable, Iterator

import orjson
import pytest
import requests

from attackers import Hogs, Legit, Served
from collector_db import execute

pytestmark = pytest.mark.collector_backends()

KEY = "legit-key"


def legit_write(url: str, key: str = KEY) -> Callable[[float], requests.Response]:
    """A legitimate client's request: one event, on a fresh connection."""

    def request(timeout: float) -> requests.Response:
        return requests.post(
            url + "/api/events",
            data=b'{"key":"t","value":1}',
            timeout=timeout,
            headers={"X-IS-AccessKey": key, "X-IS-BucketKey": "legit", "Connection": "close"},
        )

    return request


@pytest.fixture
def served(tmp_path: Any, collector_backend: str, collector_db: Any) -> Iterator[Callable[..., Served]]:
    """Start ``isstreamer serve`` processes (each on a new database of the test's backend unless
    ``db`` is given); all stopped at teardown."""
    started = []

    def make(*args: str, **kw: Any) -> Served:
        if collector_backend != "sqlite":
            kw.setdefault("db", collector_db())
        server = Served(tmp_path, *args, **kw)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def no_tracebacks(server: Served) -> None:
    log = server.log()
    assert "Traceback" not in log and "Transport is closing" not in log, log[-3000:]


# --------------------------------------------------------------------------- 1. connection slots


def _get(port: int, path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path.encode(), port)


def _slot_attack(server: Served, kind: str) -> Hogs:
    """The three ways of issue 20 item 1 to hold every connection slot (more than the 256 cap)."""
    port = server.port
    if kind == "pipelined":  # pipelined requests whose answers are never read
        return Hogs(port, _get(port, "/static/chart.js") * 200, count=300)
    if kind == "keep-alive":  # idle keep-alive connections sending a request every 8 s
        return Hogs(
            port, _get(port, "/api/versions"), again=_get(port, "/api/versions"), period=8.0, read=True, count=300
        )
    head = (
        b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-IS-AccessKey: hog\r\nX-IS-BucketKey: hog\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n[" % port
    )
    return Hogs(port, head, again=b" ", period=1.0, count=300)  # a body trickled under the body timeout


@pytest.mark.slow
@pytest.mark.collector_backends()
@pytest.mark.parametrize("kind", ["pipelined", "keep-alive", "trickled-body"])
def test_slot_hogs_do_not_lock_out_a_legitimate_client(served: Callable[..., Served], kind: str) -> None:
    server = served()
    hogs = _slot_attack(server, kind)
    hogs.start()
    try:
        time.sleep(3)  # the hogs hold their connections
        legit = Legit(legit_write(server.url), timeout=10).run_for(15)
    finally:
        hogs.stop()
    assert hogs.opened >= 300
    # on a loaded machine: answered, though not necessarily within the second the slow test checks
    assert legit.served(within=10) >= 0.9, legit.report()
    assert server.alive()
    no_tracebacks(server)


# --------------------------------------------------------------------------- 2. bounded work per request


def _tiny_events(n: int, start: int = 0) -> bytes:
    return gzip.compress(orjson.dumps([{"key": "k", "value": start + i} for i in range(n)]), 9)


def _bomblet(n: int) -> bytes:
    """``n`` copies of one small event, gzipped: a few KB on the wire, ``n`` rows in the database."""
    return gzip.compress(b"[" + b",".join([b'{"key":"k","value":1}'] * n) + b"]", 9)


def _post_gzip(url: str, body: bytes, key: str, bucket: str = "bulk", timeout: float = 60) -> requests.Response:
    return requests.post(
        url + "/api/events",
        data=body,
        timeout=timeout,
        headers={"X-IS-AccessKey": key, "X-IS-BucketKey": bucket, "Content-Encoding": "gzip", "Connection": "close"},
    )


def _key_file(tmp_path: Any, *keys: str) -> str:
    path = tmp_path / "keys"
    path.write_text("\n".join(keys) + "\n")
    os.chmod(path, 0o600)
    return str(path)


@pytest.mark.slow
@pytest.mark.collector_backends()
def test_readers_that_never_read_do_not_grow_memory(served: Callable[..., Served], tmp_path: Any) -> None:
    server = served("--access-key-file", _key_file(tmp_path, KEY))
    for i in range(12):  # 420,000 events: ~27 MB of JSON when answered whole
        assert _post_gzip(server.url, _tiny_events(35_000, i * 35_000), KEY, "big").status_code == 204
    ask = b"GET /api/buckets/big/events?limit=1000000 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-IS-AccessKey: %s\r\n\r\n" % (
        server.port,
        KEY.encode(),
    )
    requests.get(server.url + "/api/buckets/big/events", params={"limit": 10}, headers={"X-IS-AccessKey": KEY})
    base = server.rss()
    readers = Hogs(server.port, ask, count=20, top_up=0)
    readers.start()
    peak = base
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            peak = max(peak, server.rss())
            time.sleep(0.1)
    finally:
        readers.stop()
    assert readers.opened == 20
    print("20 readers that never read: RSS %d MB -> peak %d MB" % (base >> 20, peak >> 20))
    assert peak - base < 200 * 2**20, "RSS grew by %d MB" % ((peak - base) >> 20)
    no_tracebacks(server)


def _pages(url: str, **params: Any) -> list:
    """Every page of a listing of events, following ``next``."""
    pages, cursor = [], None
    while True:
        answer = requests.get(url, params=dict(params, **({"cursor": cursor} if cursor else {}))).json()
        pages.append(answer["events"])
        cursor = answer["next"]
        if cursor is None:
            return pages


def test_read_answers_are_pages_with_a_cursor(collector_factory: Any) -> None:
    server = collector_factory(page_size=100)
    t0 = 1_700_000_000.0
    body = [{"key": "k", "value": i, "epoch": t0 + i // 3} for i in range(1050)]  # equal epochs too
    assert (
        requests.post(
            server.url + "/api/events", json=body, headers={"X-IS-AccessKey": KEY, "X-IS-BucketKey": "p"}
        ).status_code
        == 204
    )
    url = server.url + "/api/buckets/p/events"
    first = requests.get(url, params={"limit": 1_000_000}).json()
    assert len(first["events"]) == 100 and first["next"]  # capped at the page size
    pages = _pages(url, limit=1_000_000)
    assert [len(p) for p in pages] == [100] * 10 + [50]
    assert [e["value"] for p in pages for e in p] == list(range(1050))
    back = _pages(url, limit=400, order="desc")
    assert [len(p) for p in back] == [100] * 10 + [50]
    assert [e["value"] for p in reversed(back) for e in p] == list(range(1050))  # each page oldest first
    assert [e["value"] for e in back[0]] == list(range(950, 1050))
    since = _pages(url, limit=30, since=t0 + 100, until=t0 + 109)
    assert [e["value"] for p in since for e in p] == list(range(300, 330))
    for bad in ("x", "1:", ":1", "nan:1", "1e999:3", "1:-2"):
        assert requests.get(url, params={"cursor": bad}).status_code == 400, bad


def test_a_page_ends_near_a_megabyte(collector_factory: Any) -> None:
    server = collector_factory()
    long_value = "v" * 2000
    hdr = {"X-IS-AccessKey": KEY, "X-IS-BucketKey": "long"}
    for _ in range(3):
        body = orjson.dumps([{"key": "k", "value": long_value}] * 450)
        assert requests.post(server.url + "/api/events", data=body, headers=hdr).status_code == 204
    answer = requests.get(server.url + "/api/buckets/long/events", params={"limit": 10_000})
    assert len(answer.content) < 1.2 * 2**20 and answer.json()["next"]
    pages = _pages(server.url + "/api/buckets/long/events", limit=10_000)
    assert sum(len(p) for p in pages) == 1350 and len(pages) == 3


def test_lists_capped_at_the_page_size(collector_factory: Any) -> None:
    server = collector_factory(page_size=5)
    hdr = {"X-IS-AccessKey": KEY}
    for b in range(7):
        body = [{"key": "key%02d" % k, "value": k} for k in range(8)]
        r = requests.post(server.url + "/api/events", json=body, headers=dict(hdr, **{"X-IS-BucketKey": "b%d" % b}))
        assert r.status_code == 204
    listed = requests.get(server.url + "/api/buckets").json()
    assert len(listed["buckets"]) == 5 and listed["truncated"]
    latest = requests.get(server.url + "/api/buckets/b0/latest").json()
    assert [x["key"] for x in latest["latest"]] == ["key%02d" % k for k in range(5)] and latest["truncated"]
    dash = requests.get(server.url + "/api/buckets/b0/dashboard").json()
    assert len(dash["latest"]) == 5 and dash["truncated"] and len(dash["series"]) == 8
    compat = requests.get(
        server.url + "/data/v1/events/latest", params={"key": "key07"}, headers=dict(hdr, **{"X-IS-BucketKey": "b0"})
    )
    assert list(compat.json()) == ["key07"]


def test_dashboard_series_and_their_cache_are_bounded(collector: Any) -> None:
    from isstreamer.collector.app import SeriesCache

    body = [{"key": "key%d" % k, "value": i, "epoch": 1_700_000_000 + i} for k in range(10) for i in range(50)]
    assert (
        requests.post(
            collector.url + "/api/events", json=body, headers={"X-IS-AccessKey": KEY, "X-IS-BucketKey": "wide"}
        ).status_code
        == 204
    )

    def check(session: Any) -> None:
        ids = [b["id"] for b in session.find_buckets("wide")]
        assert len(session.series(ids, 600)) == 10
        assert list(session.series(ids, 600, max_cells=120)) == ["key0", "key1", "key2"]  # 50 columns each

    collector.store.call_read(check).result()
    cache = SeriesCache(size=10, max_cells=100)
    for i in range(5):
        cache.put(((i,), 600), 1, 0.0, 0.0, "series %d" % i, cells=40)
    assert [cache.get(((i,), 600), 1, 0.0) is not None for i in range(5)] == [False, False, False, True, True]


def test_disk_quota_per_key_holder_bounds_gzip_amplification(served: Callable[..., Served]) -> None:
    quota = 16 * 2**20
    server = served("--disk-quota", str(quota))
    body = _bomblet(40_000)  # ~2.2 KB on the wire, ~3 MB in the database
    assert len(body) < 3000
    before = server.disk()
    statuses = [_post_gzip(server.url, body, "amplifier").status_code for _ in range(50)]
    grown = server.disk() - before
    print(
        "50 gzip bodies of %d bytes, quota %d MB: %d stored, disk grew %.1f MB"
        % (len(body), quota >> 20, statuses.count(204), grown / 2**20)
    )
    assert statuses.count(204) >= 2 and statuses[-1] == 507, statuses  # PostgreSQL counts ~7 MB a body
    assert grown <= quota + 8 * 2**20, "the database grew by %d MB" % (grown >> 20)
    assert _post_gzip(server.url, _bomblet(10), "someone-else").status_code == 204  # another key holder
    r = requests.get(server.url + "/api/stats").json()
    assert r["statuses"]["507"] == statuses.count(507)


@pytest.mark.slow
def test_total_database_cap_bounds_rotating_keys(served: Callable[..., Served]) -> None:
    cap = 24 * 2**20
    server = served("--max-db-size", str(cap))
    body = _bomblet(40_000)
    before = server.disk()
    statuses = [_post_gzip(server.url, body, "rotating-%d" % i).status_code for i in range(40)]
    grown = server.disk() - before
    print("40 keys, database cap %d MB: %d stored, disk grew %.1f MB" % (cap >> 20, statuses.count(204), grown / 2**20))
    assert statuses.count(204) >= 2 and statuses[-1] == 507, statuses
    assert grown <= cap + 8 * 2**20
    assert server.alive()
    no_tracebacks(server)


def test_disk_limits_default_in_any_key_mode_only() -> None:
    from isstreamer.collector import limits
    from isstreamer.collector.app import make_config

    any_key = make_config()
    assert (any_key.disk_quota_bytes, any_key.max_db_bytes) == (limits.ANY_KEY_DISK_QUOTA, limits.ANY_KEY_MAX_DB_SIZE)
    keyed = make_config(access_keys=["k"])
    assert (keyed.disk_quota_bytes, keyed.max_db_bytes) == (None, None)
    assert make_config(disk_quota=0, max_db_size=0).disk_quota_bytes is None  # 0: no limit
    assert make_config(access_keys=["k"], disk_quota=5 * 2**20).disk_quota_bytes == 5 * 2**20


def test_serve_options_read_their_defaults_from_limits() -> None:
    from isstreamer.cli import serve
    from isstreamer.collector import limits

    defaults = {p.name: p.default for p in serve.params}
    for name in (
        "max_body",
        "max_key_chars",
        "max_connections",
        "max_per_client",
        "header_timeout",
        "idle_timeout",
        "body_timeout",
        "write_timeout",
        "page_size",
        "log_rows",
        "log_days",
        "workers",
    ):
        assert defaults[name] == getattr(limits, name.upper()), name
    assert defaults["disk_quota"] is None and defaults["max_db_size"] is None  # the mode decides


@pytest.mark.collector_backends("sqlite")  # a database of an older SQLite version
def test_quota_counts_buckets_and_what_an_older_database_holds(collector_factory: Any, tmp_path: Any) -> None:
    import sqlite3

    db = str(tmp_path / "older.db")
    server = collector_factory(db_path=db)
    hdr = {"X-IS-AccessKey": KEY, "X-IS-BucketKey": "b"}
    assert (
        requests.post(
            server.url + "/api/events", json=[{"key": "k", "value": i} for i in range(1000)], headers=hdr
        ).status_code
        == 204
    )
    used = requests.get(server.url + "/api/stats").json()["stored_bytes"]
    assert 1000 * 96 < used < 1000 * 120
    server.stop()
    conn = sqlite3.connect(db)  # as a version without the storage table left it
    conn.execute("DROP TABLE storage")
    conn.commit()
    conn.close()
    again = collector_factory(db_path=db, disk_quota=used + 50_000)
    assert requests.get(again.url + "/api/stats").json()["stored_bytes"] == used  # counted when opened
    r = requests.post(again.url + "/api/events", json=[{"key": "k", "value": i} for i in range(1000)], headers=hdr)
    assert r.status_code == 507 and r.json()["message"]["error"]["type"] == "DISK_QUOTA_EXCEEDED"
    names = [{"bucketKey": "n%d" % i, "bucketName": "x" * 200} for i in range(200)]
    statuses = [
        requests.post(again.url + "/api/buckets", json=b, headers={"X-IS-AccessKey": KEY}).status_code for b in names
    ]
    assert 201 in statuses and statuses[-1] == 507


@pytest.mark.slow
@pytest.mark.collector_backends()
def test_bulk_writers_do_not_starve_a_small_writer(served: Callable[..., Served]) -> None:
    server = served()
    body = _bomblet(45_000)
    assert len(body) < 3000 and len(gzip.decompress(body)) <= 1_000_000
    bulk_times: list = []

    def bulk(n: int) -> Callable[[float], requests.Response]:
        def request(timeout: float) -> requests.Response:
            t0 = time.monotonic()
            r = _post_gzip(server.url, body, "bulk-%d" % n, timeout=timeout)
            bulk_times.append(time.monotonic() - t0)
            return r

        return request

    writers = [Legit(bulk(n), interval=0, timeout=60) for n in range(4)]
    for w in writers:
        w.start()
    try:
        time.sleep(2)
        legit = Legit(legit_write(server.url), timeout=30).run_for(12)
    finally:
        for w in writers:
            w.stop()
    assert all(w.results for w in writers)
    bulk_median = sorted(bulk_times)[len(bulk_times) // 2]
    print("4 bulk writers (median %.3f s a write); the small writer: %s" % (bulk_median, legit.report()))
    # the small write waits for at most the bulk write in progress, not for every queued one
    assert legit.served(within=30) >= 0.95, legit.report()
    assert legit.median() < bulk_median / 2, (legit.report(), bulk_median)


# --------------------------------------------------------------------------- 5. the lows


def test_iso8601_range_checked_like_the_epoch(collector: Any) -> None:
    hdr = {"X-IS-AccessKey": KEY, "X-IS-BucketKey": "iso"}
    for bad in ("9999-12-31T24:00-23:59", "9999-12-31T23:59:59-00:01", "0001-01-01T00:00+00:01"):
        r = requests.post(collector.url + "/api/events", json=[{"key": "t", "value": 1, "iso8601": bad}], headers=hdr)
        assert r.status_code == 400 and "outside years 1-9999" in r.text, (bad, r.text)
    ok = requests.post(
        collector.url + "/api/events", headers=hdr, json=[{"key": "t", "value": 1, "iso8601": "9999-12-31T23:59:59Z"}]
    )
    assert ok.status_code == 204
    r = requests.get(collector.url + "/data/v1/events/latest", headers=hdr)
    assert r.status_code == 200 and r.json()["t"]["date"].startswith("9999-12-31")


def test_latest_of_an_out_of_range_epoch_stored_earlier_is_not_a_500(collector: Any) -> None:
    hdr = {"X-IS-AccessKey": KEY, "X-IS-BucketKey": "old"}
    assert requests.post(collector.url + "/api/events", json={"key": "t", "value": 1}, headers=hdr).status_code == 204
    # what an older version stored for "9999-12-31T24:00-23:59"
    execute(collector.db_path, "UPDATE latest SET epoch = 253402387140.0")
    r = requests.get(collector.url + "/data/v1/events/latest", headers=hdr)
    assert r.status_code == 200 and r.json()["t"]["epoch"] == 253402387140.0


def test_client_gone_mid_body_is_not_a_500(served: Callable[..., Served]) -> None:
    server = served()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(
                b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-IS-AccessKey: k\r\nX-IS-BucketKey: b\r\n"
                b"Content-Length: 1000\r\n\r\n[{\"key\":" % server.port
            )
            time.sleep(0.2)
    time.sleep(1)
    stats = requests.get(server.url + "/api/stats").json()
    assert "500" not in stats["statuses"], stats
    no_tracebacks(server)


def test_invalid_key_bytes_are_counted_not_logged(collector: Any) -> None:
    body = b'{"key":"t","value":1}'
    head = (
        b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\nX-IS-BucketKey: b\r\n"
        b"X-IS-AccessKey: k\xc3\x28\r\nConnection: close\r\n\r\n" % (collector.port, len(body))
    )
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", collector.port), timeout=10) as s:
            s.sendall(head + body)
            answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert collector.requests_log() == []  # no key accepted: nothing stored, as the README says
    assert collector.status_counts() == {400: 5}


def test_serve_announces_its_real_address_and_warns_beyond_loopback(
    served: Callable[..., Served], tmp_path: Any
) -> None:
    exposed = served("--host", "0.0.0.0")
    assert exposed.url.startswith("http://0.0.0.0:")
    assert requests.get(exposed.url + "/api/versions", timeout=10).status_code == 200
    assert "any-key mode" in exposed.log() and "warning" in exposed.log().lower()
    keyed = served("--host", "0.0.0.0", "--access-key-file", _key_file(tmp_path, KEY), db=str(tmp_path / "k.db"))
    assert "warning" not in keyed.log().lower()
    local = served(db=str(tmp_path / "l.db"))
    assert local.url.startswith("http://127.0.0.1:") and "warning" not in local.log().lower()


# --------------------------------------------------------------------------- the acceptance figures (slow)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pipelined", "keep-alive", "trickled-body", "bulk-writers"])
def test_acceptance_legitimate_client_served_within_a_second(served: Callable[..., Served], kind: str) -> None:
    """Issue 20: >= 95% of the legitimate client's requests answered within a second while the
    attack runs (25 s of it, after the attackers have settled: about 100 requests)."""
    # this measures who waits for whom, not the disk cap (test_total_database_cap_bounds_rotating_keys covers it): on
    # PostgreSQL the bulk writers fill the default 1 GiB within the run, and a full database
    # refuses everyone (507), the legitimate client too
    server = served("--max-db-size", "0") if kind == "bulk-writers" else served()
    stop: Callable[[], None]
    if kind == "bulk-writers":
        body = _bomblet(45_000)
        writers = [
            Legit(lambda t, n=n: _post_gzip(server.url, body, "bulk-%d" % n, timeout=t), interval=0, timeout=60)
            for n in range(4)
        ]
        for w in writers:
            w.start()

        def stop() -> None:
            for w in writers:
                w.stop()
    else:
        hogs = _slot_attack(server, kind)
        hogs.start()
        stop = hogs.stop
    try:
        time.sleep(5)
        legit = Legit(legit_write(server.url), timeout=10).run_for(25)
    finally:
        stop()
    print("%s: %s, %.1f%% within 1 s" % (kind, legit.report(), 100 * legit.served(within=1.0)))
    assert legit.served(within=1.0) >= 0.95, legit.report()
