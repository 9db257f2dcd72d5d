"""Helpers shared by the benchmark suite: /proc readings, servers, the peer workers.

Everything here talks only to processes on this machine (servers bind 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS_DIR = os.path.join(HERE, "peers")
PEERS_VENV = os.environ.get("ISSTREAMER_PEERS_VENV", os.path.join(HERE, ".peers-venv"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Bound every wait of the suite: nothing here may hang a benchmark run.
HTTP_TIMEOUT = 10.0


# ---- /proc ------------------------------------------------------------------------------------
def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_schedstat() -> Tuple[float, float]:
    """(seconds on CPU, seconds waiting on a run queue) of the calling thread (/proc/thread-self/schedstat).

    Wall time minus these two is time the thread slept (e.g. waiting for a full ring to drain).
    """
    try:
        with open("/proc/thread-self/schedstat") as f:
            run, wait, _ = f.read().split()
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def loadavg() -> List[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def proc_mem(pid: int) -> Dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem of a process, in bytes (from /proc/<pid>/status)."""
    out: Dict[str, int] = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[name] = int(rest.split()[0]) * 1024
    return out


def free_port_closed() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed: connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- streamer internals the suite reads (never writes) ----------------------------------------
def sender_pid(streamer) -> int:
    """Pid of the sender process of a Streamer."""
    return int(streamer.sender_pid or 0)


def segment_fill(streamer) -> float:
    """Fraction of this process's ring segment holding records not yet released by the sender."""
    return streamer.ring_fill()


# ---- servers -----------------------------------------------------------------------------------
def get_json(url: str) -> Dict[str, Any]:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as r:
        return json.load(r)


def count_of(url: str, field: str = "events") -> int:
    """A counter of the counting server (``events``, ``requests``, ``lines``, ``line_requests``)."""
    return int(get_json(url + "/count")[field])


def wait_count(
    url: str, target: int, field: str = "events", timeout: float = 60.0, poll: float = 0.005
) -> Tuple[int, float]:
    """Poll the counting server until ``field`` reaches ``target``; (value, perf_counter at that time)."""
    deadline = time.perf_counter() + timeout
    while True:
        n = count_of(url, field)
        now = time.perf_counter()
        if n >= target or now > deadline:
            return n, now
        time.sleep(poll)


def start_count_server() -> Tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "countserver.py")], stdout=subprocess.PIPE, text=True, env=env
    )
    assert p.stdout is not None
    url = p.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        p.kill()
        raise RuntimeError("count server did not start")
    return p, url


def start_collector(db: str) -> Tuple[subprocess.Popen, str]:
    """``isstreamer serve --port 0`` on a fresh database, in its own process."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen(
        [sys.executable, "-m", "isstreamer.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--db", db],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert p.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if m:
            return p, m.group(1)
    p.kill()
    raise RuntimeError("the collector did not start")


def stop(p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


# ---- peers: persistent worker subprocesses in the peers' venv -----------------------------------
def peers_python() -> Optional[str]:
    """The peers venv's interpreter, creating the venv (idempotent) if needed; None if impossible."""
    py = os.path.join(PEERS_VENV, "bin", "python")
    setup = os.path.join(PEERS_DIR, "setup.sh")
    try:
        subprocess.run(["bash", setup, PEERS_VENV], check=True, stdout=subprocess.DEVNULL, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return None
    return py if os.path.exists(py) else None


class PeerWorker:
    """A peer client in its own interpreter, running timed loops on command.

    Protocol (one JSON object per line on stdout): the driver prints ``{"ready": ...}``; then for
    each ``run N`` line on stdin it runs ``N`` calls and answers ``{"elapsed": s, "cpu": s}``
    (``perf_counter`` around the loop, ``process_time`` of the whole peer process, its background
    threads included); ``close`` flushes the client and answers ``{"close_s": s}``.
    """

    def __init__(self, python: str, script: str, args: Sequence[str], timeout: float = 120.0) -> None:
        self.timeout = timeout
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        self.p = subprocess.Popen(
            [python, os.path.join(PEERS_DIR, script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=PEERS_DIR,
            env=env,
        )
        self.ready = self._read()
        self.rounds: List[Dict[str, float]] = []

    def _read(self) -> Dict[str, Any]:
        assert self.p.stdout is not None
        import select

        r, _, _ = select.select([self.p.stdout], [], [], self.timeout)
        line = self.p.stdout.readline() if r else ""
        if not line:
            self.kill()
            err = self.p.stderr.read() if self.p.stderr else ""
            raise RuntimeError("peer worker died or timed out: %s" % err[-2000:])
        return json.loads(line)

    def _cmd(self, text: str) -> Dict[str, Any]:
        assert self.p.stdin is not None
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()
        return self._read()

    def run(self, n: int) -> float:
        r = self._cmd("run %d" % n)
        self.rounds.append(r)
        return r["elapsed"]

    def close(self) -> Dict[str, Any]:
        try:
            return self._cmd("close")
        finally:
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


def per_call_summary(elapsed: Sequence[float], calls: int) -> Dict[str, float]:
    """Median / min / max per-call nanoseconds of rounds of ``calls`` calls."""
    per = sorted(e / calls * 1e9 for e in elapsed)
    return {"median_ns": statistics.median(per), "min_ns": per[0], "max_ns": per[-1], "rounds": len(per)}


def prefault(streamer, upto: float = 0.97) -> None:
    """Touch every page of this process's ring segment once, so rounds run over warm pages.

    The first write to each page of a fresh mapping takes a page fault (see test_growth's cold
    ring-fill curve); a long-running producer only pays that once per ring. With the sender
    paused (SIGSTOP), the segment is filled to ``upto`` with 2000-character records, then the
    sender resumes and drains it; later records wrap over the warm pages.
    """
    import signal

    spid = sender_pid(streamer)
    big = "x" * 2000
    log = streamer.log
    os.kill(spid, signal.SIGSTOP)
    try:
        while segment_fill(streamer) < upto:
            for _ in range(64):
                log("prefault", big)
    finally:
        os.kill(spid, signal.SIGCONT)
    if not streamer.flush(120):
        raise RuntimeError("the sender did not drain the prefault records")


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0
