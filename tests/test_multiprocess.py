"""Issue 9, "Must show": multiprocess safety regression tests, through the public API only.

Each test is a reproducer of an item of issue 9 turned into a regression test: wide pools with
every worker alive at once, a fork storm while threads log / set_bucket / intern keys / create
Streamers, exit and close() racing log(), pid reuse and pid namespaces, planted files at a ring
path, orphaned rings, a full ring under on_full="block", and log() from a signal handler.

Everything is bounded: child scripts carry alarms, every process started here runs in its own
session and is killed at teardown, waits have deadlines. Every test runs with a private ring
directory (ISSTREAMER_RING_DIR under /dev/shm) so that "the ring directory is clean" is checked
on files of this test only: a ring may be several files (a table at ``Streamer.ring_path`` and
per-producer segment files whose names start with the ring file's name minus its extension).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import mpscripts as M
from faultserver import free_port
from mpscripts import pid_gone
from support import int_values_summary, script_env, wait_until

import isstreamer

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def ring_dir(monkeypatch):
    """A private ring directory (in /dev/shm when possible) for this test and its children."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="isst-mptest-", dir=base)
    os.chmod(d, 0o755)  # other users (uid 65534 in a test) may look, not write
    monkeypatch.setenv("ISSTREAMER_RING_DIR", d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def procs():
    """Start processes in their own sessions; every group is SIGKILLed at teardown."""
    p = M.Procs()
    yield p
    p.kill_all()


@pytest.fixture
def streamers(backend, collector, tmp_path):
    """Streamer factory on the collector with library defaults; all closed at teardown."""
    made = []

    def make(**kw):
        kw.setdefault("access_key", "test-key")
        kw.setdefault("api_base", collector.url)
        kw.setdefault("spool_dir", str(tmp_path / "spool"))
        s = isstreamer.Streamer(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        try:
            s.close(timeout=10)
        except Exception:  # noqa: BLE001 - teardown must go on
            pass


def _env(backend, **extra):
    return script_env(backend, **extra)


def _need_pid_namespaces():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates pid namespaces with unshare --pid --fork --mount-proc")
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) (util-linux) for pid namespaces")
    try:
        r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip("unshare --pid --fork --mount-proc does not work here: %s" % exc)
    if r.returncode != 0:
        pytest.skip("unshare --pid --fork --mount-proc does not work here: %s" % r.stderr.decode(errors="replace"))


def _tail(text, n=1500):
    return (text or "")[-n:]


# --------------------------------------------------------------------------- 1. wide pools

POOLS = [("fork", 64), ("spawn", 64), ("forkserver", 64), ("fork", 256)]


@pytest.mark.slow
@pytest.mark.parametrize("method, workers", POOLS, ids=["%s-%d" % p for p in POOLS])
def test_wide_pool_every_worker_alive_at_once(backend, collector, streamers, method, workers):
    """Issue 9 item 1: Pool(N) wider than the old 32 segments, every worker alive at once
    (a Barrier: all have logged before any returns), library defaults. Every event delivered
    exactly once, no drop anywhere, and the parent's stats() sees all of it."""
    import poolworkers

    bucket = "pool-%s-%d" % (method, workers)
    s = streamers(bucket_key=bucket)
    ctx = multiprocessing.get_context(method)
    barrier = ctx.Barrier(workers)
    per = 10  # on the old code each event of a worker without a segment blocked full_timeout (2 s)
    with ctx.Pool(workers, initializer=poolworkers.init_with_barrier, initargs=(s, barrier)) as pool:
        res = pool.map_async(poolworkers.log_then_meet, [(t, per, 120.0) for t in range(workers)], chunksize=1).get(300)
    assert len({pid for pid, _, _ in res}) == workers, "not every worker was alive at once"
    worker_drops = {pid: d for pid, _, d in res if d}
    assert not worker_drops, "%d of %d workers dropped events, e.g. %r" % (
        len(worker_drops),
        workers,
        next(iter(worker_drops.values())),
    )
    assert all(ok for _, ok, _ in res), "%d workers' flush() failed" % sum(not ok for _, ok, _ in res)
    s.log("parent", 1)
    assert s.flush(60)
    total = workers * per + 1
    wait_until(lambda: collector.event_count(bucket) >= total, 60)
    assert collector.event_count(bucket) == total
    assert M.duplicates(collector.db_path, bucket) == 0
    for t in (0, workers // 2, workers - 1):
        assert int_values_summary(collector.db_path, bucket, "w%d" % t)[:2] == (per, per)
    wait_until(lambda: s.stats()["logged"] == total, 30)
    st = s.stats()
    assert st["logged"] == total, st
    assert not st["dropped"], "the parent's stats() shows drops: %r" % st["dropped"]
    wait_until(lambda: s.stats().get("sent", 0) >= total, 30)
    assert s.stats().get("sent", 0) >= total


# --------------------------------------------------------------------------- 2. fork storm

STORM_FORKS = {"native": 2000, "python": 2000}


@pytest.mark.slow
def test_fork_storm_while_threads_log_set_bucket_intern_and_create(backend, collector, procs, tmp_path):
    """Issue 9 items 3, 4: 2000 forks while other threads log, set_bucket (the ring lock),
    intern new key names and create new Streamers. Each child logs a new key, set_bucket, logs,
    flushes, under alarm(20): a hung child dies of SIGALRM. No child hangs, the sender keeps
    draining (the parent's flush() every 250 forks succeeds), and every event logged arrives."""
    forks = STORM_FORKS[backend]
    path = M.script(tmp_path, "storm.py", M.STORM)
    r = procs.run(M.py(path) + [collector.url, str(forks), "16", "100"], _env(backend), timeout=200)
    assert not r.timed_out, "the storm script did not finish in 200 s; stderr: %s" % _tail(r.stderr)
    out = M.last_json(r.stdout)
    assert out is not None, "rc=%s stderr: %s" % (r.returncode, _tail(r.stderr))
    st = out["status"]
    assert out["forks"] == forks and not st["hung"], (
        "%d of %d forks done in the 100 s budget; %d children hung (killed by their alarm), e.g. child #%s; "
        "progress: %s"
        % (
            out["forks"],
            forks,
            len(st["hung"]),
            st["hung"][:5],
            [x for x in r.stderr.splitlines() if x.startswith("storm:")][-3:],
        )
    )
    assert not st["hung"], "%d of %d children hung (killed by their alarm), e.g. child #%s" % (
        len(st["hung"]),
        forks,
        st["hung"][:5],
    )
    assert not st["failed"], "%d children failed (exit status): %s; stderr: %s" % (
        len(st["failed"]),
        st["failed"][:5],
        _tail(r.stderr),
    )
    assert st["ok"] == forks
    assert not out["errors"], out["errors"][:2]
    assert out["alive_threads"] == 0
    assert all(out["checks"]) and len(out["checks"]) == forks // 250, (
        "the sender stopped draining during the storm: %r" % out["checks"]
    )
    assert out["flushed"]
    assert not out["dropped"] and not out["moving_dropped"], (out["dropped"], out["moving_dropped"])
    assert r.returncode == 0, _tail(r.stderr)
    c = out["counts"]
    db = collector.db_path
    expect = {
        ("storm-main", "steady"): c["steady"],
        ("storm-main", "key[0-9]*"): c["keys"],
        ("storm-main", "c[0-9]*"): forks,
        ("storm-move-%", None): c["moving"],
        ("storm-child-%", None): forks,
        ("storm-made", None): c["made"],
    }
    wait_until(lambda: all(M.count_events(db, b, k) >= n for (b, k), n in expect.items()), 120)
    got = {bk: M.count_events(db, *bk) for bk in expect}
    assert got == expect
    assert c["made"] > 0 and c["keys"] > 0 and c["moving"] > 0


# --------------------------------------------------------------------------- 3. exit and close races


def _unreachable_api_env(backend, tmp_path):
    """The API on a port nobody listens on: the tight loops' millions of events go to a capped
    spool (spool_max_bytes in the scripts) instead of loading the collector."""
    return _env(
        backend, ISSTREAMER_API_BASE="http://127.0.0.1:%d" % free_port(), ISSTREAMER_SPOOL_DIR=str(tmp_path / "spool")
    )


EXIT_RUNS = 200  # interpreter exits per backend (forked children of one driver script)
EXIT_SCRIPT_RUNS = 20  # fresh interpreters per backend, 2 at a time (each starts its own sender)


@pytest.mark.slow
def test_daemon_threads_logging_through_interpreter_exit_never_crash(backend, procs, tmp_path):
    """Issue 9 item 5: 200 interpreter exits (forked children of one script, so that one sender
    serves them all) while daemon threads log in a tight loop, without close(): the atexit
    close must not unmap the ring under a running log(). No crash, no traceback."""
    path = M.script(tmp_path, "exit_forked.py", M.EXIT_FORKED)
    env = _unreachable_api_env(backend, tmp_path)
    r = procs.run(M.py(path) + [str(EXIT_RUNS), "0"], env, timeout=200)
    assert not r.timed_out, "the driver script hung; stderr: %s" % _tail(r.stderr)
    out = M.last_json(r.stdout)
    assert out is not None and r.returncode == 0, "rc=%s %s" % (r.returncode, _tail(r.stderr))
    bad = out["bad"]
    crashes = r.stderr.count("Traceback") + r.stderr.count("Fatal Python error")
    assert not bad and not crashes, (
        "%d of %d exits died (exit code, negative = killed by that signal; e.g. %r) and %d tracebacks:\n%s"
        % (len(bad), EXIT_RUNS, bad[:5], crashes, _tail(r.stderr, 1200))
    )


@pytest.mark.slow
def test_fresh_scripts_exit_while_daemon_threads_log(backend, procs, tmp_path):
    """Issue 9 item 5, as a user sees it: 20 runs (2 at a time) of a script whose daemon threads
    log through the interpreter's exit (no close()): returncode 0, no traceback."""
    path = M.script(tmp_path, "exit_race.py", M.EXIT_WHILE_LOGGING)
    env = _unreachable_api_env(backend, tmp_path)
    bad = []
    running = []
    seed = 0
    deadline = time.monotonic() + 150
    while seed < EXIT_SCRIPT_RUNS or running:
        while seed < EXIT_SCRIPT_RUNS and len(running) < 2:
            running.append((seed, time.monotonic(), procs.popen(M.py(path) + [str(seed)], env)))
            seed += 1
        time.sleep(0.01)
        for item in list(running):
            n, t0, p = item
            if p.poll() is None and time.monotonic() - t0 < 60:
                continue
            running.remove(item)
            if p.poll() is None:
                M.kill_group(p)
                bad.append((n, "hung (killed after 60 s)", ""))
                continue
            out, err = p.communicate()
            if p.returncode != 0 or "Traceback" in err or "Fatal Python error" in err:
                bad.append((n, p.returncode, _tail(err, 600)))
        assert time.monotonic() < deadline, "the runs took too long; bad so far: %r" % bad[:3]
    assert not bad, "%d of %d runs crashed; e.g. run %s: returncode %s (negative = killed by that signal)\n%s" % (
        len(bad),
        EXIT_SCRIPT_RUNS,
        bad[0][0],
        bad[0][1],
        bad[0][2],
    )


@pytest.mark.slow
def test_log_racing_close_never_raises(backend, collector, procs, tmp_path):
    """Issue 9 item 5: log() from two threads racing close() from another (debug_level 0) never
    raises and never crashes the process (run in a child: a crash must not take pytest down)."""
    path = M.script(tmp_path, "close_race.py", M.CLOSE_RACE)
    env = _env(backend, ISSTREAMER_API_BASE=collector.url, ISSTREAMER_SPOOL_DIR=str(tmp_path / "spool"))
    r = procs.run(M.py(path) + ["40"], env, timeout=150)
    assert not r.timed_out, "the close race script hung; stderr: %s" % _tail(r.stderr)
    assert r.returncode == 0, "returncode %s (negative = killed by that signal): %s%s" % (
        r.returncode,
        _tail(r.stdout),
        _tail(r.stderr),
    )
    assert "ERRORS 0" in r.stdout, _tail(r.stdout, 3000)


# --------------------------------------------------------------------------- 4. pid namespaces


def test_pid_reuse_in_a_private_pid_namespace(backend, collector, procs, tmp_path):
    """Issue 9 item 6: a worker logs and dies holding its segment, an unrelated process gets its
    pid (ns_last_pid in a fresh pid namespace, or forking until the pid comes round again). The
    parent closes: nothing is lost, the sender exits and the ring's files are removed."""
    _need_pid_namespaces()
    path = M.script(tmp_path, "pid_reuse.py", M.PID_REUSE)
    n = 2000
    r = procs.run(
        ["unshare", "--pid", "--fork", "--mount-proc"] + M.py(path) + [collector.url, str(n)],
        _env(backend, ISSTREAMER_SPOOL_DIR=str(tmp_path / "spool")),
        timeout=150,
    )
    assert not r.timed_out, "the pid reuse script hung; stderr: %s" % _tail(r.stderr)
    out = M.last_json(r.stdout)
    assert out is not None, "rc=%s stderr: %s" % (r.returncode, _tail(r.stderr))
    if not out["reused"]:
        pytest.skip("could not make a process reuse the worker's pid here: %r" % out)
    assert out["worker_flushed"] and out["parent_flushed"], out
    assert wait_until(lambda: collector.event_count("pidreuse") >= n + 2, 30)
    assert int_values_summary(collector.db_path, "pidreuse", "worker")[:2] == (n, n)
    assert int_values_summary(collector.db_path, "pidreuse", "parent")[:2] == (2, 2)
    assert out["sender_exited"], (
        "the sender did not exit within 30 s of close(): the dead worker's "
        "segment is held by the process that reused its pid (%r)" % out
    )
    assert out["leftovers"] == [], out
    assert not out["stats"]["dropped"], out


def test_two_pid_namespaces_share_a_ring(backend, collector, procs, tmp_path, ring_dir):
    """Issue 9 item 6: namespace A creates a Streamer and keeps logging; namespace B (same ring
    directory, its own pids) unpickles it and logs too. Neither reclaims the other's live
    segment: every event delivered once, zero drops, and the ring goes away after both close."""
    _need_pid_namespaces()
    handoff = str(tmp_path / "handle.pkl")
    stopfile = str(tmp_path / "stop")
    env = _env(backend, ISSTREAMER_SPOOL_DIR=str(tmp_path / "spool"))
    ns = ["unshare", "--pid", "--fork", "--mount-proc"]
    a = procs.popen(ns + M.py(M.script(tmp_path, "ns_a.py", M.NS_A)) + [collector.url, handoff, stopfile], env)
    line = M.readline(a, 60)
    assert line and line.startswith("ready"), "namespace A did not start: %r %s" % (
        line,
        _tail(a.stderr.read() if a.poll() is not None else ""),
    )
    ring_path = line.split()[3]
    n = 20000
    rb = procs.run(ns + M.py(M.script(tmp_path, "ns_b.py", M.NS_B)) + [handoff, str(n)], env, timeout=150)
    with open(stopfile, "w"):
        pass
    try:
        a_out, a_err = a.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        M.kill_group(a)
        a_out, a_err = a.communicate()
        pytest.fail("namespace A did not finish; stderr: %s" % _tail(a_err))
    assert not rb.timed_out, "namespace B hung; stderr: %s" % _tail(rb.stderr)
    b = M.last_json(rb.stdout)
    assert rb.returncode == 0 and b is not None, "B: rc=%s %s" % (rb.returncode, _tail(rb.stderr))
    a_res = M.last_json(a_out)
    assert a_res is not None, "A: rc=%s %s" % (a.returncode, _tail(a_err))
    db = collector.db_path
    wait_until(lambda: collector.event_count("ns-shared") >= n + a_res["logged"], 30 if b["flushed"] else 5)
    got_b = int_values_summary(db, "ns-shared", "b")[0]
    assert b["flushed"], "B's events never got out of the ring (%d of %d delivered): %r" % (got_b, n, b)
    assert a_res["flushed"], a_res
    assert int_values_summary(db, "ns-shared", "b")[:2] == (n, n), "events of namespace B lost"
    assert int_values_summary(db, "ns-shared", "a")[:2] == (a_res["logged"], a_res["logged"]), (
        "events of namespace A lost"
    )
    assert M.duplicates(db, "ns-shared") == 0
    assert not b["dropped"] and not a_res["dropped"], (b["dropped"], a_res["dropped"])
    assert wait_until(lambda: not M.ring_leftovers(ring_path), 30), M.ring_leftovers(ring_path)


# --------------------------------------------------------------------------- 5. planted files


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("debug_level", [0, 2])
@pytest.mark.parametrize("plant", ["foreign_owner", "mode_0644", "symlink"])
def test_planted_file_at_a_ring_path_is_refused(backend, collector, streamers, tmp_path, plant, debug_level):
    """Issue 9 item 7: once a ring is removed, a file (owned by another user, or with mode 0644)
    or a symlink planted at its path is refused by an unpickled handle: nothing written into it,
    no sender posting its content; an error naming the path (or 'refus...') at debug_level 2,
    a counted drop otherwise."""
    if plant == "foreign_owner" and os.geteuid() != 0:
        pytest.skip("needs root to plant a file owned by another user (uid 65534)")
    victim = streamers(bucket_key="victim", debug_level=debug_level)
    victim.log("v", 1)
    assert victim.flush(30)
    handle = pickle.dumps(victim)
    path = victim.ring_path
    vsender = victim.sender_pid
    victim.close(timeout=30)
    assert wait_until(lambda: not M.ring_leftovers(path) and pid_gone(vsender), 30), "the victim's ring stayed"

    # the attacker: a ring of its own with unsent events (its sender paused, then killed)
    attacker = streamers(bucket_key="attacker", api_base="http://127.0.0.1:%d" % free_port())
    asender = attacker.sender_pid
    os.kill(asender, signal.SIGSTOP)
    for i in range(10):
        attacker.log("evil", i)
    with open(attacker.ring_path, "rb") as f:
        content = f.read()
    os.kill(asender, signal.SIGKILL)
    wait_until(lambda: pid_gone(asender), 10)
    attacker_path = attacker.ring_path
    attacker.close(timeout=0)
    for name in M.ring_leftovers(attacker_path):
        os.unlink(os.path.join(os.path.dirname(attacker_path), name))

    target = path
    if plant == "symlink":
        target = str(tmp_path / "planted-target")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    if plant == "foreign_owner":
        os.chown(target, 65534, 65534)
    elif plant == "mode_0644":
        os.chmod(target, 0o644)
    else:
        os.symlink(target, path)
    before = _digest(target)

    twins = []
    started = []
    try:
        error = None
        try:
            twins.append(pickle.loads(handle))
            started.append(twins[-1].sender_pid)
            twins[-1].log("v", 2)
            started.append(twins[-1].sender_pid)
        except Exception as exc:  # noqa: BLE001 - judged below
            error = exc
        time.sleep(1.5)  # time for a wrongly started sender to post
        assert _digest(target) == before, "the planted file was written into"
        assert collector.events("attacker") == [], "a sender posted the planted ring's events"
        assert collector.event_count("victim") == 1, "the event was written into the planted ring and sent"
        if debug_level >= 2:
            assert error is not None, "no error at debug_level 2"
            msg = str(error)
            assert path in msg or "refus" in msg.lower(), "not a clear error: %r" % msg
        else:
            assert error is None, "log() raised at debug_level 0: %r" % error
            dropped = twins[-1].stats()["dropped"]
            assert sum(dropped.values()) >= 1, "the refused event was not counted as dropped: %r" % dropped
    finally:
        for t in twins:
            try:
                t.close(timeout=1)
            except Exception:  # noqa: BLE001
                pass
        for pid in set(started):  # a sender started on the planted file by this process
            if pid and pid not in (asender, vsender) and not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- 6. orphans


def test_orphaned_ring_is_adopted_by_a_new_streamer(backend, collector_factory, procs, tmp_path):
    """Issue 9 item 8: every producer and the sender of a ring with unsent events SIGKILLed;
    a new Streamer (same access key, api_base and spool dir) in a fresh process: the orphaned
    events are delivered exactly once and the old ring's files are removed."""
    port = free_port()
    api = "http://127.0.0.1:%d" % port  # nobody listens yet
    spool = str(tmp_path / "spool")
    env = _env(backend)
    n, kids = 3000, 2
    p = procs.popen(M.py(M.script(tmp_path, "orphan.py", M.ORPHAN_PRODUCER)) + [api, spool, str(n), str(kids)], env)
    line = M.readline(p, 60)
    assert line, "the producer did not start: %s" % (_tail(p.stderr.read()) if p.poll() is not None else "")
    fields = line.split()
    sender, ring_path, kid_pids = int(fields[0]), fields[1], [int(x) for x in fields[2:]]
    os.kill(sender, signal.SIGKILL)
    for pid in kid_pids:
        os.kill(pid, signal.SIGKILL)
    M.kill_group(p)
    assert wait_until(lambda: pid_gone(sender) and all(pid_gone(k) for k in kid_pids), 30)
    assert M.ring_leftovers(ring_path), "precondition: the orphaned ring exists"

    collector = collector_factory(port=port)
    r = procs.run(M.py(M.script(tmp_path, "adopter.py", M.ADOPTER)) + [api, spool], env, timeout=90)
    assert not r.timed_out and r.returncode == 0, "rc=%s %s" % (r.returncode, _tail(r.stderr))
    total = n * (kids + 1)
    delivered = wait_until(lambda: collector.event_count("orphan") >= total, 60)
    assert delivered, "the orphaned events were not delivered: %d of %d after 60 s" % (
        collector.event_count("orphan"),
        total,
    )
    assert collector.event_count("orphan") == total
    assert M.duplicates(collector.db_path, "orphan") == 0
    assert wait_until(lambda: not M.ring_leftovers(ring_path), 60), (
        "the orphaned ring's files stayed: %r" % M.ring_leftovers(ring_path)
    )


@pytest.mark.parametrize("log2_size", [40, 50], ids=["1TiB", "1PiB"])
def test_failed_ring_creation_leaves_no_file(backend, procs, tmp_path, ring_dir, log2_size):
    """Issue 9 item 8: an absurd ring_size fails with a clear exception (one that says it is
    about isstreamer / the ring, not a bare ENOMEM or OverflowError) and leaves no file."""
    path = M.script(tmp_path, "toobig.py", M.RING_TOO_BIG)
    r = procs.run(M.py(path) + [str(log2_size)], _env(backend), timeout=60)
    assert not r.timed_out and r.returncode == 0, "rc=%s %s" % (r.returncode, _tail(r.stderr))
    assert "RAISED" in r.stdout, "an absurd ring_size was accepted: %s" % r.stdout
    msg = r.stdout.split("RAISED", 1)[1].split("\n", 1)[0]
    left = "LEFT []" not in r.stdout
    unclear = not ("isstreamer" in msg or "ring" in msg.lower())
    assert not (left or unclear), "%s%s" % (
        "files left behind; " if left else "",
        ("not a clear error:" + msg) if unclear else "",
    )
    assert os.listdir(ring_dir) == []


# --------------------------------------------------------------------------- 7. full ring


def test_full_ring_block_waits_once_then_drops_at_log_speed(backend, collector, gated, streamers):
    """Issue 9 item 9: on_full="block", full_timeout=0.5, the ring full (the API hangs): 2000 more
    log() calls finish far below 2000 x full_timeout (a hang detector: < 30 s), are all counted
    as ring_full drops, and what was taken is delivered exactly once when the API answers."""
    s = streamers(
        bucket_key="full",
        api_base=gated.url,
        on_full="block",
        full_timeout=0.5,
        ring_size=1 << 20,
        request_timeout=120.0,
        flush_interval=0.01,
    )
    assert wait_until(lambda: gated.waiting > 0, 60), "the sender never reached the API"
    # a hanging API alone no longer fills the ring (the sender spills it to the spool): stop the
    # sender too, inside its request
    sender = s.sender_pid
    os.kill(sender, signal.SIGSTOP)
    try:
        _fill_then_drop(s)
    finally:
        os.kill(sender, signal.SIGCONT)
    gated.gate.set()
    assert s.flush(120)
    logged = s.stats()["logged"]
    assert wait_until(lambda: collector.event_count("full") >= logged, 60)
    assert collector.event_count("full") == logged
    assert M.duplicates(collector.db_path, "full") == 0


def _fill_then_drop(s) -> None:
    value = "v" * 200
    i = 0
    t0 = time.monotonic()
    while s.stats()["dropped"].get("ring_full", 0) == 0:
        s.log("n", "%d:%s" % (i, value))
        i += 1
        assert time.monotonic() - t0 < 60 and i < 2_000_000, "the ring never filled up"
    before = s.stats()["dropped"]["ring_full"]
    done = 0
    t1 = time.monotonic()
    while done < 2000 and time.monotonic() - t1 < 30:
        s.log("n", "%d:%s" % (i + done, value))
        done += 1
    took = time.monotonic() - t1
    assert done == 2000, "only %d of 2000 log() calls on a full ring in %.0f s (each waits full_timeout)" % (done, took)
    after = s.stats()["dropped"]["ring_full"]
    assert after - before == 2000, "drops counted: %d of 2000" % (after - before)


# --------------------------------------------------------------------------- 8. signals


def test_log_from_a_signal_handler_interrupting_log(backend, collector, procs, tmp_path):
    """Issue 9 item 10: a SIGALRM handler (every 1 ms) logs while the main loop is inside log()
    200k times: the script finishes, and every event of both arrives."""
    path = M.script(tmp_path, "signals.py", M.SIGNAL_LOG)
    env = _env(backend, ISSTREAMER_API_BASE=collector.url, ISSTREAMER_SPOOL_DIR=str(tmp_path / "spool"))
    n = 200_000
    r = procs.run(M.py(path) + [str(n)], env, timeout=120)
    assert not r.timed_out, "deadlock: a log() from the signal handler never returned (killed after 120 s)"
    out = M.last_json(r.stdout)
    assert r.returncode == 0 and out is not None, "rc=%s (negative = killed by that signal) %s" % (
        r.returncode,
        _tail(r.stderr),
    )
    assert out["fired"] > 0 and out["flushed"], out
    # a re-entry guard may drop (and count) a log() made by the handler inside log(); nothing else
    dropped = sum(out["dropped"].values())
    assert dropped <= out["fired"], out
    assert wait_until(lambda: collector.event_count("signals") >= out["logged"], 30)
    assert int_values_summary(collector.db_path, "signals", "main")[:2] == (n, n)
    sig, distinct = int_values_summary(collector.db_path, "signals", "sig")[:2]
    assert sig == distinct and sig + dropped == out["fired"], (sig, distinct, out)
    assert collector.event_count("signals") == out["logged"] == n + sig + n // 1000
