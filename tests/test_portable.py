"""Where ISStreamer 2.0.0 ran (issue 18): the thread mode on a platform without the process
model's primitives, and the process model with ring files on an ordinary disk.

No Windows or macOS machine is here, so both are simulated, and said so:

* **Windows-like**: a ``sitecustomize.py`` on ``PYTHONPATH`` makes ``fcntl`` unimportable and
  removes ``os.fork`` and ``os.register_at_fork`` before anything is imported, so the library's
  own decision code (isstreamer.models) picks the thread mode. What is not simulated: Windows'
  file and memory APIs themselves (``mmap`` of anonymous memory, ``msvcrt`` locks).
* **macOS-like**: ``mmap.MADV_REMOVE`` removed (so consumed pages are kept, as on macOS) and the
  ring files in an ordinary directory of the disk instead of /dev/shm. What is not simulated:
  macOS's ``struct flock`` layout (isstreamer.ring.files has the BSD one) and its page cache.

Every scenario runs in a child Python against a real local collector.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from support import ROOT, int_values_summary, script_env, wait_until, write_script

WINDOWS_LIKE = '''
"""Simulate a platform without POSIX process primitives (as Windows): before anything imports
them, fcntl is made unavailable and os.fork / os.register_at_fork are removed."""
import os
import sys

sys.modules["fcntl"] = None  # "import fcntl" raises ImportError
for _name in ("fork", "forkpty", "register_at_fork"):
    if hasattr(os, _name):
        delattr(os, _name)
'''

MACOS_LIKE = '''
"""Simulate macOS's process model: no MADV_REMOVE (consumed pages are kept)."""
import mmap

if hasattr(mmap, "MADV_REMOVE"):
    del mmap.MADV_REMOVE
'''


def _env(tmp_path, site: str, backend: str = "native", **extra: str) -> dict:
    """The environment of a child with ``site`` as its sitecustomize."""
    d = tmp_path / "site"
    d.mkdir(exist_ok=True)
    (d / "sitecustomize.py").write_text(textwrap.dedent(site))
    env = script_env(backend)
    env.pop("ISSTREAMER_MODE", None)
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(d), ROOT])
    return env


def _run(tmp_path, code: str, args, env: dict, timeout: float = 180) -> dict:
    script = write_script(tmp_path, "scenario.py", code)
    r = subprocess.run(
        [sys.executable, script] + [str(a) for a in args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(tmp_path),
    )
    assert r.returncode == 0, "exit %s\n%s" % (r.returncode, r.stderr[-4000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["stderr"] = r.stderr
    return out


def _delivered(collector, bucket: str, n: int, timeout: float = 60, key: str = "v") -> int:
    """Distinct values of ``key`` in ``bucket`` once ``n`` have arrived (or ``timeout`` passed)."""
    wait_until(lambda: int_values_summary(collector.db_path, bucket, key)[1] >= n, timeout)
    return int_values_summary(collector.db_path, bucket, key)[1]


# --------------------------------------------------------------------------- the Windows-like path

IMPORT_ONLY = r'''
import json, sys
sys.modules["fcntl"] = None
from ISStreamer.Streamer import Streamer
s = Streamer(bucket_key="nofcntl", access_key="k", api_base=sys.argv[1])
for i in range(100):
    s.log("v", i)
ok = s.flush(30)
st = s.stats()
s.close()
print(json.dumps({"ok": ok, "mode": st["mode"], "sent": s.stats()["sent"]}))
'''


def test_the_library_imports_and_delivers_without_fcntl(tmp_path, collector):
    """Issue 18: ``sys.modules['fcntl'] = None`` before ``from ISStreamer.Streamer import
    Streamer``: the import works, the thread mode is chosen, every event is delivered."""
    env = script_env("native")
    env.pop("ISSTREAMER_MODE", None)
    out = _run(tmp_path, IMPORT_ONLY, [collector.url], env)
    assert out == {**out, "ok": True, "mode": "thread", "sent": 100}, out
    assert _delivered(collector, "nofcntl", 100) == 100


EVERY_MODULE = r'''
import importlib, json, pkgutil, sys
import isstreamer
names = sorted(m.name for m in pkgutil.walk_packages(isstreamer.__path__, "isstreamer.") if m.name != "isstreamer._native")
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - reported
        failed[name] = repr(exc)
