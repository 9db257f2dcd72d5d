"""Where the time goes: the producer's ``log()`` and the sender, profiled on this machine.

    python benchmarks/profile_hotpath.py ladder      # log() float cost, one layer at a time
    python benchmarks/profile_hotpath.py callgrind   # instructions per log() call, by function
    python benchmarks/profile_hotpath.py sender      # py-spy of the sender delivering 2M events
    python benchmarks/profile_hotpath.py log-object  # cProfile of log_object(10-key dict)
    python benchmarks/profile_hotpath.py all

Everything runs against local processes only (a counting server on 127.0.0.1, or a closed port
with the sender paused). ``callgrind`` needs valgrind (Debian package), ``sender`` needs py-spy
(``pip install py-spy``). Not part of the pytest suite: these are diagnostics, their numbers are
not ratios from one run.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import benchutil  # noqa: E402

NAN = float("nan")


def _paused_streamer(tmp: str, ring_mb: int = 256):
    """A native Streamer whose sender is paused (SIGSTOP), so only the producer runs."""
    import isstreamer

    s = isstreamer.Streamer(
        bucket_name="prof",
        access_key="k",
        api_base="http://127.0.0.1:%d" % benchutil.free_port_closed(),
        spool_dir=os.path.join(tmp, "spool"),
        ring_size=ring_mb << 20,
        full_timeout=60.0,
    )
    s.log("temperature", 1.0)
    spid = benchutil.sender_pid(s)
    os.kill(spid, signal.SIGSTOP)
    return s, spid


def _median_ns(fn, n: int, reps: int = 9) -> float:
    r = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        r.append(time.perf_counter() - t0)
    r.sort()
    return r[len(r) // 2] / n * 1e9


def ladder() -> None:
    """log(float) on the native backend, built up one layer at a time (sender paused)."""
    tmp = tempfile.mkdtemp(prefix="isstreamer-prof-")
    s, spid = _paused_streamer(tmp)
    n = 100_000
    rows = []
    try:

        class Noop:
            def log(self, key, value):
                return None

        class Clock:
            def log(self, key, value, _now=time.time):
                _now()

        def loop(f, v=21.5):
            def run():
                for _ in range(n):
                    f("temperature", v)

            return run

        rows.append(("no-op method call (floor)", _median_ns(loop(Noop().log), n)))
        rows.append(("method call + time.time() (FLOOR)", _median_ns(loop(Clock().log), n)))
        p = s._p
        if hasattr(s, "_log_f64"):  # interned-key hot path: iss_log_f64[_at](p, key_id, v[, epoch])
            kid = s._keys["temperature"]
            c_fn = s._log_f64
            try:
                c_fn(p, kid, 21.5)
                extra = ()
            except TypeError:
                extra = (NAN,)
            if extra:

                def direct():
                    for _ in range(n):
                        c_fn(p, kid, 21.5, NAN)
            else:

                def direct():
                    for _ in range(n):
                        c_fn(p, kid, 21.5)

            label = "cffi %s(p, key_id, v%s) alone" % (
                getattr(c_fn, "__name__", "iss_log_f64"),
                ", NaN" if extra else "",
            )

            class Body:  # Streamer.log's Python work for a float, the C call replaced by a constant
                def __init__(self):
                    self._keys, self._p = s._keys, p

                def log(self, key, value, epoch=None):
                    try:
                        if epoch is None:
                            ep = NAN
                        elif type(epoch) is float and 0.0 < epoch < 1e11:
                            ep = epoch
                        else:
                            return None
                        kid = self._keys[key]
                        t = type(value)
                        if t is float:
                            rc = 0
                        else:
                            return None
                    except (KeyError, TypeError):
                        return None
                    if rc:
                        return None
        else:  # key-bytes hot path: iss_put_f64(p, key, keylen, v, epoch)
            kb = b"temperature"
            c_fn = s._put_f64

            def direct():
                for _ in range(n):
                    c_fn(p, kb, 11, 21.5, NAN)

            label = "cffi iss_put_f64(p, key, keylen, v, NaN) alone"

            class Body:
                def __init__(self):
                    self._keys, self._p = s._keys, p

                def log(self, key, value, epoch=None):
                    kb = self._keys.get(key)
                    if kb is None:
                        return None
                    ep = NAN if epoch is None else epoch
                    if type(value) is float:
                        rc = 0
                    if rc:
                        return None

        rows.append(("log()'s Python body, no C call", _median_ns(loop(Body().log), n)))
        rows.append((label, _median_ns(direct, n)))
        rows.append(("Streamer.log(\"temperature\", 21.5)", _median_ns(loop(s.log), n)))
        fill = benchutil.segment_fill(s)
    finally:
        os.kill(spid, signal.SIGCONT)
        s.close(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print("log(float), native backend, sender paused, warm loop of %d calls, median of 9:" % n)
    for name, ns in rows:
        print("  %-58s %6.0f ns" % (name, ns))
    print("  (ring segment %.0f%% full at the end)" % (fill * 100))


_CG_CHILD = r"""
import os, signal, sys, time
sys.path[:0] = [%(root)r, %(here)r]
import benchutil, isstreamer
s = isstreamer.Streamer(bucket_name="prof", access_key="k", api_base="http://127.0.0.1:9",
                        spool_dir=%(spool)r, ring_size=256 << 20, full_timeout=60.0)
