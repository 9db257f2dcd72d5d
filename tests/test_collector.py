"""The local collector over real HTTP (requests against a CollectorServer), plus `isstreamer serve`."""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Optional

import orjson
import pytest
import requests

from isstreamer.collector.server import CollectorServer

from collector_db import stored_text

pytestmark = pytest.mark.collector_backends()

AK = "ist_test_access_key"


def headers(bucket: Optional[str] = "b", access_key: Optional[str] = AK, **extra: str) -> Dict[str, str]:
    h = {"Content-Type": "application/json", "Accept-Version": "<=0.0.4"}
    if access_key is not None:
        h["X-IS-AccessKey"] = access_key
    if bucket is not None:
        h["X-IS-BucketKey"] = bucket
    h.update(extra)
    return h


def post_events(
    server: CollectorServer, body: Any, bucket: str = "b", access_key: Optional[str] = AK, **kw: Any
) -> requests.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(server.url + "/api/events", data=data, headers=headers(bucket, access_key), **kw)


def create_bucket(server: CollectorServer, body: Any, access_key: Optional[str] = AK) -> requests.Response:
    return requests.post(server.url + "/api/buckets", data=orjson.dumps(body), headers=headers(None, access_key))


def error_type(resp: requests.Response) -> str:
    return resp.json()["message"]["error"]["type"]


# --------------------------------------------------------------------------- buckets


def test_create_bucket_201_then_204(collector: CollectorServer) -> None:
    r = create_bucket(collector, {"bucketKey": "b", "bucketName": "My Bucket", "tags": ["x"]})
    assert r.status_code == 201
    assert r.json() == {"bucketKey": "b", "bucketName": "My Bucket"}
    r = create_bucket(collector, {"bucketKey": "b", "bucketName": "Renamed"})
    assert r.status_code == 204 and r.content == b""
    [b] = collector.buckets()
    assert (b["key"], b["name"], b["auto_created"], b["tags"], b["event_count"]) == ("b", "My Bucket", False, ["x"], 0)
    assert [row["status"] for row in collector.requests_log()] == [201, 204]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"bucketName": "n"},
        {"bucketKey": ""},
        {"bucketKey": "a" * 251},
        {"bucketKey": "a:b"},
        {"bucketKey": 'a"b'},
        {"bucketKey": "a'b"},
        {"bucketKey": 5},
    ],
)
def test_create_bucket_invalid_key_400(collector: CollectorServer, body: Dict[str, Any]) -> None:
    r = create_bucket(collector, body)
    assert r.status_code == 400
    assert error_type(r) == "INVALID_BUCKET_KEY"
    assert collector.buckets() == []


def test_create_bucket_limits_and_401(collector: CollectorServer) -> None:
    assert create_bucket(collector, {"bucketKey": "a" * 250}).status_code == 201
    assert create_bucket(collector, {"bucketKey": "n", "bucketName": "x" * 251}).status_code == 400
    assert requests.post(collector.url + "/api/buckets", data=b"{nope", headers=headers(None)).status_code == 400
    r = create_bucket(collector, {"bucketKey": "k"}, access_key=None)
    assert r.status_code == 401 and error_type(r) == "UNAUTHORIZED"


def test_buckets_are_scoped_per_access_key(collector: CollectorServer) -> None:
    assert create_bucket(collector, {"bucketKey": "shared"}, access_key="one").status_code == 201
    assert create_bucket(collector, {"bucketKey": "shared"}, access_key="two").status_code == 201
    owners = {b["owner"] for b in collector.buckets()}
    assert len(owners) == 2 and all("one" not in o and "two" not in o for o in owners)
    raw = stored_text(collector.db_path)
    assert b"ist_test" not in raw and AK.encode() not in raw


# --------------------------------------------------------------------------- events: success


def test_events_array_and_single_object_204(collector: CollectorServer) -> None:
    assert create_bucket(collector, {"bucketKey": "b"}).status_code == 201
    r = post_events(collector, [{"key": "a", "value": 1}, {"key": "b", "value": 2}])
    assert r.status_code == 204 and r.content == b""
    assert post_events(collector, {"key": "c", "value": 3}).status_code == 204
    assert post_events(collector, []).status_code == 204
    evs = collector.events("b")
    assert [(e["bucket"], e["key"], e["value"]) for e in evs] == [("b", "a", 1), ("b", "b", 2), ("b", "c", 3)]
    assert collector.event_count() == 3 and collector.event_count("b") == 3 and collector.event_count("zz") == 0
    assert collector.buckets()[0]["auto_created"] is False


