"""Drive influxdb-client's batching WriteApi for the benchmark suite.

Runs in the peers' venv. ``WriteOptions(batch_size=1000, flush_interval=1000)`` (the batching
defaults) against a local server that implements ``POST /api/v2/write``. Record forms:

* ``line``: a line-protocol string, built once outside the loop (the cheapest use of the API);
* ``point``: ``Point("m").field("temperature", 21.5)`` built per call (what a user logging a
  value has to do).

    .peers-venv/bin/python peers/drive_influx.py --api-base http://127.0.0.1:PORT --record point
"""
from __future__ import annotations

import argparse
import sys

from _driverlib import add_common_args, serve, standalone


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    add_common_args(ap)
    ap.add_argument("--record", default="line", choices=["line", "point"])
    ap.add_argument("--batch-size", type=int, default=1000)
    args = ap.parse_args()

    import influxdb_client
    from influxdb_client import InfluxDBClient, Point, WriteOptions

    client = InfluxDBClient(url=args.api_base, token="bench", org="bench", enable_gzip=False)
    write_api = client.write_api(write_options=WriteOptions(batch_size=args.batch_size, flush_interval=1000))
    write = write_api.write

    if args.record == "line":
        def make_loop(write, record):
            def loop(n):
                for _ in range(n):
                    write("bench", "bench", record)
            return loop
        loop = make_loop(write, "m temperature=21.5")
    else:
        def make_loop(write, Point, value):
            def loop(n):
                for _ in range(n):
                    write("bench", "bench", Point("m").field("temperature", value))
            return loop
        loop = make_loop(write, Point, 21.5)

    def close():
        write_api.close()  # flushes what is batched
        client.close()

    info = {"peer": "influxdb-client", "version": influxdb_client.__version__, "record": args.record,
            "batch_size": args.batch_size, "python": sys.version.split()[0]}
    if args.worker:
        return serve(loop, close, info)
    return standalone(loop, close, info, args.rounds, args.calls, args.warmup)


if __name__ == "__main__":
    sys.exit(main())
