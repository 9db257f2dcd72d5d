"""Does ``flush()`` wait on the network? A local server that answers ``/api/events`` after 300 ms.

Run once with each client (no target; a check of what the flush loop in flush_e2e.py compares):

    benchmarks/.peers-venv/bin/python benchmarks/flush_blocks.py 2.0.0    # ISStreamer 2.0.0, use_async=True
    python benchmarks/flush_blocks.py isstreamer

2.0.0's ``flush()`` takes the full 300 ms (it POSTs in the caller's thread whatever ``use_async``
says); isstreamer's ``flush()`` returns at once and ``flush(timeout=10)`` after the answer.
"""

import http.server, os, sys, tempfile, threading, time  # noqa: E401


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self.rfile.read(n)
        if self.path.startswith("/api/events"):
            time.sleep(0.3)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
url = "http://127.0.0.1:%d" % srv.server_address[1]
which = sys.argv[1]
obj = {"a": 1, "b": 2.5}
if which == "2.0.0":
    from ISStreamer.Streamer import Streamer

    d = tempfile.mkdtemp()
    ini = os.path.join(d, "i.ini")
    open(ini, "w").write(
        "[isstreamer.client_config]\naccess_key = k\n[isstreamer.api_config]\nstream_api_base = %s\n" % url
    )
    os.chdir(d)
    s = Streamer(bucket_name="b", bucket_key="b", access_key="k", ini_file_location=ini)  # use_async=True default
    time.sleep(0.5)
    for _ in range(3):
        s.log_object(obj)
        t0 = time.perf_counter()
        s.flush()
        print("2.0.0 use_async=True flush(): %.0f ms" % ((time.perf_counter() - t0) * 1e3))
else:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import isstreamer

    s = isstreamer.Streamer(bucket_name="b", bucket_key="b", access_key="k", api_base=url, spool_dir=tempfile.mkdtemp())
    s.log("w", 1)
    s.flush(timeout=5)
    for _ in range(3):
        s.log_object(obj)
        t0 = time.perf_counter()
        s.flush()
        print("isstreamer flush(): %.1f ms" % ((time.perf_counter() - t0) * 1e3))
        s.log_object(obj)
        t0 = time.perf_counter()
        ok = s.flush(timeout=10)
        print("isstreamer flush(timeout=10): %.0f ms %s" % ((time.perf_counter() - t0) * 1e3, ok))
    s.close(10)
