"""Child-process scripts and process helpers for tests/test_multiprocess.py (issue 9).

Every script uses the public API only. Every process started here runs in its own session
(process group) so that a test can kill it and everything it forked, whatever state it is in.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from support import wait_until, write_script


class Procs:
    """Processes started by one test; every one (and its process group) is killed at teardown."""

    def __init__(self) -> None:
        self.started: List[subprocess.Popen] = []

    def popen(self, args: Sequence[str], env: Dict[str, str], **kw) -> subprocess.Popen:
        """Start ``args`` in a new session; stdout/stderr captured as text unless given."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(list(args), env=env, text=True, start_new_session=True, **kw)
        self.started.append(p)
        return p

    def run(self, args: Sequence[str], env: Dict[str, str], timeout: float, **kw) -> subprocess.CompletedProcess:
        """Run to completion within ``timeout`` s; on timeout the whole group is killed and
        the result has ``returncode`` None and ``timed_out`` True."""
        p = self.popen(args, env, **kw)
        try:
            out, err = p.communicate(timeout=timeout)
            r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
            r.timed_out = False  # type: ignore[attr-defined]
        except subprocess.TimeoutExpired:
            kill_group(p)
            out, err = p.communicate()
            r = subprocess.CompletedProcess(p.args, None, out, err)
            r.timed_out = True  # type: ignore[attr-defined]
        return r

    def kill_all(self) -> None:
        """Kill every started process group (idempotent)."""
        for p in self.started:
            kill_group(p)


