"""Helpers for the tests: subprocess scripts, bounded waits, the repo root."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from typing import Callable, Dict, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_env(backend: str, **extra: str) -> Dict[str, str]:
    """Environment for a child Python running the work tree with the given backend."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if backend == "python":
        env["ISSTREAMER_NO_EXTENSION"] = "1"
    else:
        env.pop("ISSTREAMER_NO_EXTENSION", None)
    env.update(extra)
    return env


def write_script(tmp_path, name: str, code: str) -> str:
    """Write a dedented script file and return its path."""
    path = os.path.join(str(tmp_path), name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(code))
    return path


def run_script(path: str, env: Dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a script to completion; output captured as text."""
    return subprocess.run([sys.executable, path], env=env, capture_output=True, text=True, timeout=timeout)


def wait_until(cond: Callable[[], bool], timeout: float = 60.0, every: float = 0.05) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


def int_values_summary(
    db_path: str, bucket_key: str, key: Optional[str] = None
) -> Tuple[int, int, float, float, float]:
    """(count, distinct values, min, max, sum) of the numeric events of a bucket in a collector DB."""
    con = sqlite3.connect(db_path, timeout=30)
    try:
        q = (
            "SELECT COUNT(*), COUNT(DISTINCT e.value_json), MIN(e.value_num), MAX(e.value_num), SUM(e.value_num) "
            "FROM events e JOIN buckets b ON b.id = e.bucket_id WHERE b.bucket_key = ?"
        )
        args = [bucket_key]
        if key is not None:
            q += " AND e.key = ?"
            args.append(key)
        return con.execute(q, args).fetchone()
    finally:
        con.close()


def pid_gone(pid: int) -> bool:
    """True when pid is not a live process (zombies count as gone)."""
    from procutil import pid_alive

    return not pid_alive(pid)


class ProxyServer:
    """An aiohttp app on a free loopback port, in a background thread, that hands every request
    to ``handle(request)``; subclasses forward to ``target`` with :meth:`forward`."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.url = ""
        self._loop = None
        self._thread = None

    async def handle(self, request):  # -> aiohttp.web.Response
        """Answer one request (subclasses)."""
        return await self.forward(request, self.target + request.path)

    async def forward(self, request, url: str, keep_headers=("content-type",)):
        """Send the request on to ``url``; answer with its status, body and ``keep_headers``."""
        from aiohttp import ClientSession, web

        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length", "transfer-encoding")
        }
        async with ClientSession() as session:
            async with session.request(request.method, url, params=request.query, headers=headers, data=body) as r:
                data = await r.read()
                keep = {k: v for k, v in r.headers.items() if k.lower() in keep_headers}
                return web.Response(status=r.status, body=data, headers=keep)

    def start(self):
        """Listen in a background thread; returns self once listening."""
        import asyncio
        import socket
        import threading

        from aiohttp import web

        ready = threading.Event()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.url = "http://127.0.0.1:%d" % sock.getsockname()[1]

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handle)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(30)
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)


class GatedProxy(ProxyServer):
    """Forwards every request to ``target`` once ``gate`` is set; until then requests wait.

    While closed it stalls the sender inside its HTTP request, so the ring fills up."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.gate = threading.Event()
        self.waiting = 0

    async def handle(self, request):  # -> web.Response
        await request.read()
        self.waiting += 1
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        self.waiting -= 1
        return await self.forward(request, self.target + request.path)

    def stop(self) -> None:
        """Open the gate and stop serving."""
        self.gate.set()
        super().stop()