print(json.dumps({"modules": len(names), "failed": failed, "fcntl": "fcntl" in sys.modules and sys.modules["fcntl"] is not None}))
'''


def test_every_module_imports_without_posix_process_primitives(tmp_path):
    """No module needs fcntl, fork or register_at_fork to be imported (the POSIX-only parts are
    behind the decision point and isstreamer.ring.files)."""
    out = _run(tmp_path, EVERY_MODULE, [], _env(tmp_path, WINDOWS_LIKE))
    assert out["modules"] > 30 and out["failed"] == {} and not out["fcntl"], out


CORE = r'''
import json, sys, time
from isstreamer import Streamer
api, bucket = sys.argv[1], sys.argv[2]
s = Streamer(bucket_key=bucket, access_key="k", api_base=api)
st = s.stats()
for i in range(20000):
    s.log("v", i)
s.log_object({"a": 1, "b": 2.5, "c": "x"}, key_prefix="obj")
ok = s.flush(60)
s.set_bucket(bucket_key=bucket + "-2")
for i in range(100):
    s.log("w", i)
s.close()
print(json.dumps({"mode": st["mode"], "flushed": ok, "sent": s.stats()["sent"], "dropped": s.stats()["dropped"]}))
'''


def test_thread_mode_logs_objects_flushes_switches_buckets_and_closes(tmp_path, collector, backend):
    """The thread mode, chosen by the decision code where fcntl and fork are missing: log,
    log_object, flush, set_bucket, close: every event delivered, nothing dropped."""
    out = _run(tmp_path, CORE, [collector.url, "win-core"], _env(tmp_path, WINDOWS_LIKE, backend))
    assert out["mode"] == "thread" and out["flushed"] and out["dropped"] == {}, out
    assert out["sent"] == 20000 + 3 + 100, out
    assert _delivered(collector, "win-core", 20000) == 20000
    assert _delivered(collector, "win-core-2", 100, key="w") == 100


EXIT = r'''
import sys
from isstreamer import Streamer
s = Streamer(bucket_key="win-exit", access_key="k", api_base=sys.argv[1])
for i in range(5000):
    s.log("v", i)
# no flush, no close: interpreter exit drains within close_timeout
'''


def test_thread_mode_delivers_everything_at_exit_without_close(tmp_path, collector):
    """Nothing lost at exit: a script that never calls flush() or close()."""
    script = write_script(tmp_path, "exit.py", EXIT)
    r = subprocess.run(
        [sys.executable, script, collector.url],
        env=_env(tmp_path, WINDOWS_LIKE),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert _delivered(collector, "win-exit", 5000) == 5000


POOL = r'''
import json, multiprocessing as mp, sys
from isstreamer import Streamer

def init(s):
    global S
    S = s

def work(k):
    for i in range(1000):
        S.log("v", k * 1000 + i)
    return k

if __name__ == "__main__":
    s = Streamer(bucket_key="win-pool", access_key="k", api_base=sys.argv[1])
    with mp.get_context("spawn").Pool(3, initializer=init, initargs=(s,), maxtasksperchild=2) as pool:
        done = sorted(pool.map(work, range(12)))
        pool.close()
        pool.join()
    s.close()
    print(json.dumps({"done": len(done), "mode": s.stats()["mode"]}))
'''


def test_thread_mode_spawn_pool_delivers_every_workers_events(tmp_path, collector):
    """A spawn pool (workers replaced every 2 tasks): each worker runs its own sender thread and
    drains it when it exits; every event arrives."""
    out = _run(tmp_path, POOL, [collector.url], _env(tmp_path, WINDOWS_LIKE))
    assert out["done"] == 12 and out["mode"] == "thread", out
    assert _delivered(collector, "win-pool", 12000) == 12000


OUTAGE = r'''
import json, socket, sys
from isstreamer import Streamer
api, spool = sys.argv[1], sys.argv[2]
dead = socket.socket()
dead.bind(("127.0.0.1", 0))
down = "http://127.0.0.1:%d" % dead.getsockname()[1]  # nobody listens: connection refused
s = Streamer(bucket_key="win-outage", access_key="k", api_base=down, spool_dir=spool, close_timeout=1,
             max_attempts=1)
for i in range(3000):
    s.log("v", i)
s.close()
dead.close()
print(json.dumps({"spooled": s.stats()["spooled"], "mode": s.stats()["mode"]}))
'''


def test_thread_mode_spools_an_outage_and_replays_it(tmp_path, collector):
    """The API unreachable: the events go to the spool at close; ``isstreamer replay`` (the same
    replay loop as the sender's) delivers them once the API answers."""
    spool = tmp_path / "spool"
    out = _run(tmp_path, OUTAGE, [collector.url, spool], _env(tmp_path, WINDOWS_LIKE))
    assert out["mode"] == "thread" and out["spooled"] == 3000, out
    # the spool was written for the dead API base: replay it to the collector from the command line
    r = subprocess.run(
        [sys.executable, "-m", "isstreamer.cli", "replay", str(spool), "--api-base", collector.url],
        env={**_env(tmp_path, WINDOWS_LIKE), "ISSTREAMER_ACCESS_KEY": "k"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert _delivered(collector, "win-outage", 3000) == 3000


RULES = r'''
import json, sys
from isstreamer import Streamer, Window
s = Streamer(bucket_key="win-rules", access_key="k", api_base=sys.argv[1], rules={"t": Window(1.0, stats=("mean", "count"))})
for i in range(1000):
    s.log("t", float(i % 10), epoch=1.7e9 + i * 0.01)  # ten 1 s windows of 100 events
