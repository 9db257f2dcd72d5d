"""Diagnostic (no target): the latency of one 10-event POST to the counting server, by HTTP client.

Tells apart what a ``log_object(); flush(timeout)`` round trip spends in the HTTP client from the
rest of isstreamer's pipeline (see flush_e2e.py): isstreamer's sender posts with a
``requests.Session`` (keep-alive, ``trust_env=False``, as ``isstreamer/transport.py`` sets it up);
ISStreamer 2.0.0 posts with ``http.client`` on a new connection per request.

    python benchmarks/request_latency.py [--trials 3] [--n 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import benchutil  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--n", type=int, default=300)
    a = ap.parse_args()
    import requests

    p, url = benchutil.start_count_server()
    body = json.dumps([{"key": "k%d" % i, "value": 21.5, "epoch": time.time()} for i in range(10)])
    hdr = {"Content-Type": "application/json", "X-IS-AccessKey": "b", "X-IS-BucketKey": "b", "Accept-Version": "~0"}
    host = url[len("http://") :]
    try:
        s = requests.Session()
        s.trust_env = False
        kc = http.client.HTTPConnection(host, timeout=10)

        def req_session() -> None:
            _ = s.post(url + "/api/events", data=body, headers=hdr, timeout=10).content  # the body read too

        def httpclient_new() -> None:
            c = http.client.HTTPConnection(host, timeout=10)
            c.request("POST", "/api/events", body, hdr)
            c.getresponse().read()
            c.close()

        def httpclient_keepalive() -> None:
            kc.request("POST", "/api/events", body, hdr)
            kc.getresponse().read()

        for t in range(a.trials):
            for name, fn in (
                ("requests.Session, keep-alive (isstreamer)", req_session),
                ("http.client, new connection (2.0.0)", httpclient_new),
                ("http.client, keep-alive", httpclient_keepalive),
            ):
                xs = []
                for _ in range(a.n):
                    t0 = time.perf_counter()
                    fn()
                    xs.append((time.perf_counter() - t0) * 1e6)
                print("trial %d load %s %-42s median %.0f us" % (t, benchutil.loadavg(), name, statistics.median(xs)))
    finally:
        benchutil.stop(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