def test_value_types_preserved_exactly(collector: CollectorServer) -> None:
    values = [21, 21.0, "21", True, False, -0.5, 1e20, 0, "", "héllo ☃", "x" * 2000, 2**53 + 1]
    assert post_events(collector, [{"key": "k%d" % i, "value": v} for i, v in enumerate(values)]).status_code == 204
    got = [e["value"] for e in collector.events()]
    assert got == values
    assert [type(v) for v in got] == [type(v) for v in values]


def test_timestamps(collector: CollectorServer) -> None:
    before = time.time()
    body = [
        {"key": "epoch", "value": 1, "epoch": 1700000000.25},
        {"key": "iso", "value": 1, "iso8601": "2023-11-14T22:13:20.5Z"},
        {"key": "both", "value": 1, "epoch": 1700000001, "iso8601": "2001-01-01T00:00:00Z"},
        {"key": "offset", "value": 1, "iso8601": "2023-11-14T23:13:20+01:00"},
        {"key": "none", "value": 1},
        {"key": "ancient", "value": 1, "epoch": 1000.0},
    ]
    assert post_events(collector, body).status_code == 204
    after = time.time()
    ep = {e["key"]: e["epoch"] for e in collector.events()}
    assert ep["epoch"] == 1700000000.25
    assert ep["iso"] == 1700000000.5
    assert ep["both"] == 1700000001.0
    assert ep["offset"] == 1700000000.0
    assert before <= ep["none"] <= after
    assert before <= ep["ancient"] <= after  # ten or more years old: ignored, stamped now


def test_gzip_body(collector: CollectorServer) -> None:
    body = gzip.compress(orjson.dumps([{"key": "z", "value": i} for i in range(500)]))
    r = requests.post(collector.url + "/api/events", data=body, headers=headers(**{"Content-Encoding": "gzip"}))
    assert r.status_code == 204
    assert collector.event_count() == 500
    log = collector.requests_log()[-1]
    assert log["content_encoding"] == "gzip" and log["body_bytes"] == len(body) and log["events"] == 500


def test_bad_gzip_body_400(collector: CollectorServer) -> None:
    r = requests.post(collector.url + "/api/events", data=b"not gzip", headers=headers(**{"Content-Encoding": "gzip"}))
    assert r.status_code == 400 and error_type(r) == "INVALID_BODY"


def test_url_parameter_variant(collector: CollectorServer) -> None:
    before = time.time()
    params = {
        "accessKey": AK,
        "bucketKey": "urlb",
        "temperature": "21.5",
        "count": "3",
        "door": "open",
        "on": "true",
        "off": "false",
        "zip": "007",
        "neg": "-2e3",
    }
    r = requests.get(collector.url + "/api/events", params=params)
    assert r.status_code == 204
    r = requests.post(collector.url + "/api/events", params={"accessKey": AK, "bucketKey": "urlb", "post": "1"})
    assert r.status_code == 204
    got = {e["key"]: e["value"] for e in collector.events("urlb")}
    assert got == {
        "temperature": 21.5,
        "count": 3,
        "door": "open",
        "on": True,
        "off": False,
        "zip": "007",
        "neg": -2000.0,
        "post": 1,
    }
    assert all(e["epoch"] >= before for e in collector.events("urlb"))
    r = requests.get(collector.url + "/api/events", params={"accessKey": AK, "bucketKey": "urlb"})
    assert r.status_code == 400


def test_accept_version_and_headers_recorded(collector: CollectorServer) -> None:
    r = requests.post(
        collector.url + "/api/events",
        data=b'{"key":"a","value":1}',
        headers=headers(**{"Accept-Version": "~0", "User-Agent": "PyStreamer v2.0.0"}),
    )
    assert r.status_code == 204 and r.headers["X-Request-Id"]
    log = collector.requests_log()[-1]
    assert (log["accept_version"], log["user_agent"], log["content_type"]) == (
        "~0",
        "PyStreamer v2.0.0",
        "application/json",
    )
    assert log["bucket_key"] == "b" and log["request_uid"] == r.headers["X-Request-Id"]
    assert collector.events()[0]["request_id"] == log["id"]