s.close()
print(json.dumps({"mode": s.stats()["mode"], "folded": s.stats()["folded"]}))
'''


def test_thread_mode_downsamples(tmp_path, collector):
    """The rules run in the sender thread as in the sender process: ten windows, each a mean
    and a count of 100."""
    out = _run(tmp_path, RULES, [collector.url], _env(tmp_path, WINDOWS_LIKE))
    assert out["mode"] == "thread" and out["folded"] == 1000, out
    assert wait_until(lambda: int_values_summary(collector.db_path, "win-rules", "t_count")[0] >= 10, 60)
    count, _, lo, hi, total = int_values_summary(collector.db_path, "win-rules", "t_count")
    assert (count, lo, hi, total) == (10, 100, 100, 1000)


def test_the_mode_can_be_forced(tmp_path, collector):
    """``ISSTREAMER_MODE=thread`` on Linux: the thread mode; ``=process`` where it cannot run: a
    clear error."""
    env = script_env("native", ISSTREAMER_MODE="thread")
    out = _run(tmp_path, CORE, [collector.url, "forced"], env)
    assert out["mode"] == "thread" and out["sent"] == 20103, out
    env = _env(tmp_path, WINDOWS_LIKE, ISSTREAMER_MODE="process")
    script = write_script(tmp_path, "forced.py", "from isstreamer import Streamer\nStreamer(access_key='k')\n")
    r = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "ISSTREAMER_MODE=process" in r.stderr and "fcntl" in r.stderr, r.stderr


# --------------------------------------------------------------------------- the macOS-like path

MAC_POOL = r'''
import json, multiprocessing as mp, os, sys
from isstreamer import Streamer

def init(s):
    global S
    S = s

def work(k):
    for i in range(2000):
        S.log("v", k * 2000 + i)
    S.flush()
    return k

if __name__ == "__main__":
    s = Streamer(bucket_key="mac-" + sys.argv[2], access_key="k", api_base=sys.argv[1], ring_size=1 << 20)
    ring_dir = os.path.dirname(s.ring_path)
    with mp.get_context(sys.argv[2]).Pool(3, initializer=init, initargs=(s,)) as pool:
        pool.map(work, range(9))
    for i in range(60000):  # more than a lap of the 1 MiB segment: pages are reused, never punched
        s.log("w", i)
    ok = s.flush(60)
    s.close()
    print(json.dumps({"ok": ok, "mode": s.stats()["mode"], "ring_dir": ring_dir, "sent": s.stats()["sent"]}))
'''


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_model_with_ring_files_on_disk_and_no_madv_remove(tmp_path, collector, method):
    """The process model as on macOS: ring files in an ordinary directory, consumed pages never
    returned (no MADV_REMOVE); a fork and a spawn pool, and a segment that wraps: everything
    delivered, the ring's files removed at the end."""
    ring_dir = tmp_path / "rings"
    ring_dir.mkdir(mode=0o700)
    out = _run(
        tmp_path, MAC_POOL, [collector.url, method], _env(tmp_path, MACOS_LIKE, ISSTREAMER_RING_DIR=str(ring_dir))
    )
    assert out["ok"] and out["mode"] == "process" and out["ring_dir"] == str(ring_dir), out
    assert out["sent"] >= 60000, out  # (the workers' segments are drained after they are gone)
    assert _delivered(collector, "mac-" + method, 18000) == 18000
    assert _delivered(collector, "mac-" + method, 60000, key="w") == 60000
    assert wait_until(lambda: os.listdir(str(ring_dir)) == [], 30), os.listdir(str(ring_dir))


def test_the_private_ring_directory_without_dev_shm(tmp_path, monkeypatch):
    """No /dev/shm and no ISSTREAMER_RING_DIR: ring files go to a private directory of this user
    under the temp directory (0700, checked)."""
    from isstreamer.ring import files

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("ISSTREAMER_RING_DIR", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    d = files.private_ring_dir()
    assert os.path.dirname(d) == str(tmp_path) and (os.stat(d).st_mode & 0o777) == 0o700
    os.chmod(d, 0o777)
    with pytest.raises(ValueError, match="writable by other users"):
        files.private_ring_dir()