s.log("temperature", 1.0)
os.kill(benchutil.sender_pid(s), signal.SIGSTOP)
class Noop:
    def log(self, key, value):
        return None
class Clock:
    def log(self, key, value, _now=time.time):
        _now()
log = {"log": s.log, "noop": Noop().log, "floor": Clock().log}[sys.argv[2]]
n = int(sys.argv[1])
def run():
    for _ in range(n):
        log("temperature", 21.5)
run()
os.kill(benchutil.sender_pid(s), signal.SIGKILL)
os._exit(0)
"""


def _callgrind_run(child: str, calls: int, out: str, mode: str = "log") -> str:
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, sys.executable, child, str(calls), mode],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=900,
    )
    return subprocess.run(
        ["callgrind_annotate", "--auto=no", "--threshold=100", out], capture_output=True, text=True
    ).stdout


def _callgrind_functions(ann: str):
    """(total, {function: self instructions}) from callgrind_annotate's function summary."""
    total, fns, in_fns = 0, {}, False
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(.*)$", line)
        if "PROGRAM TOTALS" in line and m:
            total = int(m.group(1).replace(",", ""))
        elif line.strip().endswith("file:function"):
            in_fns = True
        elif in_fns and m and m.group(2):
            name = m.group(2).split(" [")[0]
            file, _, fn = name.rpartition(":")
            key = "%s:%s" % (os.path.basename(file), fn)
            fns[key] = fns.get(key, 0) + int(m.group(1).replace(",", ""))
    return total, fns


_CATEGORIES = [
    ("C: ring write + clock (iss_*, put, clock_gettime)", r"ring\.c:|iss_|clock_gettime|vdso|now_realtime"),
    (
        "GIL released and retaken around the C call (cffi)",
        r"take_gil|drop_gil|SaveThread|RestoreThread|pthread_|"
        r"ceval_gil|_PyThreadState|futex",
    ),
    (
        "cffi wrapper: argument tuple, unpacking, conversion, result int",
        r"_cffi_|_native\.c:|convert_from_object|_prepare_pointer|PyArg_Unpack|tupledealloc|_PyTuple_FromArray|"
        r"MakeTpCall|PyLong_FromLong|Py_TYPE|cdata|PyLong_As|_PyObject_Vectorcall|vectorcall|tupleobject",
    ),
    ("dict lookups (key -> id, attributes)", r"dictobject\.c|_PyType_Lookup|GetMethod|GenericGetAttr"),
    (
        "interpreter: bytecode of log() and the loop, frames",
        r"ceval\.c|frame\.c|object\.h|_PyFrame|rangeobject|"
        r"obmalloc|floatobject|longobject",
    ),
]


