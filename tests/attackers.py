"""Attackers for the collector's attack tests (issue 20): a real ``isstreamer serve`` process,
connections that hog it, and a legitimate client that measures how it is served meanwhile.

Every attacker is bounded in count and time: it opens ``count`` connections, then ``top_up``
more every ``top_every`` seconds, until :meth:`Hogs.stop`.
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import requests

from isstreamer.collector.dburl import is_postgres_url

from collector_db import execute
from support import ROOT


class Served:
    """``isstreamer serve --port 0 ARGS`` in a child process (stderr kept in a file)."""

    def __init__(
        self, tmp_path: Any, *args: str, env: Optional[Dict[str, str]] = None, db: Optional[str] = None
    ) -> None:
        e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        e.update(env or {})
        self.db = db or str(tmp_path / "served.db")
        self.stderr_path = tempfile.mkstemp(prefix="served-", suffix=".stderr", dir=str(tmp_path))[1]
        self._stderr = open(self.stderr_path, "w+")  # a file: a full pipe would stall the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isstreamer.cli", "serve", "--port", "0", "--db", self.db, *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=e,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        m = re.search(r"listening on (http://[^\s/]+)", line)
        if not m:
            self.stop()
            raise AssertionError("serve did not start: %r\n%s" % (line, self.log()))
        self.url = m.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def rss(self) -> int:
        """Resident set size of the server, in bytes."""
        with open("/proc/%d/status" % self.pid) as f:
            m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.MULTILINE)
        assert m
        return int(m.group(1)) * 1024

    def log(self) -> str:
        """What the server wrote on stderr so far."""
        with open(self.stderr_path) as f:
            return f.read()

    def disk(self) -> int:
        """Bytes of the database: its file and -wal/-shm files, or a PostgreSQL database's size."""
        if is_postgres_url(self.db):
            return execute(self.db, "SELECT pg_database_size(current_database())")[0][0]
        return sum(os.path.getsize(self.db + s) for s in ("", "-wal", "-shm") if os.path.exists(self.db + s))

    def alive(self) -> bool:
        """Whether the server still runs."""
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


class Hogs(threading.Thread):
    """Connections that hold the collector's slots.

    Each sends ``first`` on connecting and then ``again`` every ``period`` seconds (when given);
    answers are read (and dropped) only when ``read``. ``count`` are opened at once, then
    ``top_up`` more every ``top_every`` seconds; a connection the server closes is not reopened.
    Their receive buffers are small so that unread answers back up in the server quickly.
    """

    def __init__(
        self,
        port: int,
        first: bytes,
        *,
        count: int,
        again: bytes = b"",
        period: float = 1.0,
        read: bool = False,
        top_up: int = 5,
        top_every: float = 3.0,
    ) -> None:
        super().__init__(daemon=True)
        self.port, self.first, self.again, self.period, self.read = port, first, again, period, read
        self.count, self.top_up, self.top_every = count, top_up, top_every
        self.opened = 0
        self._stop_event = threading.Event()
        self._socks: Dict[socket.socket, float] = {}  # open socket -> when it next sends `again`
        self._sel = selectors.DefaultSelector()

    def _open(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(5)
            s.connect(("127.0.0.1", self.port))
            s.sendall(self.first)
            s.setblocking(False)
        except OSError:
            s.close()
            return
        self.opened += 1
        self._socks[s] = time.monotonic() + self.period
        if self.read:
            self._sel.register(s, selectors.EVENT_READ)

    def _close(self, s: socket.socket) -> None:
        if self.read:
            self._sel.unregister(s)
        s.close()
        del self._socks[s]

    def _read_answers(self) -> None:
        for key, _ in self._sel.select(0.1):
            s = key.fileobj
            try:
                data = s.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self._close(s)  # type: ignore[arg-type]

    def _send_again(self) -> None:
        now = time.monotonic()
        for s, due in list(self._socks.items()):
            if due <= now:
                self._socks[s] = now + self.period
                try:
                    s.send(self.again)
                except BlockingIOError:
                    pass
                except OSError:
                    self._close(s)

    def run(self) -> None:
        for _ in range(self.count):
            self._open()
        next_top = time.monotonic() + self.top_every
        while not self._stop_event.is_set():
            if self.read:
                self._read_answers()
            else:
                self._stop_event.wait(0.1)
            if self.again:
                self._send_again()
            if time.monotonic() >= next_top:
                next_top += self.top_every
                for _ in range(self.top_up):
                    self._open()
        for s in list(self._socks):
            self._close(s)
        self._sel.close()

    def stop(self) -> None:
        """Close every connection and end the thread."""
        self._stop_event.set()
        self.join(30)


class Legit(threading.Thread):
    """A legitimate client: ``request()`` every ``interval`` seconds on a fresh connection, each
    given ``timeout`` seconds; records ``(answered as expected, seconds)`` per request."""

    def __init__(
        self,
        request: Callable[[float], requests.Response],
        expect: Sequence[int] = (200, 204),
        interval: float = 0.25,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(daemon=True)
        self.request, self.expect, self.interval, self.timeout = request, tuple(expect), interval, timeout
        self.results: List[Tuple[bool, float]] = []
        self.errors: List[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            t0 = time.monotonic()
            try:
                status = self.request(self.timeout).status_code
                ok = status in self.expect
                if not ok:
                    self.errors.append("HTTP %d" % status)
            except requests.RequestException as exc:
                ok = False
                self.errors.append(type(exc).__name__)
            self.results.append((ok, time.monotonic() - t0))
            self._stop_event.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def run_for(self, seconds: float) -> "Legit":
        """Start, run ``seconds``, stop; returns self."""
        self.start()
        time.sleep(seconds)
        self.stop()
        return self

    def stop(self) -> None:
        """Send no more requests; wait for the one under way."""
        self._stop_event.set()
        self.join(self.timeout + 30)

    def served(self, within: float) -> float:
        """Fraction of the requests answered as expected within ``within`` seconds."""
        return sum(1 for ok, t in self.results if ok and t <= within) / max(1, len(self.results))

    def median(self) -> float:
        """Median seconds per request."""
        return statistics.median(t for _, t in self.results) if self.results else float("inf")

    def report(self) -> str:
        """A line for assertion messages."""
        answered = sum(ok for ok, _ in self.results)
        return "%d requests, %d answered, median %.3f s, errors %s" % (
            len(self.results),
            answered,
            self.median(),
            sorted(set(self.errors)),
        )