def test_auto_created_bucket(collector: CollectorServer) -> None:
    assert post_events(collector, {"key": "a", "value": 1}, bucket="never-created").status_code == 204
    [b] = collector.buckets()
    assert b["key"] == "never-created" and b["auto_created"] is True and b["event_count"] == 1
    assert create_bucket(collector, {"bucketKey": "never-created", "bucketName": "Late"}).status_code == 204
    assert collector.buckets()[0]["auto_created"] is True  # still shows the client created it late


def test_concurrent_clients(collector: CollectorServer) -> None:
    def client(n: int) -> None:
        with requests.Session() as s:
            for j in range(10):
                body = orjson.dumps([{"key": "c%d" % n, "value": j * 100 + i} for i in range(100)])
                assert s.post(collector.url + "/api/events", data=body, headers=headers("conc")).status_code == 204

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert collector.event_count("conc") == 6000
    for n in range(6):
        assert [e["value"] for e in collector.events("conc") if e["key"] == "c%d" % n] == list(range(1000))


# --------------------------------------------------------------------------- events: errors


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        {"value": 1},
        {"key": "", "value": 1},
        {"key": 5, "value": 1},
        {"key": "k" * 251, "value": 1},
        {"key": "k"},
        {"key": "k", "value": None},
        {"key": "k", "value": {"a": 1}},
        {"key": "k", "value": [1]},
        {"key": "k", "value": "x" * 2001},
        {"key": "k", "value": 1, "epoch": "soon"},
        {"key": "k", "value": 1, "epoch": 1e300},
        {"key": "k", "value": 1, "epoch": "1e300"},
        {"key": "k", "value": 1, "epoch": True},
        {"key": "k", "value": 1, "iso8601": "yesterday"},
        {"key": "k", "value": 1, "iso8601": 1700000000},
    ],
)
def test_invalid_event_400_all_or_nothing(collector: CollectorServer, bad: Any) -> None:
    body = [{"key": "ok", "value": 1}, {"key": "ok", "value": 2}, bad, {"key": "k", "value": {}}]
    r = post_events(collector, body)
    assert r.status_code == 400
    err = r.json()["message"]["error"]
    assert err["type"] == "INVALID_EVENT" and err["index"] == 2 and err["message"]
    assert collector.event_count() == 0
    assert collector.status_counts() == {400: 1}


def test_key_limit_is_configurable(collector_factory: Any) -> None:
    server = collector_factory(max_key_chars=100)
    assert post_events(server, {"key": "k" * 100, "value": 1}).status_code == 204
    r = post_events(server, {"key": "k" * 101, "value": 1})
    assert r.status_code == 400 and r.json()["message"]["error"]["index"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b'[{"key":"a","value":NaN}]',
        b'{"key":"a","value":Infinity}',
        b'{"key":"a","value":-Infinity}',
        b'{"key":"a",',
        b"",
        b"42",
    ],
)
def test_invalid_json_400(collector: CollectorServer, body: bytes) -> None:
    r = post_events(collector, body)
    assert r.status_code == 400
    assert error_type(r) in ("INVALID_JSON", "INVALID_EVENT")
    assert collector.event_count() == 0


def test_missing_bucket_key_400(collector: CollectorServer) -> None:
    r = requests.post(collector.url + "/api/events", data=b'{"key":"a","value":1}', headers=headers(bucket=None))
    assert r.status_code == 400 and error_type(r) == "INVALID_BUCKET_KEY"


def test_401_missing_or_unknown_access_key(collector_factory: Any) -> None:
    server = collector_factory(access_keys=["good"])
    assert post_events(server, {"key": "a", "value": 1}, access_key=None).status_code == 401
    r = post_events(server, {"key": "a", "value": 1}, access_key="bad")
    assert r.status_code == 401 and error_type(r) == "UNAUTHORIZED"
    assert create_bucket(server, {"bucketKey": "b"}, access_key="bad").status_code == 401
    assert post_events(server, {"key": "a", "value": 1}, access_key="good").status_code == 204
    r = requests.post(
        server.url + "/api/events", params={"accessKey": "good", "bucketKey": "b"}, data=b'{"key":"a","value":2}'
    )
    assert r.status_code == 204
    assert server.event_count() == 2
    assert server.status_counts() == {401: 3, 204: 2}


def test_any_key_accepted_when_none_configured(collector: CollectorServer) -> None:
    assert post_events(collector, {"key": "a", "value": 1}, access_key="whatever").status_code == 204
    assert post_events(collector, {"key": "a", "value": 1}, access_key="").status_code == 401


