"""Request forms and answers of Initial State's public events API documentation (issue 12, item 9),
against a real collector; the ISO 8601 parser on this Python and on Python 3.9."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, List, Optional

import orjson
import pytest
import requests

from isstreamer.collector.iso8601 import parse_iso8601
from isstreamer.collector.server import CollectorServer

from support import ROOT

pytestmark = pytest.mark.collector_backends()

AK = "ist_fakee8do2JQN3Eos8Ah2FS8uiFD3Ola2"


def test_bucket_creation_url_parameter_form(collector: CollectorServer) -> None:
    # curl --request POST 'https://groker.initialstate.com/api/buckets?accessKey=..&bucketKey=..&bucketName=..'
    params = {"accessKey": AK, "bucketKey": "curl_example_bucket", "bucketName": "cURL Example Bucket"}
    r = requests.post(collector.url + "/api/buckets", params=params)
    assert r.status_code == 201, r.text
    assert r.json() == {"bucketKey": "curl_example_bucket", "bucketName": "cURL Example Bucket"}
    assert requests.post(collector.url + "/api/buckets", params=params).status_code == 204
    [b] = collector.buckets()
    assert (b["key"], b["name"], b["auto_created"]) == ("curl_example_bucket", "cURL Example Bucket", False)
    r = requests.post(collector.url + "/api/buckets", params={"accessKey": AK, "bucketKey": "a:b"})
    assert r.status_code == 400 and r.json()["message"]["error"]["type"] == "INVALID_BUCKET_KEY"
    assert requests.post(collector.url + "/api/buckets", params={"bucketKey": "nokey"}).status_code == 401


def test_numeric_string_epochs_accepted(collector: CollectorServer) -> None:
    # Initial State's Node client sends every epoch as a string
    now = time.time()
    body = [
        {"key": "temperature", "value": "25.4", "epoch": "%.6f" % (now - 60)},
        {"key": "temperature", "value": 26, "epoch": str(int(now - 30))},
        {"key": "temperature", "value": 27.5, "epoch": now - 10},
    ]
    r = requests.post(
        collector.url + "/api/events",
        data=orjson.dumps(body),
        headers={"X-IS-AccessKey": AK, "X-IS-BucketKey": "node", "Content-Type": "application/json"},
    )
    assert r.status_code == 204, r.text
    got = [(e["value"], e["epoch"]) for e in collector.events("node")]
    assert got == [("25.4", float("%.6f" % (now - 60))), (26, float(int(now - 30))), (27.5, now - 10)]


def test_rate_limit_headers_on_every_events_answer(collector: CollectorServer) -> None:
    hdr = {"X-IS-AccessKey": AK, "X-IS-BucketKey": "rl", "Content-Type": "application/json"}
    answers = [
        requests.post(collector.url + "/api/events", data=b'{"key":"a","value":1}', headers=hdr),
        requests.post(collector.url + "/api/events", data=b'{"key":"a"}', headers=hdr),
        requests.get(collector.url + "/api/events", params={"accessKey": AK, "bucketKey": "rl", "b": "2"}),
    ]
    assert [r.status_code for r in answers] == [204, 400, 204]
    for r in answers:
        limit, remaining, reset = (
            int(r.headers[h]) for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
        )
        assert 0 <= remaining < limit and reset >= time.time() - 1
    assert int(answers[2].headers["X-RateLimit-Remaining"]) == int(answers[0].headers["X-RateLimit-Remaining"]) - 2


def test_402_body_shape(collector_factory: Any) -> None:
    server = collector_factory(monthly_quota=1)
    hdr = {"X-IS-AccessKey": AK, "X-IS-BucketKey": "q", "Content-Type": "application/json"}
    assert requests.post(server.url + "/api/events", data=b'{"key":"a","value":1}', headers=hdr).status_code == 204
    r = requests.post(server.url + "/api/events", data=b'{"key":"a","value":2}', headers=hdr)
    assert r.status_code == 402 and r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"message"} and isinstance(body["message"], str)
    assert body["message"].startswith("Event limit exceeded for current cycle")


# --------------------------------------------------------------------------- ISO 8601

#: (text, epoch) the collector must accept the same way on every supported Python.
ISO_CASES = [
    ("2015-10-08T07:54+06:00", 1444269240.0),  # the documentation's own example
    ("2023-11-14T22:13:20Z", 1700000000.0),
    ("2023-11-14T22:13:20.5Z", 1700000000.5),
    ("2023-11-14T22:13:20.123456789Z", 1700000000.123456789),
    ("2023-11-14T22:13:20,25z", 1700000000.25),
    ("2023-11-14t22:13:20", 1700000000.0),
    ("2023-11-14 22:13:20+00:00", 1700000000.0),
    ("2023-11-14T23:13:20+0100", 1700000000.0),
    ("2023-11-14T17:13:20-05", 1700000000.0),
    ("20231114T221320Z", 1700000000.0),
    ("2023-11-14T22:13", 1699999980.0),
    ("2023-11-14T22", 1699999200.0),
    ("2023-11-14T22.5Z", 1700001000.0),
    ("2023-11-14", 1699920000.0),
    ("2023-11-14T24:00:00Z", 1700006400.0),
    ("2024-02-29T00:00:00Z", 1709164800.0),
]
ISO_BAD = [
    "yesterday",
    "2023-02-29",
    "2023-13-01",
    "2023-11-14T25:00",
    "2023-11-14T22:60",
    "2023-11-14T23:59:60Z",
    "2023-11-14T22:13:20+24:00",
    "2023-W46-2",
    "2023-318",
    "2023-11-14T24:00:01",
    "2023-1114",
    "",
    "0000-01-01",
]


@pytest.mark.parametrize("text,epoch", ISO_CASES)
def test_iso8601_forms(text: str, epoch: float) -> None:
    assert parse_iso8601(text) == pytest.approx(epoch, abs=1e-6)


@pytest.mark.parametrize("text", ISO_BAD)
def test_iso8601_refused(text: str) -> None:
    assert parse_iso8601(text) is None


def test_iso8601_stored_through_the_api(collector_factory: Any) -> None:
    server = collector_factory(ignore_old_timestamps=False)
    body = [{"key": "k%d" % i, "value": i, "iso8601": text} for i, (text, _) in enumerate(ISO_CASES)]
    r = requests.post(
        server.url + "/api/events",
        data=orjson.dumps(body),
        headers={"X-IS-AccessKey": AK, "X-IS-BucketKey": "iso", "Content-Type": "application/json"},
    )
    assert r.status_code == 204, r.text
    got = {e["key"]: e["epoch"] for e in server.events("iso")}
    assert got == {"k%d" % i: pytest.approx(ep, abs=1e-6) for i, (_, ep) in enumerate(ISO_CASES)}
    bad = [{"key": "x", "value": 1, "iso8601": "2023-02-29T00:00:00Z"}]
    r = requests.post(
        server.url + "/api/events",
        data=orjson.dumps(bad),
        headers={"X-IS-AccessKey": AK, "X-IS-BucketKey": "iso", "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "iso8601" in r.json()["message"]["error"]["message"]


def _python39() -> Optional[str]:
    for candidate in (os.environ.get("ISSTREAMER_PYTHON39"), os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def test_iso8601_same_on_python_39() -> None:
    exe = _python39()
    if exe is None:
        pytest.skip("no Python 3.9 interpreter (set ISSTREAMER_PYTHON39)")
    script = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('iso', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(json.dumps([sys.version_info[:2], [m.parse_iso8601(t) for t in json.loads(sys.argv[2])]]))\n"
    )
    texts: List[str] = [t for t, _ in ISO_CASES] + ISO_BAD
    path = os.path.join(ROOT, "isstreamer", "collector", "iso8601.py")
    out = subprocess.run([exe, "-c", script, path, json.dumps(texts)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    version, results = json.loads(out.stdout)
    assert version == [3, 9]
    assert results == [parse_iso8601(t) for t in texts]