def kill_group(p: subprocess.Popen) -> None:
    """SIGKILL the process group led by ``p`` (it was started in its own session) and reap p."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.kill()
    except OSError:
        pass
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        pass


def py(path: str) -> List[str]:
    return [sys.executable, path]


def script(tmp_path, name: str, code: str) -> str:
    return write_script(tmp_path, name, code)


def ring_leftovers(ring_path: str) -> List[str]:
    """Files in the ring's directory whose name starts with the ring file's name minus its
    extension (the table file and any per-producer segment files)."""
    d = os.path.dirname(ring_path)
    stem = os.path.basename(ring_path).rsplit(".", 1)[0]
    try:
        return sorted(n for n in os.listdir(d) if n.startswith(stem))
    except FileNotFoundError:
        return []


def count_events(db_path: str, bucket_like: str, key_glob: Optional[str] = None) -> int:
    """Events in buckets whose key is LIKE ``bucket_like`` (and whose event key GLOBs ``key_glob``)."""
    con = sqlite3.connect(db_path, timeout=30)
    try:
        q = "SELECT COUNT(*) FROM events e JOIN buckets b ON b.id = e.bucket_id WHERE b.bucket_key LIKE ?"
        args = [bucket_like]
        if key_glob is not None:
            q += " AND e.key GLOB ?"
            args.append(key_glob)
        return con.execute(q, args).fetchone()[0]
    finally:
        con.close()


def duplicates(db_path: str, bucket_like: str) -> int:
    """Events stored more than once (same bucket, key, value and epoch)."""
    con = sqlite3.connect(db_path, timeout=30)
    try:
        q = (
            "SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) AS c FROM events e JOIN buckets b "
            "ON b.id = e.bucket_id WHERE b.bucket_key LIKE ? GROUP BY b.bucket_key, e.key, e.value_json, e.epoch)"
        )
        return con.execute(q, [bucket_like]).fetchone()[0]
    finally:
        con.close()


def wait_for(cond, timeout: float, every: float = 0.1) -> bool:
    """Poll ``cond`` until true or ``timeout`` seconds pass (support.wait_until)."""
    return wait_until(cond, timeout, every)


# --------------------------------------------------------------------------- 2. fork storm

STORM = r'''
import json, os, signal, sys, threading, time, traceback
from isstreamer import Streamer

api, n_forks, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kw = dict(access_key="k", api_base=api, flush_interval=0.05)
main = Streamer(bucket_key="storm-main", **kw)
moving = Streamer(bucket_key="storm-move-0", **kw)
stop = threading.Event()
counts = {"steady": 0, "keys": 0, "moving": 0, "made": 0}
errors = []


def guarded(fn):
    def run():
        try:
            fn()
        except BaseException:
            errors.append(traceback.format_exc())
    run.__name__ = fn.__name__
    return run


@guarded
def steady():  # keeps logging
    i = 0
    while not stop.is_set():
        for _ in range(20):
            main.log("steady", i)
            i += 1
        counts["steady"] = i
        time.sleep(0.005)


@guarded
def new_keys():  # interns a new key name every call
    i = 0
    while not stop.is_set() and i < 30000:
        main.log("key%d" % i, i)
        i += 1
        counts["keys"] = i
        time.sleep(0.001)


@guarded
def buckets():  # set_bucket (the ring's cross-process lock) over and over
    i = 0
    while not stop.is_set():
        moving.set_bucket(bucket_key="storm-move-%d" % (i // 5 % 16))
        moving.log("m", i)
        i += 1
        counts["moving"] = i
        time.sleep(0.001)


@guarded
def maker():  # new Streamers (a new ring, a new sender) all along
    i = 0
    while not stop.is_set():
        s = Streamer(bucket_key="storm-made", **kw)
        s.log("made", i)
        s.close(timeout=30)
        i += 1
        counts["made"] = i
        stop.wait(0.2)


which = sys.argv[5].split(",") if len(sys.argv) > 5 else ["steady", "new_keys", "buckets", "maker"]
threads = [threading.Thread(target=f, daemon=True) for f in (steady, new_keys, buckets, maker) if f.__name__ in which]
for t in threads:
    t.start()

live = {}
status = {"ok": 0, "hung": [], "failed": []}
checks = []


def reap(block):
    while live:
        for pid in list(live):
            got, st = os.waitpid(pid, os.WNOHANG)
            if got:
                k = live.pop(pid)
                if os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGALRM:
                    status["hung"].append(k)
                elif os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0:
                    status["ok"] += 1
                else:
                    status["failed"].append((k, st))
        if not block or len(live) < conc:
            return
        time.sleep(0.0005)


t0 = time.monotonic()
budget = float(sys.argv[4]) if len(sys.argv) > 4 else 110.0
forks = 0
for k in range(n_forks):
    if time.monotonic() - t0 > budget:
        break  # reported: the test wants every fork done
    reap(block=len(live) >= conc)
    forks += 1
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)  # a hung child dies of SIGALRM
        code = 5
        try:
            main.log("c%d" % k, k)  # a new key, in the child
            moving.set_bucket(bucket_key="storm-child-%d" % (k % 8))
            moving.log("child", k)
            # hand over and exit: a dead child's segment is drained by the sender (the final
            # counts check that every child's events arrived); waiting here would measure the
            # collector's throughput on a loaded machine, not a hang
            code = 0 if (main.flush() and moving.flush()) else 3
        except BaseException:
            traceback.print_exc()
            code = 4
        os._exit(code)
    live[pid] = k
    if k % 250 == 249:  # the sender keeps draining the parent's events during the storm
        checks.append(main.flush(30))
        print("storm: %d forks, %.1f s, %d hung, %d failed" % (k + 1, time.monotonic() - t0, len(status["hung"]),
                                                               len(status["failed"])), file=sys.stderr, flush=True)
while live:
    reap(block=True)
storm_s = time.monotonic() - t0
stop.set()
for t in threads:
    t.join(20)
alive_threads = sum(t.is_alive() for t in threads)
flushed = main.flush(30) and moving.flush(30)
st = main.stats()
print(json.dumps({"forks": forks, "counts": counts, "status": status, "checks": checks, "flushed": flushed,
                  "errors": errors, "alive_threads": alive_threads, "storm_s": storm_s,
                  "dropped": st["dropped"], "moving_dropped": moving.stats()["dropped"]}), flush=True)
main.close(timeout=30)
moving.close(timeout=30)
'''


# --------------------------------------------------------------------------- 3. exit and close races

EXIT_WHILE_LOGGING = r'''
import os, random, sys, threading, time
from isstreamer import Streamer

s = Streamer(bucket_key="exit-race", access_key="k", close_timeout=1.0, flush_interval=0.05,
             spool_max_bytes=1 << 20)
seed = int(sys.argv[1])
n = 1 + seed % 3


def spin(t):
    i = 0
    log = s.log
    while True:
        log("t%d" % t, i)
        if t and i % 7 == 0:
            log("new%d_%d" % (t, i % 500), i)
        i += 1


for t in range(n):
    threading.Thread(target=spin, args=(t,), daemon=True).start()
time.sleep(random.Random(seed).uniform(0.0, 0.15))
# no close(): the atexit close and the interpreter's exit race the daemon threads
'''

CLOSE_RACE = r'''
import sys, threading, time, traceback
from isstreamer import Streamer

rounds = int(sys.argv[1])
errors = []
for r in range(rounds):
    s = Streamer(bucket_key="close-race", access_key="k", close_timeout=0.5, flush_interval=0.05, debug_level=0)
    go = threading.Event()
    stop = threading.Event()

    def spin():
        i = 0
        go.set()
        while not stop.is_set():
            try:
                s.log("k", i)
                if i % 5 == 0:
                    s.log("k%d" % (i % 300), i)
            except BaseException:
                errors.append(traceback.format_exc())
                return
            i += 1

    ts = [threading.Thread(target=spin) for _ in range(2)]
    for t in ts:
        t.start()
    go.wait(10)
    time.sleep(0.002 * (r % 10))
    try:
        s.close(timeout=0.5)
    except BaseException:
        errors.append("close: " + traceback.format_exc())
    time.sleep(0.01)
    stop.set()
    for t in ts:
        t.join(30)
    if errors:
        break
print("ERRORS %d" % len(errors))
for e in errors[:3]:
    print(e)
'''


# --------------------------------------------------------------------------- 4. pid namespaces

PID_REUSE = r'''
# Runs as pid 1 of a fresh pid namespace (unshare --pid --fork --mount-proc).
import json, os, signal, sys, time
from isstreamer import Streamer

signal.alarm(100)
api, n = sys.argv[1], int(sys.argv[2])
s = Streamer(bucket_key="pidreuse", access_key="k", api_base=api, flush_interval=0.05, close_timeout=5)
s.log("parent", 0)
out = {"me": os.getpid()}
r, w = os.pipe()
r2, w2 = os.pipe()
worker = os.fork()
if worker == 0:
    os.close(r); os.close(w2)
    for i in range(n):
        s.log("worker", i)
    ok = s.flush(30)
    os.write(w, b"1" if ok else b"0")
    os.read(r2, 1)  # the parent pauses the sender, then lets us die
    os._exit(0)  # dies holding its segment (no close)
os.close(w); os.close(r2)
out["worker_flushed"] = os.read(r, 1) == b"1"
sender = s.sender_pid
out["sender"] = sender
os.kill(sender, signal.SIGSTOP)  # the sender must not notice the death before the pid is reused
os.write(w2, b"x")
os.waitpid(worker, 0)
out["worker"] = worker
# an unrelated long-lived process takes the dead worker's pid
impostor = None
try:
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(worker - 1))
    pid = os.fork()
    if pid == 0:
        os.execv("/bin/sleep", ["sleep", "300"])
    impostor = pid
except OSError:
    for _ in range(40000):
        pid = os.fork()
        if pid == 0:
            if os.getpid() == worker:
                os.execv("/bin/sleep", ["sleep", "300"])
            os._exit(0)
        if pid == worker:
            impostor = pid
            break
        os.waitpid(pid, 0)
out["impostor"] = impostor
out["reused"] = impostor == worker
ring_path = s.ring_path
out["ring_path"] = ring_path
os.kill(sender, signal.SIGCONT)
s.log("parent", 1)
out["parent_flushed"] = s.flush(30)
s.close(timeout=30)
t0 = time.monotonic()
while time.monotonic() - t0 < 30:
    try:
        gone = os.waitpid(-1, os.WNOHANG)  # pid 1 reaps what it inherits
    except ChildProcessError:
        pass
    try:
        with open("/proc/%d/stat" % sender) as f:
            alive = f.read().split(") ")[1][0] not in "ZX"
    except OSError:
        alive = False
    if not alive:
        break
    time.sleep(0.1)
out["sender_exited"] = not alive
out["sender_exit_s"] = time.monotonic() - t0
d = os.path.dirname(ring_path)
stem = os.path.basename(ring_path).rsplit(".", 1)[0]
t1 = time.monotonic()
while not alive and time.monotonic() - t1 < 10 and any(x.startswith(stem) for x in os.listdir(d)):
    time.sleep(0.1)
out["leftovers"] = [x for x in os.listdir(d) if x.startswith(stem)]
out["stats"] = {k: v for k, v in s.stats().items() if k in ("logged", "sent", "dropped")}
if impostor:
    os.kill(impostor, signal.SIGKILL)
print(json.dumps(out), flush=True)
'''

NS_A = r'''
# Namespace A: creates the Streamer, hands it (pickled) to namespace B, keeps logging.
import json, os, pickle, signal, sys, time
from isstreamer import Streamer

signal.alarm(150)
api, handoff, stopfile = sys.argv[1], sys.argv[2], sys.argv[3]
s = Streamer(bucket_key="ns-shared", access_key="k", api_base=api, flush_interval=0.05, close_timeout=10)
with open(handoff + ".tmp", "wb") as f:
    pickle.dump(s, f)
os.rename(handoff + ".tmp", handoff)
print("ready", os.getpid(), s.sender_pid, s.ring_path, flush=True)
i = 0
t0 = time.monotonic()
while not os.path.exists(stopfile) and time.monotonic() - t0 < 120:
    for _ in range(50):
        s.log("a", i)
        i += 1
    time.sleep(0.005)
ok = s.flush(60)
st = s.stats()
print(json.dumps({"logged": i, "flushed": ok, "stats_logged": st["logged"], "dropped": st["dropped"]}), flush=True)
s.close(timeout=30)
'''

NS_B = r'''
# Namespace B: unpickles A's Streamer and logs into the same ring, while A logs too.
import json, os, pickle, signal, sys, time

signal.alarm(150)
handoff, n = sys.argv[1], int(sys.argv[2])
# move away from the small pids that are alive in namespace A (its pid 1, its sender...)
try:
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write("4000")
except OSError:
    for _ in range(200):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
pid = os.fork()
if pid == 0:
    signal.alarm(120)
    with open(handoff, "rb") as f:
        s = pickle.load(f)
    t0 = time.monotonic()
    for i in range(n):
        s.log("b", i)
        if i % 200 == 199:
            time.sleep(0.01)  # spread over a few seconds: the other namespace's sender runs meanwhile
    ok = s.flush(30)
    st = s.stats()
    print(json.dumps({"pid": os.getpid(), "flushed": ok, "dropped": st["dropped"],
                      "log_s": time.monotonic() - t0}), flush=True)
    s.close(timeout=30)
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
'''


# --------------------------------------------------------------------------- 6. orphans

ORPHAN_PRODUCER = r'''
import os, signal, sys, time
from isstreamer import Streamer

signal.alarm(120)
api, spool, n, nchildren = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = Streamer(bucket_key="orphan", access_key="orphan-key", api_base=api, spool_dir=spool, flush_interval=0.05)
sender = s.sender_pid
os.kill(sender, signal.SIGSTOP)  # nothing leaves the ring from now on
kids = []
for c in range(nchildren):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        for i in range(n):
            s.log("child%d" % c, i)
        os.write(w, b"1")
        time.sleep(300)
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    kids.append(pid)
for i in range(n):
    s.log("parent", i)
print(sender, s.ring_path, " ".join(map(str, kids)), flush=True)
time.sleep(300)
'''

ADOPTER = r'''
import json, sys
from isstreamer import Streamer

api, spool = sys.argv[1], sys.argv[2]
s = Streamer(bucket_key="adopter", access_key="orphan-key", api_base=api, spool_dir=spool, flush_interval=0.05)
s.log("fresh", 1)
print(json.dumps({"flushed": s.flush(30)}), flush=True)
s.close(timeout=30)
'''

RING_TOO_BIG = r'''
import os, sys
from isstreamer import Streamer
d = os.environ["ISSTREAMER_RING_DIR"]
before = sorted(os.listdir(d))
try:
    Streamer(bucket_key="toobig", access_key="k", ring_size=1 << int(sys.argv[1]))
except BaseException as exc:
    print("RAISED %s: %s" % (type(exc).__name__, exc))
else:
    print("NO EXCEPTION")
print("LEFT", sorted(set(os.listdir(d)) - set(before)))
'''


# --------------------------------------------------------------------------- 8. signals

SIGNAL_LOG = r'''
import json, signal, sys, time
from isstreamer import Streamer

n = int(sys.argv[1])
s = Streamer(bucket_key="signals", access_key="k", flush_interval=0.05)
fired = [0]


def on_alarm(signum, frame):
    k = fired[0]
    fired[0] += 1
    s.log("sig", k)


signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
t0 = time.monotonic()
for i in range(n):
    s.log("main", i)
    if i % 1000 == 0:
        s.log("k%d" % (i // 1000), i)  # a new key now and then (the interning path)
signal.setitimer(signal.ITIMER_REAL, 0, 0)
took = time.monotonic() - t0
ok = s.flush(60)
st = s.stats()
print(json.dumps({"fired": fired[0], "took": took, "flushed": ok, "logged": st["logged"],
                  "dropped": st["dropped"]}), flush=True)
s.close(timeout=30)
'''


def readline(p: subprocess.Popen, timeout: float) -> Optional[str]:
    """One line of ``p``'s stdout, or None if none came within ``timeout`` s."""
    import threading

    box: List[str] = []
    t = threading.Thread(target=lambda: box.append(p.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    return box[0] if box else None


def last_json(text: str):
    """The last line of ``text`` that parses as a JSON object (None if none)."""
    import json

    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


EXIT_FORKED = r'''
# Many interpreter exits for one sender: each forked child starts daemon threads that log in a
# tight loop, then leaves with sys.exit() (a normal interpreter exit: the atexit close runs
# while the threads are still inside log()). The parent reports each child's exit status.
import json, os, random, signal, sys, threading, time
from isstreamer import Streamer

runs, first = int(sys.argv[1]), int(sys.argv[2])
s = Streamer(bucket_key="exit-race-fork", access_key="k", close_timeout=0.3, flush_interval=0.05,
             spool_max_bytes=1 << 20)
s.log("parent", 0)


def spin(t):
    i = 0
    log = s.log
    while True:
        log("t%d" % t, i)
        if t and i % 7 == 0:
            log("new%d_%d" % (t, i % 500), i)
        i += 1


live = {}
bad = []


def reap(block):
    while live:
        for pid in list(live):
            got, st = os.waitpid(pid, os.WNOHANG)
            if got:
                k = live.pop(pid)
                if not (os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0):
                    bad.append((k, os.waitstatus_to_exitcode(st)))
        if not block or len(live) < 2:
            return
        time.sleep(0.001)


for k in range(first, first + runs):
    reap(block=len(live) >= 2)
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)  # a hang at exit shows as -14
        for t in range(1 + k % 3):
            threading.Thread(target=spin, args=(t,), daemon=True).start()
        time.sleep(random.Random(k).uniform(0.0, 0.05))
        sys.exit(0)  # normal interpreter exit, no close(), threads still logging
    live[pid] = k
while live:
    reap(block=True)
print(json.dumps({"bad": bad}), flush=True)
'''


def pid_gone(pid: int) -> bool:
    """True when ``pid`` is not a running process (a zombie counts as gone); /proc only, so that
    the tests depend on no isstreamer module but the public API."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] in (b"Z", b"X")
