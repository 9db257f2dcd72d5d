"""The collector on PostgreSQL: several collectors on one database (races, quotas, the request
log, the rate limit, a kill -9 mid-ingest), ``serve --workers``, the schema's migration, the
Grafana query, a password never shown. Real servers, real processes, real HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import orjson
import pytest
import requests

from isstreamer.collector.dburl import masked

from collector_db import execute
from support import ROOT, wait_until

pytestmark = pytest.mark.collector_backends("postgres")

KEY = "pg-test-key"


def headers(bucket: str, key: str = KEY) -> Dict[str, str]:
    return {"X-IS-AccessKey": key, "X-IS-BucketKey": bucket}


def post(url: str, body: Any, bucket: str, key: str = KEY, session: Any = requests, timeout: float = 30) -> Any:
    return session.post(url + "/api/events", data=orjson.dumps(body), headers=headers(bucket, key), timeout=timeout)


class Serve:
    """``isstreamer serve --port 0 --db DB ARGS`` in a child process (its output in a file)."""

    def __init__(self, tmp_path: Any, db: str, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.out_path = str(tmp_path / ("serve-%d.out" % time.monotonic_ns()))
        self._out = open(self.out_path, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isstreamer.cli", "serve", "--port", "0", "--db", db, *args],
            stdout=subprocess.PIPE,
            stderr=self._out,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        self.announcement = line
        m = re.search(r"listening on (http://[^\s/]+)", line)
        if not m:
            self.stop()
            raise AssertionError("serve did not start: %r\n%s" % (line, self.output()))
        self.url = m.group(1)

    def output(self) -> str:
        with open(self.out_path) as f:
            return self.announcement + f.read()

    def children(self) -> List[int]:
        """The worker processes of a ``--workers`` supervisor."""
        with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
            return [int(p) for p in f.read().split()]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


@pytest.fixture
def serve(tmp_path: Any) -> Iterator[Callable[..., Serve]]:
    started: List[Serve] = []

    def make(db: str, *args: str) -> Serve:
        s = Serve(tmp_path, db, *args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


# --------------------------------------------------------------------------- several collectors, one database


def test_two_collectors_eight_producers_kill9_loses_nothing_acked(
    serve: Callable[..., Serve], collector_db: Any
) -> None:
    """Two ``serve`` processes on one database, 8 producers; one collector is killed (-9) while
    requests to it are in flight. Every acked event is stored exactly once; every batch is
    stored whole or not at all; the counters match the rows."""
    db = collector_db()
    a, b = serve(db), serve(db)
    per_batch, batches = 200, 30
    acked: Dict[Tuple[int, int], bool] = {}  # (producer, batch) -> acked
    in_flight_to_a = threading.Semaphore(0)
    killed = threading.Event()
    lock = threading.Lock()

    def producer(p: int) -> None:
        with requests.Session() as s:
            for n in range(batches):
                target = a if p % 2 == 0 and not killed.is_set() else b
                body = [{"key": "p%d" % p, "value": n * per_batch + i} for i in range(per_batch)]
                if target is a:
                    in_flight_to_a.release()
                try:
                    ok = post(target.url, body, "kill9", session=s).status_code == 204
                except requests.ConnectionError:
                    ok = False
                    s.close()
                with lock:
                    acked[(p, n)] = ok

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(producer, p) for p in range(8)]
        for _ in range(12):  # a few requests reached A ...
            assert in_flight_to_a.acquire(timeout=60)
        in_flight_to_a.acquire(timeout=60)  # ... and one is on its way now
        a.proc.kill()
        killed.set()
        for f in futures:
            f.result(timeout=240)
    a.proc.wait(10)
    rows = execute(
        db, "SELECT e.key, e.value_json FROM events e JOIN buckets b ON b.id = e.bucket_id WHERE b.bucket_key = 'kill9'"
    )
    seen: Dict[Tuple[str, str], int] = {}
    for key, value in rows:
        seen[(key, value)] = seen.get((key, value), 0) + 1
    assert max(seen.values()) == 1, "an event stored twice"
    lost = []
    for (p, n), ok in acked.items():
        present = sum(1 for i in range(per_batch) if ("p%d" % p, str(n * per_batch + i)) in seen)
        assert present in (0, per_batch), "batch %d of producer %d stored in part (%d events)" % (n, p, present)
        if ok and not present:
            lost.append((p, n))
    assert not lost, "acked batches lost: %s" % lost
    assert sum(acked.values()) >= 8 * batches // 2
    [(count,)] = execute(db, "SELECT event_count FROM buckets WHERE bucket_key = 'kill9'")
    assert count == len(rows)
    [(usage,)] = execute(db, "SELECT SUM(events) FROM usage")
    assert usage == len(rows)
    print(
        "acked %d of %d batches; %d events stored; %d unacked batches, %d of them committed"
        % (
            sum(acked.values()),
            len(acked),
            len(rows),
            len(acked) - sum(acked.values()),
            sum(1 for (p, n), ok in acked.items() if not ok and ("p%d" % p, str(n * per_batch)) in seen),
        )
    )
    assert b.stop() == 0


def _two_collectors(collector_factory: Any, collector_db: Any, **kw: Any) -> Tuple[Any, Any, str]:
    db = collector_db()
    return collector_factory(db_path=db, **kw), collector_factory(db_path=db, **kw), db


def test_bucket_creation_race_creates_it_once(collector_factory: Any, collector_db: Any) -> None:
    a, b, db = _two_collectors(collector_factory, collector_db)

    def create(i: int) -> int:
        server = (a, b)[i % 2]
        return requests.post(
            server.url + "/api/buckets",
            json={"bucketKey": "race", "bucketName": "R"},
            headers={"X-IS-AccessKey": KEY},
            timeout=30,
        ).status_code

    def ingest(i: int) -> int:
        return post((a, b)[i % 2].url, [{"key": "k", "value": i}], "auto-race").status_code

    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(create, range(16)))
        ingested = list(pool.map(ingest, range(16)))
    assert sorted(created) == [201] + [204] * 15
    assert ingested == [204] * 16
    assert execute(db, "SELECT bucket_key, event_count FROM buckets ORDER BY bucket_key") == [
        ("auto-race", 16),
        ("race", 0),
    ]


def test_monthly_and_disk_quotas_hold_across_collectors(collector_factory: Any, collector_db: Any) -> None:
    a, b, db = _two_collectors(collector_factory, collector_db, monthly_quota=100)

    def one(i: int) -> int:
        return post((a, b)[i % 2].url, [{"key": "k", "value": i}, {"key": "k", "value": -i}], "quota").status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(80)))
    assert statuses.count(204) == 50 and statuses.count(402) == 30
    assert execute(db, "SELECT COUNT(*) FROM events") == [(100,)]
    assert execute(db, "SELECT events FROM usage") == [(100,)]
    assert a.stats()["statuses"] == {"204": 50, "402": 30}

    c, d, db2 = _two_collectors(collector_factory, collector_db, disk_quota=60_000)
    body = [{"key": "key", "value": "v" * 100} for _ in range(20)]  # about 6 kB counted each

    def big(i: int) -> int:
        return post((c, d)[i % 2].url, body, "disk").status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(big, range(40)))
    stored = c.stats()["stored_bytes"]
    assert statuses.count(507) > 0 and stored <= 60_000
    assert execute(db2, "SELECT COUNT(*) FROM events") == [(20 * statuses.count(204),)]


def test_removal_and_ingest_race_in_order(collector_factory: Any, collector_db: Any) -> None:
    """A batch lands before the removal or is refused: every acked event is stored, none after."""
    a, b, db = _two_collectors(collector_factory, collector_db)
    assert post(a.url, {"key": "k", "value": 0}, "doomed").status_code == 204
    statuses: List[int] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        with requests.Session() as s:
            while not stop.is_set():
                i += 1
                statuses.append(post(b.url, [{"key": "k", "value": i}] * 10, "doomed", session=s).status_code)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.5)
    r = requests.delete(a.url + "/api/buckets/doomed", headers={"X-IS-AccessKey": KEY}, timeout=30)
    time.sleep(0.3)
    stop.set()
    t.join(30)
    assert r.status_code == 204
    assert statuses.count(204) >= 1 and statuses[-1] == 400
    assert statuses == sorted(statuses, key=lambda s: s == 400)  # every 204 before every 400
    [(count,)] = execute(db, "SELECT COUNT(*) FROM events")
    assert count == 1 + 10 * statuses.count(204)
    assert execute(db, "SELECT event_count FROM buckets") == [(count,)]


def test_request_log_and_rate_limit_shared(collector_factory: Any, collector_db: Any) -> None:
    a, b, db = _two_collectors(collector_factory, collector_db, rate_limit=(10, 60), log_rows=30)

    def one(i: int) -> Tuple[int, Optional[str]]:
        r = post((a, b)[i % 2].url, {"key": "k", "value": i}, "limited")
        return r.status_code, r.headers.get("X-RateLimit-Remaining")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(40)))
    statuses = [s for s, _ in answers]
    assert statuses.count(204) == 10 and statuses.count(429) == 30
    assert sorted(int(r) for s, r in answers if s == 204) == list(range(10))
    log = a.requests_log()  # every request once (the oldest may be pruned past log_rows)
    assert len({r["request_uid"] for r in log}) == len({r["id"] for r in log}) == len(log)
    assert 30 <= len(log) <= 40 and [r["id"] for r in log] == sorted(r["id"] for r in log)
    assert a.stats()["statuses"] == {"204": 10, "429": 30}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: post((a, b)[i % 2].url, {"key": "k", "value": i}, "other", key="k%d" % i), range(300)))
    assert len(a.requests_log()) <= 30 + 256 * 2


# --------------------------------------------------------------------------- serve --workers


@pytest.mark.collector_backends()
def test_serve_workers_share_one_port(serve: Callable[..., Serve], collector_db: Any) -> None:
    db = collector_db()
    s = serve(db, "--workers", "2")
    assert "2 worker processes" in s.announcement
    workers = s.children()
    assert len(workers) == 2
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: post(s.url, [{"key": "k", "value": i}] * 5, "w").status_code, range(80)))
    assert statuses == [204] * 80
    os.kill(workers[0], signal.SIGKILL)
    assert wait_until(lambda: len(s.children()) == 2 and workers[0] not in s.children(), 30), s.output()

    def retried(i: int) -> int:  # a connection the dead worker held is reset: send again
        for _ in range(5):
            try:
                return post(s.url, [{"key": "k", "value": i}] * 5, "w").status_code
            except requests.ConnectionError:
                time.sleep(0.2)
        return 0

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(retried, range(40))) == [204] * 40
    assert requests.get(s.url + "/api/stats", timeout=10).json()["events"] == 600
    assert s.stop() == 0
    assert "Traceback" not in s.output()


@pytest.mark.collector_backends("sqlite")
def test_workers_refuse_an_in_memory_rate_limit_on_sqlite(tmp_path: Any) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "isstreamer.cli",
            "serve",
            "--port",
            "0",
            "--db",
            str(tmp_path / "c.db"),
            "--workers",
            "2",
            "--rate-limit",
            "10/10",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode != 0 and "--rate-limit" in done.stderr and "PostgreSQL" in done.stderr


# --------------------------------------------------------------------------- the database


def test_schema_migrated_once_by_collectors_starting_together(collector_db: Any) -> None:
    from isstreamer.collector import postgres_store
    from isstreamer.collector.store import Store

    db = collector_db()
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: Store(db), range(4)))
    for s in stores:
        s.close()
    assert execute(db, "SELECT version FROM isstreamer_schema") == [(postgres_store.SCHEMA_VERSION,)]
    assert ("events_bucket_key_epoch",) in execute(db, "SELECT indexname FROM pg_indexes WHERE tablename = 'events'")
    execute(db, "INSERT INTO isstreamer_schema VALUES (?, 0)", (postgres_store.SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="upgrade isstreamer"):
        Store(db)


def test_grafana_query_of_a_key_over_time(collector: Any) -> None:
    """The README's Grafana query, its macros expanded as Grafana does."""
    body = [{"key": "temperature", "value": 20 + i, "epoch": 1_700_000_000 + 60 * i} for i in range(10)]
    body += [{"key": "state", "value": "on", "epoch": 1_700_000_000}]
    assert post(collector.url, body, "garden").status_code == 204
    readme = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"```sql\n(SELECT time, value.*?)```", readme, re.S)
    assert m, "the README's Grafana query"
    query = m.group(1).replace("$__unixEpochFilter(epoch)", "epoch BETWEEN 1700000060 AND 1700000300")
    query = query.replace("'$bucket'", "'garden'").replace("'$key'", "'temperature'")
    rows = execute(collector.db_path, query)
    assert [(r[0].timestamp(), r[1], r[2]) for r in rows] == [
        (1_700_000_000 + 60 * i, 20.0 + i, "temperature") for i in range(1, 6)
    ]


