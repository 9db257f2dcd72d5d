"""Drive ISStreamer 2.0.0 (Initial State's client) for the benchmark suite.

Runs in the peers' venv (``benchmarks/peers/setup.sh``): the import name ``ISStreamer`` is also
isstreamer's compatibility package. Points ``stream_api_base`` at a local server through an ini
file (2.0.0 reads it from ``[isstreamer.api_config]``) and times ``streamer.log("temperature", 21.5)``.

    .peers-venv/bin/python peers/drive_isstreamer.py --api-base http://127.0.0.1:PORT --buffer-size 10
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading

from _driverlib import add_common_args, serve, standalone


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    add_common_args(ap)
    ap.add_argument("--buffer-size", type=int, default=10)
    ap.add_argument("--value", default="float", choices=["float", "int", "str", "bool"])
    ap.add_argument("--object", action="store_true",
                    help="time log_object(a 10-key dict) instead of log(key, value)")
    ap.add_argument("--flush-each", action="store_true",
                    help="with --object: call flush() after every log_object (2.0.0's flush() POSTs in the caller's thread)")
    args = ap.parse_args()

    import ISStreamer
    from ISStreamer.Streamer import Streamer
    from ISStreamer import version as isv

    assert "site-packages" in os.path.abspath(ISStreamer.__file__), "not the PyPI ISStreamer"
    tmp = tempfile.mkdtemp(prefix="isstreamer-peer-")
    ini = os.path.join(tmp, "isstreamer.ini")
    with open(ini, "w") as f:
        f.write("[isstreamer.client_config]\naccess_key = bench\ndefault_bucket = bench\noffline_mode = false\n"
                "[isstreamer.api_config]\nstream_api_base = %s\n" % args.api_base)
    os.chdir(tmp)  # err_missed_events.txt, if any, lands here
    streamer = Streamer(bucket_name="bench", bucket_key="bench-peer", access_key="bench", ini_file_location=ini,
                        buffer_size=args.buffer_size)
    value = {"float": 21.5, "int": 21, "str": "warm", "bool": True}[args.value]

    def make_loop(log, value):
        def loop(n):
            for _ in range(n):
                log("temperature", value)
        return loop

    def close():
        streamer.close()
        for t in threading.enumerate():  # 2.0.0 ships each batch in a non-daemon thread
            if t is not threading.current_thread() and not t.daemon:
                t.join(60)

    def make_object_loop(log_object, obj):
        def loop(n):
            for _ in range(n):
                log_object(obj)
        return loop

    def make_object_flush_loop(log_object, flush, obj):
        def loop(n):
            for _ in range(n):
                log_object(obj)
                flush()
        return loop

    info = {"peer": "ISStreamer", "version": isv.__version__, "buffer_size": args.buffer_size,
            "python": sys.version.split()[0], "call": ("log_object+flush" if args.flush_each else "log_object") if args.object else "log"}
    if args.object:  # the same dict as benchmarks/test_log_cost.py's OBJECT
        obj = {"temp": 21.5, "humidity": 40.25, "pressure": 1013.2, "count": 7, "ok": True, "state": "idle",
               "voltage": 3.3, "current": 0.25, "rpm": 1200, "errors": 0}
        loop = (make_object_flush_loop(streamer.log_object, streamer.flush, obj) if args.flush_each
                else make_object_loop(streamer.log_object, obj))
    else:
        loop = make_loop(streamer.log, value)
    if args.worker:
        return serve(loop, close, info)
    return standalone(loop, close, info, args.rounds, args.calls, args.warmup)


if __name__ == "__main__":
    sys.exit(main())
