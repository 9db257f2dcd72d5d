"""Ingest throughput of the local collector (events stored per second, CPU per million events)
on SQLite or PostgreSQL with one or more collector processes, and the server CPU a gzip bomb
costs per request.

Starts ``isstreamer serve --workers N`` in its own processes (so clients and servers do not
share a GIL) on a temporary database: an SQLite file, or a database of a private PostgreSQL
cluster started for the run (``tests/pgcluster.py``, PostgreSQL's default durability: fsync on
every commit) unless ``--db URL`` names one. ``--clients`` processes POST batches of events over
keep-alive connections, all at once; events/s is the events the collector reports stored
divided by the wall time from the first POST to the last answer. CPU per million events is
counted from /proc for the collector processes and, on a private cluster, for every process of
the PostgreSQL server. ``--gzip-bomb N`` instead POSTs N bodies of about 0.9 MB that inflate to
900 MiB (with a valid key, and without one) and reports the collector process's CPU seconds per
request and the slowest answer to a health check (``GET /api/versions``) sent meanwhile.

    python benchmarks/collector_ingest.py [--backend sqlite|postgres] [--collectors 1] [--clients 4]
        [--batches 100] [--batch-size 1000] [--db URL]
    python benchmarks/collector_ingest.py --gzip-bomb 10
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from typing import Iterator, List, Optional, Tuple

import orjson
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # pgcluster: the private PostgreSQL server

HEADERS = {
    "X-IS-AccessKey": "bench",
    "X-IS-BucketKey": "bench",
    "Content-Type": "application/json",
    "Accept-Version": "<=0.0.4",
}


def _bodies(batches: int, batch_size: int, client: int) -> List[bytes]:
    base = time.time()
    return [
        orjson.dumps(
            [
                {
                    "key": "k%d" % (i % 8),
                    "value": (i * 0.5 if i % 3 else "s%d" % i),
                    "epoch": base + b + i / 1e4 + client / 1e6,
                }
                for i in range(batch_size)
            ]
        )
        for b in range(min(batches, 20))
    ]


def _client(
    url: str,
    batches: int,
    batch_size: int,
    client: int,
    start: "multiprocessing.synchronize.Event",
    done: "multiprocessing.Queue",
) -> None:
    """One client process: POST ``batches`` bodies once ``start`` is set; put the finish time."""
    bodies = _bodies(batches, batch_size, client)
    with requests.Session() as s:
        s.post(url + "/api/versions", timeout=60)  # connected before the start
        start.wait()
        for b in range(batches):
            r = s.post(url + "/api/events", data=bodies[b % len(bodies)], headers=HEADERS, timeout=120)
            if r.status_code != 204:
                done.put(("error", "unexpected %d: %s" % (r.status_code, r.text[:300])))
                return
    done.put(("done", time.perf_counter()))


def run(
    url: str, batches: int, batch_size: int, clients: int = 1, pids: Optional[List[int]] = None
) -> Tuple[int, float, float]:
    """``clients`` processes POST ``batches`` bodies of ``batch_size`` events each; return (events
    stored, seconds, CPU seconds of the processes ``pids`` and their children)."""
    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    with requests.Session() as s:
        s.post(url + "/api/events", data=_bodies(1, batch_size, 0)[0], headers=HEADERS).raise_for_status()  # warm up
        before = s.get(url + "/api/stats").json()["events"]
    procs = [ctx.Process(target=_client, args=(url, batches, batch_size, c, start, done)) for c in range(clients)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # every client imported and connected
    cpu0 = tree_cpu_seconds(pids or [])
    t0 = time.perf_counter()
    start.set()
    finished = []
    for _ in procs:
        kind, value = done.get(timeout=1800)
        if kind == "error":
            raise SystemExit(value)
        finished.append(value)
    elapsed = max(finished) - t0
    cpu = tree_cpu_seconds(pids or []) - cpu0
    for p in procs:
        p.join(60)
    with requests.Session() as s:
        stored = s.get(url + "/api/stats").json()["events"] - before
    return stored, elapsed, cpu


def gzip_bomb(inflated: int = 900 * 1024 * 1024) -> bytes:
    """A gzip body (about 0.9 MB) of a JSON array of ``inflated`` bytes of spaces."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b" " * (1024 * 1024)
    parts = [c.compress(b"[")]
    for _ in range(inflated // len(chunk)):
        parts.append(c.compress(chunk))
    parts.append(c.compress(b"]"))
    parts.append(c.flush())
    return b"".join(parts)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc); 0 once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> List[int]:
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def tree_cpu_seconds(pids: List[int]) -> float:
    """CPU seconds of the processes ``pids`` and of their children (a collector's workers, a
    PostgreSQL server's backends) that are alive now."""
    total = 0.0
    for pid in pids:
        total += cpu_seconds(pid) + sum(cpu_seconds(c) for c in _children(pid))
    return total


def _health_checks(url: str, stop: threading.Event, worst: List[float]) -> None:
    with requests.Session() as s:
        while not stop.is_set():
            t0 = time.perf_counter()
            s.get(url + "/api/versions", timeout=60)
            worst[0] = max(worst[0], time.perf_counter() - t0)
            time.sleep(0.05)