def test_a_lost_connection_is_a_503_then_reconnected(collector: Any) -> None:
    assert post(collector.url, {"key": "k", "value": 1}, "b").status_code == 204
    execute(
        collector.db_path,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
        "application_name = 'isstreamer collector' AND pid <> pg_backend_pid()",
    )
    statuses = [post(collector.url, {"key": "k", "value": i}, "b").status_code for i in range(8)]
    assert set(statuses) <= {204, 503} and statuses[-1] == 204, statuses
    r = requests.get(collector.url + "/api/buckets/b/latest", timeout=10)
    assert r.status_code in (200, 503)
    assert wait_until(lambda: requests.get(collector.url + "/api/buckets/b/latest", timeout=10).status_code == 200, 10)


def test_text_postgresql_cannot_hold_is_refused(collector: Any) -> None:
    r = post(collector.url, [{"key": "ok", "value": "a\u0000b"}, {"key": "bad\u0000", "value": 1}], "b")
    assert r.status_code == 400 and r.json()["message"]["error"]["index"] == 1
    assert post(collector.url, [{"key": "ok", "value": "a\u0000b"}], "b").status_code == 204  # values are JSON
    assert collector.events("b")[0]["value"] == "a\u0000b"
    assert requests.get(collector.url + "/api/buckets/x%00y", timeout=10).status_code == 404


def test_password_never_shown(serve: Callable[..., Serve], collector_db: Any, tmp_path: Any) -> None:
    db = collector_db().replace("postgresql://isstreamer@", "postgresql://isstreamer:hunter2@")
    s = serve(db)  # the test cluster trusts its socket: the password is not even needed
    assert "hunter2" not in s.announcement and "isstreamer:***@" in s.announcement
    assert s.stop() == 0 and "hunter2" not in s.output()
    bad = re.sub(r"host=[^&]*", "host=/nonexistent", db)
    done = subprocess.run(
        [sys.executable, "-m", "isstreamer.cli", "serve", "--port", "0", "--db", bad],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode != 0 and "cannot open" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    assert masked("postgresql://u:pw@h/d?password=pw2") == "postgresql://u:***@h/d?password=***"
