"""Diagnostic, no target: where the CPU of delivery goes, per thread, for 1M floats from one producer.

Prints, per round, the CPU of each sender thread (the main loop: drain and encode; the HTTP
worker: the POST) and of the counting server, against the round's wall time. The sender sends
one request at a time and its main loop waits while it is out, so the sender's and the server's
CPU per event add up, plus the gaps between them: the share of the wall time they were busy
shows how much of the round is hand-off waits (compare with flush_e2e.py).

    python benchmarks/sender_threads.py
"""

import glob, os, sys, tempfile, time  # noqa: E401

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(__file__))]
import benchutil, isstreamer


def threads(pid):
    out = {}
    for d in glob.glob("/proc/%d/task/*" % pid):
        try:
            with open(d + "/stat") as f:
                fl = f.read().rsplit(")", 1)[1].split()
            with open(d + "/comm") as f:
                name = f.read().strip()
            out[d.rsplit("/", 1)[1] + ":" + name] = (int(fl[11]) + int(fl[12])) / benchutil.CLK_TCK
        except OSError:
            pass
    return out


p, url = benchutil.start_count_server()
try:
    s = isstreamer.Streamer(access_key="b", bucket_name="b", api_base=url, spool_dir=tempfile.mkdtemp())
    s.log("t", 1.0)
    s.flush(timeout=30)
    spid, vpid = s.sender_pid, benchutil.count_of(url, "pid")
    for _round in range(3):
        th0, v0 = threads(spid), benchutil.proc_cpu_seconds(vpid)
        t0 = time.perf_counter()
        for _ in range(1_000_000):
            s.log("temperature", 21.5)
        t1 = time.perf_counter()
        s.flush(timeout=120)
        t2 = time.perf_counter()
        th1, v1 = threads(spid), benchutil.proc_cpu_seconds(vpid)
        d = {k: th1[k] - th0.get(k, 0) for k in th1}
        print(
            "load %s wall %.2f s (loop %.2f): server CPU %.2f s; sender threads CPU %s; sender+server %.2f s = %.0f%% of wall"
            % (
                benchutil.loadavg(),
                t2 - t0,
                t1 - t0,
                v1 - v0,
                {k: round(v, 2) for k, v in d.items() if v > 0},
                sum(d.values()) + v1 - v0,
                100 * (sum(d.values()) + v1 - v0) / (t2 - t0),
            )
        )
    s.close(30)
finally:
    benchutil.stop(p)