def post_and_linger(url: str, body: bytes, headers: dict, linger: float = 2.0, chunked: bool = False) -> str:
    """POST over a raw socket, read the answer's status line, keep the connection open
    ``linger`` seconds as an attacker would (a server that reads on after answering pays now).
    ``chunked``: send the body with ``Transfer-Encoding: chunked`` (no length to refuse up front)."""
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    head = "POST /api/events HTTP/1.1\r\nHost: %s:%s\r\n" % (host, port)
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
        body = (
            b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 65536]), body[i : i + 65536]) for i in range(0, len(body), 65536)
            )
            + b"0\r\n\r\n"
        )
    else:
        head += "Content-Length: %d\r\n" % len(body)
    head += "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n"
    with socket.create_connection((host, int(port)), timeout=120) as s:
        try:
            s.sendall(head.encode() + body)
            status = s.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError as exc:
            return type(exc).__name__
        deadline = time.monotonic() + linger
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                if not s.recv(65536):
                    return status + " (closed by server)"
            except socket.timeout:
                continue
            except OSError:
                return status + " (reset by server)"
        return status + " (kept open)"


def run_bomb(url: str, pid: int, n: int) -> None:
    """POST the bomb ``n`` times with a key and ``n`` times without; print CPU per request."""
    bomb = gzip_bomb()
    headers = dict(HEADERS, **{"Content-Encoding": "gzip"})
    worst = [0.0]
    stop = threading.Event()
    checker = threading.Thread(target=_health_checks, args=(url, stop, worst), daemon=True)
    checker.start()
    try:
        no_key = dict(headers, **{"X-IS-AccessKey": ""})
        for label, hdr, chunked in (
            ("valid key", headers, False),
            ("no key", no_key, False),
            ("valid key, chunked", headers, True),
            ("no key, chunked", no_key, True),
        ):
            statuses: dict = {}
            cpu0 = cpu_seconds(pid)
            for _ in range(n):
                status = post_and_linger(url, bomb, hdr, chunked=chunked)
                statuses[status] = statuses.get(status, 0) + 1
            per = (cpu_seconds(pid) - cpu0) / n
            print(
                "gzip bomb %d bytes -> %d MiB, %s: %d requests, answers %s, server CPU %.3f s per request"
                % (len(bomb), 900, label, n, statuses, per)
            )
    finally:
        stop.set()
        checker.join(60)
    print("slowest health check during the bombs: %.3f s" % worst[0])


def _serve(db: str, workers: int = 1) -> Iterator[Tuple[str, int]]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "isstreamer.cli",
            "serve",
            "--port",
            "0",
            "--db",
            db,
            "--workers",
            str(workers),
            "--disk-quota",
            "0",
            "--max-db-size",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        m = re.search(r"listening on (http://\S+)", proc.stdout.readline())  # type: ignore[union-attr]
        if not m:
            raise SystemExit("collector did not start")
        yield m.group(1), proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def _postgres(args: argparse.Namespace) -> Iterator[Tuple[str, List[int]]]:
    """The database URL and the PostgreSQL server's pids to count (none for ``--db``)."""
    if args.db:
        yield args.db, []
        return
    import pgcluster

    bindir = pgcluster.find_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binaries (apt-get install postgresql)")
    cluster = pgcluster.PgCluster(bindir, durable=True).start()
    try:
        yield pgcluster.Databases(cluster.url()).create(), [cluster.postmaster_pid()]
    finally:
        cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--db", help="a postgresql:// URL to use instead of a private cluster (--backend postgres)")
    ap.add_argument("--collectors", type=int, default=1, help="collector processes (serve --workers)")
    ap.add_argument("--clients", type=int, default=4, help="client processes posting at once")
    ap.add_argument("--batches", type=int, default=100, help="POSTs per client")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--in-process", action="store_true", help="run the collector in a thread of this process")
    ap.add_argument("--gzip-bomb", type=int, default=0, metavar="N", help="measure N gzip bomb requests instead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        if args.gzip_bomb:
            for url, pid in _serve(db):
                run_bomb(url, pid, args.gzip_bomb)
            return
        if args.in_process:
            from isstreamer.collector.server import CollectorServer

            with CollectorServer(db_path=db) as server:
                stored, elapsed, cpu = run(server.url, args.batches, args.batch_size, args.clients)
            db_cpu = 0.0
        else:
            for target, db_pids in _postgres(args) if args.backend == "postgres" else iter([(db, [])]):
                for url, pid in _serve(target, args.collectors):
                    db_cpu0 = tree_cpu_seconds(db_pids)
                    stored, elapsed, cpu = run(url, args.batches, args.batch_size, args.clients, [pid])
                    db_cpu = tree_cpu_seconds(db_pids) - db_cpu0
    expected = args.clients * args.batches * args.batch_size
    per_million = (lambda seconds: seconds / stored * 1e6) if stored else (lambda seconds: 0.0)
    print(
        "%s, %d collector process%s, %d clients: %d events in %d POSTs of %d: %.2f s, %.0f events/s stored; "
        "CPU per million events: collector %.2f s, database server %.2f s%s"
        % (
            args.backend,
            args.collectors,
            "" if args.collectors == 1 else "es",
            args.clients,
            stored,
            args.clients * args.batches,
            args.batch_size,
            elapsed,
            stored / elapsed,
            per_million(cpu),
            per_million(db_cpu),
            "" if stored == expected else " (EXPECTED %d)" % expected,
        )
    )


if __name__ == "__main__":
    main()
