"""A server that only counts events: separates client cost from collector (SQLite) cost.

Run as ``python benchmarks/countserver.py [PORT]``; prints ``http://127.0.0.1:PORT`` once
listening. ``GET /count`` answers ``{"events": n, "requests": n, "lines": n, "line_requests": n, "pid": pid}``:
``events`` from the Initial State events API (``POST /api/events``, a JSON array or one object),
``lines`` from the InfluxDB v2 write API (``POST /api/v2/write``, line protocol, one point a line).
``POST /record?prefix=P`` makes it note when each event whose key starts with ``P`` arrives:
``GET /arrivals`` answers ``[[key, epoch, arrival time.time()], ...]``.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
import time

import orjson
from aiohttp import web


def make_app() -> web.Application:
    """The counting app."""
    state = {"events": 0, "requests": 0, "lines": 0, "line_requests": 0}
    record = {"prefix": None, "arrivals": []}

    async def buckets(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201)

    async def events(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        data = orjson.loads(body)
        state["events"] += len(data) if isinstance(data, list) else 1
        state["requests"] += 1
        prefix = record["prefix"]
        if prefix is not None:
            now = time.time()
            record["arrivals"] += [
                [e["key"], e.get("epoch"), now]
                for e in (data if isinstance(data, list) else [data])
                if e["key"].startswith(prefix)
            ]
        return web.Response(status=204)

    async def start_recording(request: web.Request) -> web.Response:
        record["prefix"] = request.query["prefix"]
        record["arrivals"] = []
        return web.Response(status=204)

    async def arrivals(request: web.Request) -> web.Response:
        return web.json_response(record["arrivals"])

    async def influx_write(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        state["lines"] += sum(1 for line in body.split(b"\n") if line.strip() and not line.startswith(b"#"))
        state["line_requests"] += 1
        return web.Response(status=204)

    async def count(request: web.Request) -> web.Response:
        return web.json_response(dict(state, pid=os.getpid()))

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/api/buckets", buckets)
    app.router.add_post("/api/events", events)
    app.router.add_post("/api/v2/write", influx_write)
    app.router.add_get("/count", count)
    app.router.add_post("/record", start_recording)
    app.router.add_get("/arrivals", arrivals)
    return app


async def _main(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    real = runner.addresses[0][1]
    print("http://127.0.0.1:%d" % real, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