def test_bucket_removed_400(collector: CollectorServer) -> None:
    assert create_bucket(collector, {"bucketKey": "b"}).status_code == 201
    assert post_events(collector, {"key": "a", "value": 1}).status_code == 204
    assert collector.remove_bucket("b") == 1
    r = post_events(collector, {"key": "a", "value": 2})
    assert r.status_code == 400 and error_type(r) == "BUCKET_REMOVED"
    assert create_bucket(collector, {"bucketKey": "b"}).status_code == 400
    assert collector.event_count() == 1 and collector.buckets()[0]["removed"] is True
    # DELETE with the owning key does the same
    assert post_events(collector, {"key": "a", "value": 1}, bucket="c").status_code == 204
    assert requests.delete(collector.url + "/api/buckets/c", headers=headers(None)).status_code == 204
    assert requests.delete(collector.url + "/api/buckets/nope", headers=headers(None)).status_code == 404
    assert error_type(post_events(collector, {"key": "a", "value": 1}, bucket="c")) == "BUCKET_REMOVED"


def test_body_over_limit_413(collector_factory: Any) -> None:
    server = collector_factory(max_body=10_000)
    big = orjson.dumps([{"key": "k", "value": "x" * 100} for _ in range(200)])
    assert len(big) > 10_000
    r = post_events(server, big)
    assert r.status_code == 413 and error_type(r) == "PAYLOAD_TOO_LARGE"
    r = requests.post(
        server.url + "/api/events", data=gzip.compress(big), headers=headers(**{"Content-Encoding": "gzip"})
    )
    assert r.status_code == 413  # the limit applies to the decoded body
    fits = orjson.dumps([{"key": "k", "value": "x" * 100} for _ in range(50)])
    assert post_events(server, fits).status_code == 204
    assert server.event_count() == 50


def test_default_body_limit_is_one_megabyte(collector: CollectorServer) -> None:
    big = orjson.dumps({"key": "k", "value": "v", "pad": "x" * 1_000_001})
    assert post_events(collector, big).status_code == 413


def test_rate_limit_429(collector_factory: Any) -> None:
    server = collector_factory(rate_limit=(3, 30))
    before = time.time()
    for remaining in (2, 1, 0):
        r = post_events(server, {"key": "a", "value": 1})
        assert r.status_code == 204
        assert r.headers["X-RateLimit-Limit"] == "3"
        assert r.headers["X-RateLimit-Remaining"] == str(remaining)
    r = post_events(server, {"key": "a", "value": 1})
    assert r.status_code == 429 and error_type(r) == "RATE_LIMITED"
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 30
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert before + 29 <= int(r.headers["X-RateLimit-Reset"]) <= time.time() + 31
    assert server.event_count() == 3
    # another access key has its own budget
    assert post_events(server, {"key": "a", "value": 1}, access_key="other").status_code == 204


def test_rate_limit_window_resets(collector_factory: Any) -> None:
    server = collector_factory(rate_limit=(1, 0.3))
    assert post_events(server, {"key": "a", "value": 1}).status_code == 204
    r = post_events(server, {"key": "a", "value": 1})
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    time.sleep(0.35)
    assert post_events(server, {"key": "a", "value": 1}).status_code == 204


def test_monthly_quota_402(collector_factory: Any) -> None:
    server = collector_factory(monthly_quota=5)
    assert post_events(server, [{"key": "a", "value": i} for i in range(3)]).status_code == 204
    r = post_events(server, [{"key": "a", "value": i} for i in range(3)])
    assert r.status_code == 402
    # the hosted API's documented shape: {"message": "Event limit exceeded for current cycle..."}
    assert list(r.json()) == ["message"] and r.json()["message"].startswith("Event limit exceeded for current cycle")
    assert r.headers["X-RateLimit-Limit"]
    assert post_events(server, [{"key": "a", "value": i} for i in range(2)]).status_code == 204
    assert post_events(server, {"key": "a", "value": 1}).status_code == 402
    assert post_events(server, {"key": "a", "value": 1}, access_key="other").status_code == 204
    assert server.event_count() == 6
    assert server.status_counts() == {204: 3, 402: 2}


def test_unknown_api_path_is_json_404(collector: CollectorServer) -> None:
    r = requests.get(collector.url + "/api/nope")
    assert r.status_code == 404 and error_type(r) == "NOT_FOUND"


# --------------------------------------------------------------------------- read API