def callgrind(n: int = 100_000) -> None:
    """Instructions per log() call: callgrind of 2n calls minus n calls (same start-up), by function."""
    if not shutil.which("valgrind"):
        print("callgrind: valgrind is not installed (apt-get install valgrind)")
        return
    tmp = tempfile.mkdtemp(prefix="isstreamer-cg-")
    child = os.path.join(tmp, "child.py")
    with open(child, "w") as f:
        f.write(_CG_CHILD % {"root": ROOT, "here": HERE, "spool": os.path.join(tmp, "spool")})
    _callgrind_run(child, 10, os.path.join(tmp, "cg.warm"))  # byte-compile everything first
    t1, f1 = _callgrind_functions(_callgrind_run(child, n, os.path.join(tmp, "cg.1")))
    t2, f2 = _callgrind_functions(_callgrind_run(child, 2 * n, os.path.join(tmp, "cg.2")))
    per_call = (t2 - t1) / n
    floors = {}
    for mode in ("noop", "floor"):
        a, _ = _callgrind_functions(_callgrind_run(child, n, os.path.join(tmp, "cg.%s1" % mode), mode))
        b, _ = _callgrind_functions(_callgrind_run(child, 2 * n, os.path.join(tmp, "cg.%s2" % mode), mode))
        floors[mode] = (b - a) / n
    print("callgrind: instructions per call (loop included, deterministic: a ratio free of the machine's noise)")
    print(
        "  no-op method call %.0f; method call + time.time() (FLOOR) %.0f; Streamer.log(float) %.0f = %.2fx FLOOR"
        % (floors["noop"], floors["floor"], per_call, per_call / floors["floor"])
    )
    diff = sorted((((f2.get(k, 0) - f1.get(k, 0)) / n, k) for k in set(f1) | set(f2)), reverse=True)
    cats: dict = {}
    for ins, name in diff:
        cat = next((c for c, pat in _CATEGORIES if re.search(pat, name)), "other")
        cats[cat] = cats.get(cat, 0.0) + ins
    print("  by category (self instructions per call):")
    for cat, ins in sorted(cats.items(), key=lambda kv: -kv[1]):
        print("  %7.0f  %5.1f%%  %s" % (ins, ins / per_call * 100, cat))
    print("  self instructions per call, top functions:")
    shown = 0.0
    for ins, name in diff[:30]:
        if ins < 2:
            break
        shown += ins
        print("  %7.1f  %5.1f%%  %s" % (ins, ins / per_call * 100, name[:100]))
    print("  (%.0f%% of the per-call instructions shown)" % (shown / per_call * 100 if per_call else 0))
    shutil.rmtree(tmp, ignore_errors=True)


def sender(events: int = 2_000_000) -> None:
    """py-spy samples of the sender while one producer logs ``events`` floats to the counting server."""
    if not shutil.which("py-spy"):
        print("sender: py-spy is not installed (pip install py-spy)")
        return
    import isstreamer

    tmp = tempfile.mkdtemp(prefix="isstreamer-spy-")
    server, url = benchutil.start_count_server()
    try:
        s = isstreamer.Streamer(bucket_name="prof", access_key="k", api_base=url, spool_dir=os.path.join(tmp, "sp"))
        s.log("temperature", 1.0)
        s.flush(30)
        spid = benchutil.sender_pid(s)
        raw = os.path.join(tmp, "sender.txt")
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(spid), "--rate", "400", "--format", "raw", "--native", "-o", raw],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        c0 = benchutil.proc_cpu_seconds(spid)
        t0 = time.perf_counter()
        log = s.log
        for _ in range(events):
            log("temperature", 21.5)
        s.flush(120)
        dt = time.perf_counter() - t0
        cpu = benchutil.proc_cpu_seconds(spid) - c0
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        s.close(timeout=30)
        print(
            "sender: %d events in %.2f s (%.0f ev/s), sender CPU %.2f s = %.2f s per million events"
            % (events, dt, events / dt, cpu, cpu / events * 1e6)
        )
        _summarise_raw(raw)
    finally:
        benchutil.stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


def _summarise_raw(path: str, top: int = 18) -> None:
    self_c: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = [re.sub(r" \(.*?([^/]+\.\w+):\d+\)$", r" (\1)", fr) for fr in stack.split(";")]
            total += n
            self_c[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    if not total:
        print("  no samples")
        return
    idle = sum(n for fr, n in self_c.items() if "sleep" in fr or "select" in fr or "poll" in fr)
    print("  %d samples (%.0f%% in sleep/poll); inclusive %% of samples, top frames:" % (total, idle / total * 100))
    for fr, n in incl.most_common(top):
        print("   %5.1f%%  %s" % (n / total * 100, fr[:120]))
    print("  self %%, top frames:")
    for fr, n in self_c.most_common(12):
        print("   %5.1f%%  %s" % (n / total * 100, fr[:120]))


def log_object() -> None:
    """cProfile of log_object(10-key dict) on the native backend (sender paused)."""
    from test_log_cost import OBJECT

    tmp = tempfile.mkdtemp(prefix="isstreamer-prof-")
    s, spid = _paused_streamer(tmp, 64)
    try:
        n = 2000
        t = _median_ns(lambda: [s.log_object(OBJECT) for _ in range(n)], n, reps=5)
        print("log_object(10-key dict): %.0f ns per call, %.0f ns per event (native, sender paused)" % (t, t / 10))
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(n):
            s.log_object(OBJECT)
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(14)
        print("\n".join(line for line in buf.getvalue().splitlines()[4:] if line.strip()))
    finally:
        os.kill(spid, signal.SIGCONT)
        s.close(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="ladder", choices=["ladder", "callgrind", "sender", "log-object", "all"])
    args = ap.parse_args()
    for name, fn in (("ladder", ladder), ("callgrind", callgrind), ("sender", sender), ("log-object", log_object)):
        if args.what in (name, "all"):
            print("==", name)
            fn()
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