def test_read_api(collector: CollectorServer) -> None:
    assert create_bucket(collector, {"bucketKey": "r", "bucketName": "Reads"}).status_code == 201
    body = [{"key": "t", "value": float(i), "epoch": 1700000000 + i} for i in range(10)]
    body += [{"key": "s", "value": "late", "epoch": 1700000100}, {"key": "s", "value": "early", "epoch": 1700000050}]
    assert post_events(collector, body, bucket="r").status_code == 204

    [b] = requests.get(collector.url + "/api/buckets").json()["buckets"]
    assert (b["key"], b["name"], b["auto_created"], b["event_count"]) == ("r", "Reads", False, 12)
    assert b["created"] <= b["last_update"]

    latest = requests.get(collector.url + "/api/buckets/r/latest").json()
    assert latest["bucket"]["key"] == "r"
    assert {x["key"]: (x["value"], x["count"]) for x in latest["latest"]} == {"s": ("late", 2), "t": (9.0, 10)}

    url = collector.url + "/api/buckets/r/events"
    evs = requests.get(url, params={"key": "t", "since": 1700000002, "until": 1700000005}).json()["events"]
    assert [e["value"] for e in evs] == [2.0, 3.0, 4.0, 5.0]
    evs = requests.get(url, params={"key": "t", "limit": 3, "order": "desc"}).json()["events"]
    assert [e["value"] for e in evs] == [7.0, 8.0, 9.0]
    evs = requests.get(url).json()["events"]
    assert [e["epoch"] for e in evs] == sorted(e["epoch"] for e in evs) and len(evs) == 12
    assert requests.get(url, params={"since": "x"}).status_code == 400
    assert requests.get(collector.url + "/api/buckets/nope/latest").status_code == 404

    stats = requests.get(collector.url + "/api/stats").json()
    assert stats["events"] == 12 and stats["buckets"] == 1
    assert stats["requests"] == 2 and stats["statuses"] == {"201": 1, "204": 1}
    assert requests.get(collector.url + "/api/versions").json()[-1] == "0.0.4"

    compat = requests.get(collector.url + "/data/v1/events/latest", params={"key": "s"}, headers=headers("r")).json()
    assert compat == {"s": {"value": "late", "epoch": 1700000100.0, "date": "2023-11-14T22:15:00Z"}}
    assert (
        requests.get(collector.url + "/data/v1/events/latest", headers=headers("r", access_key=None)).status_code == 401
    )


def test_bucket_key_with_slash_and_space(collector: CollectorServer) -> None:
    key = "home/living room"
    assert post_events(collector, {"key": "t", "value": 1}, bucket=key).status_code == 204
    r = requests.get(collector.url + "/api/buckets/" + requests.utils.quote(key, safe="") + "/latest")
    assert r.status_code == 200 and r.json()["bucket"]["key"] == key


def test_pages_served(collector: CollectorServer) -> None:
    for path in ("/", "/dashboard/anything", "/static/dashboard.js", "/static/chart.js", "/static/style.css"):
        assert requests.get(collector.url + path).status_code == 200, path


# --------------------------------------------------------------------------- lifecycle


def test_stop_finishes_in_flight_request(collector_factory: Any, hold_writers: Any) -> None:
    server = collector_factory()
    gate = threading.Event()
    hold_writers(server, gate)  # the next POST stays in flight
    replies: list = []
    poster = threading.Thread(
        target=lambda: replies.append(post_events(server, [{"key": "f", "value": i} for i in range(100)]))
    )
    poster.start()
    time.sleep(0.2)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.2)
    assert stopper.is_alive() and not replies  # stop() waits for the request
    gate.set()
    poster.join(10)
    stopper.join(10)
    assert not stopper.is_alive()
    assert replies[0].status_code == 204
    assert server.event_count() == 100
    assert not server.running
    with pytest.raises(requests.ConnectionError):
        requests.get("http://127.0.0.1:%d/api/stats" % server.port, timeout=2)


def test_context_manager_and_reuse_of_db(collector_db: Any) -> None:
    db = collector_db()
    with CollectorServer(db_path=db) as s:
        assert s.url.startswith("http://127.0.0.1:")
        assert post_events(s, {"key": "a", "value": 1}).status_code == 204
    with CollectorServer(db_path=db) as s:
        assert post_events(s, {"key": "a", "value": 2}).status_code == 204
        assert [e["value"] for e in s.events()] == [1, 2]


def test_isstreamer_serve_subprocess(tmp_path: Any, collector_backend: str, collector_db: Any) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    db = tmp_path / "state" / "serve.db" if collector_backend == "sqlite" else collector_db()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "isstreamer.cli",
            "serve",
            "--port",
            "0",
            "--db",
            str(db),
            "--access-key",
            "secret",
            "--rate-limit",
            "100/10",
            "--monthly-quota",
            "1000",
            "--max-body",
            "50000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        m = re.search(r"listening on (http://\S+)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        url = m.group(1)
        h = {"X-IS-AccessKey": "secret", "X-IS-BucketKey": "cli"}
        assert (
            requests.post(
                url + "/api/buckets", json={"bucketKey": "cli"}, headers={"X-IS-AccessKey": "secret"}
            ).status_code
            == 201
        )
        r = requests.post(url + "/api/events", json=[{"key": "x", "value": 1.5}], headers=h)
        assert r.status_code == 204 and r.headers["X-RateLimit-Limit"] == "100"
        assert (
            requests.post(
                url + "/api/events", json={"key": "x", "value": 1}, headers={**h, "X-IS-AccessKey": "no"}
            ).status_code
            == 401
        )
        assert requests.post(url + "/api/events", data=b"[" + b" " * 60000 + b"]", headers=h).status_code == 413
        assert requests.get(url + "/api/buckets/cli/latest").status_code == 401  # keys configured: reads need one
        latest = requests.get(url + "/api/buckets/cli/latest", headers=h).json()["latest"]
        assert latest[0]["key"] == "x" and latest[0]["value"] == 1.5
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    from isstreamer.collector import store

    assert [e["value"] for e in store.read_events(str(db))] == [1.5]


def test_dashboard_endpoint_reduces_to_min_max_columns(collector: CollectorServer) -> None:
    t0 = 1_700_000_000.0
    body = [{"key": "wave", "value": (i % 10) - (100 if i == 555 else 0), "epoch": t0 + i} for i in range(1000)]
    body += [
        {"key": "late", "value": 1.5, "epoch": t0 + 5000},
        {"key": "late", "value": 2.5, "epoch": t0 + 5010},
        {"key": "door", "value": "open", "epoch": t0},
    ]
    assert post_events(collector, body, bucket="dash").status_code == 204
    url = collector.url + "/api/buckets/dash/dashboard"
    d = requests.get(url, params={"columns": 100}).json()
    assert d["bucket"]["event_count"] == 1003 and d["series_count"] == 1003
    assert {x["key"] for x in d["latest"]} == {"wave", "late", "door"}
    assert set(d["series"]) == {"wave", "late"}  # the string key is not charted
    wave = d["series"]["wave"]
    assert (wave["t0"], wave["t1"], wave["count"]) == (t0, t0 + 999, 1000)
    assert len(wave["columns"]) == 100 and sum(c[4] for c in wave["columns"]) == 1000
    assert all((c[2], c[3]) in ((0, 9), (-95, 9)) for c in wave["columns"])  # every column keeps min and max
    assert min(c[2] for c in wave["columns"]) == -95  # the one spike survives the reduction
    late = d["series"]["late"]
    assert (late["t0"], late["t1"], [c[2:] for c in late["columns"]]) == (
        t0 + 5000,
        t0 + 5010,
        [[1.5, 1.5, 1], [2.5, 2.5, 1]],
    )
    same = requests.get(url, params={"columns": 100, "known": 1003}).json()
    assert "series" not in same and len(same["latest"]) == 3
    assert requests.get(url, params={"columns": "x"}).status_code == 400
    assert requests.get(collector.url + "/api/buckets/none/dashboard").status_code == 404


def test_series_cache_bounds_recomputation() -> None:
    from isstreamer.collector.app import SeriesCache

    cache = SeriesCache(size=2, min_interval=1.0, cost_factor=4.0)
    key = ((1,), 600)
    assert cache.get(key, 10, 100.0) is None
    cache.put(key, 10, 100.0, 0.5, "s10")
    assert cache.get(key, 10, 500.0) == (10, "s10")  # same count: always reusable
    assert cache.get(key, 11, 101.9) == (10, "s10")  # changed, but computed 1.9 s ago at a cost of 0.5 s
    assert cache.get(key, 11, 102.1) is None  # 4 x 0.5 s passed: recompute
    cache.put(((2,), 600), 1, 0.0, 0.0, "b")
    cache.put(((3,), 600), 1, 0.0, 0.0, "c")
    assert cache.get(key, 10, 100.0) is None  # evicted (size 2)
