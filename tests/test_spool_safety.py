"""Spool faults (issue 10, item 5): a full disk, file modes, planted symlinks, unsafe spool roots.

Real files, a real tmpfs filled to the last byte where mounting is allowed (skipped with the
reason elsewhere), the real ``isstreamer replay`` against the fault server, real sender
processes. Where a fault is injected in-process (``os.fsync`` failing with ENOSPC, a progress
mark failing), the same path is also taken on the real full filesystem when it can be mounted.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from collections import Counter
from typing import Any, Iterator, List

import pytest

from isstreamer.sender import spool as S
from isstreamer.sender.spool import (
    ReplayFile,
    SpoolBackoff,
    SpoolUnsafe,
    SpoolWriter,
    key_fingerprint,
    pending_files,
    stream_id,
)

try:
    from faultserver import FaultServer
except ImportError:  # tests/ made a package
    from .faultserver import FaultServer  # type: ignore[no-redef]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCESS_KEY = "test-access-key"
API = "http://api.invalid"


class Ticker:
    """A clock moved by hand (SpoolWriter's error backoff without sleeping)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def body(*values: Any) -> bytes:
    return json.dumps([{"key": "n", "value": v} for v in values]).encode()


def stream_dir(root: Any, bucket_key: str = "bk", access_key: str = ACCESS_KEY, api: str = API) -> str:
    return os.path.join(str(root), stream_id(api, bucket_key, key_fingerprint(access_key)))


def make_spool_file(root: Any, api: str, bucket_key: str, batches: List[List[Any]]) -> str:
    """A spool file in the documented format (meta.json + one JSON array a line)."""
    d = stream_dir(root, bucket_key, api=api)
    os.makedirs(d, mode=0o700, exist_ok=True)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(
            {
                "api_base": api,
                "bucket_key": bucket_key,
                "bucket_name": bucket_key,
                "access_key_sha256_prefix": key_fingerprint(ACCESS_KEY),
            },
            f,
        )
    path = os.path.join(d, "0001700000000.000000-1-1.jsonl")
    with open(path, "w") as f:
        for batch in batches:
            f.write(json.dumps([{"key": "n", "value": v, "epoch": 1700000000.5} for v in batch]) + "\n")
    return path


def fill(path: Any) -> None:
    """Fill the filesystem holding ``path`` to the last byte (ENOSPC)."""
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_replay(cwd: Any, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        HOME=str(cwd),
        ISSTREAMER_ACCESS_KEY=ACCESS_KEY,
    )
    return subprocess.run(
        [sys.executable, "-m", "isstreamer.cli", "replay", "--no-progress", "--backoff-max", "0.2", *args],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def tiny_fs(tmp_path: Any) -> Iterator[Any]:
    """A 128 KiB tmpfs (needs mount rights: root with CAP_SYS_ADMIN), else skip."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k,mode=0700", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (%s): the disk-full test needs mount rights" % r.stderr.strip())
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


# --------------------------------------------------------------------------- a failed progress mark


def test_replay_keeps_the_file_when_the_disk_is_full(server: FaultServer, tiny_fs: Any, tmp_path: Any) -> None:
    """Issue 10: ``isstreamer replay`` with the spool's disk full unlinked the file after a failed
    mark (400 of 500 events lost). Now it stops at the failed mark and keeps the file; once there
    is space, everything arrives (the one line whose mark failed may come twice: at-least-once)."""
    root = tiny_fs / "spool"
    path = make_spool_file(root, server.url, "bk-full", [list(range(i, i + 100)) for i in range(0, 500, 100)])
    filler = tiny_fs / "filler"
    fill(filler)
    p = run_replay(tmp_path, str(root))
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    assert "No space left on device" in p.stderr and "the file is kept" in p.stderr, p.stderr
    assert os.path.exists(path), "the spool file was removed after a failed progress mark"
    assert sorted(server.values()) == list(range(100)), "replay went on after the failed mark"
    os.unlink(filler)
    p = run_replay(tmp_path, str(root))
    assert p.returncode == 0, (p.stdout, p.stderr)
    got = Counter(server.values())
    assert sorted(got) == list(range(500)), "events lost"
    assert {v for v, c in got.items() if c > 1} <= set(range(100))
    assert not os.path.exists(path)


def test_failed_mark_stops_the_shared_loop_and_keeps_the_file(
    server: FaultServer, tmp_path: Any, monkeypatch: Any
) -> None:
    """The loop the sender and the CLI share, with the mark failing (no mount needed): it stops
    at once, never finishes (unlinks) the file, and reports why."""
    from isstreamer.sender.delivery import Delivery, Policy
    from isstreamer.sender.replay import Stop, StreamReplay
    from isstreamer.sender.spool import read_meta
    from isstreamer.sender.transport import Transport

    path = make_spool_file(tmp_path / "spool", server.url, "bk", [[1], [2], [3]])

    def no_space(self: ReplayFile, end: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ReplayFile, "mark", no_space)
    d = Delivery(Transport(server.url, ACCESS_KEY), Policy(), str(tmp_path / "rejected.jsonl"), lambda m: None)
    for patient in (False, True):
        loop = StreamReplay(d, lambda m, b: None, patient=patient)
        meta = read_meta(os.path.dirname(path))
        assert meta is not None
        assert loop.run(meta, pending_files(meta.path)) is Stop.FAULT
        assert "No space left on device" in loop.why and os.path.exists(path)
        assert loop.counts.finished == 0 and loop.counts.batches == 0
    assert server.values() == [1, 1]  # one line per run, then it stopped
    d.t.close()


# --------------------------------------------------------------------------- a failed spool write


def _failing_fsync(monkeypatch: Any) -> List[int]:
    calls: List[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(S.os, "fsync", fsync)
    return calls


def test_failed_write_closes_and_removes_what_it_opened(tmp_path: Any, monkeypatch: Any) -> None:
    """Issue 10: every failed write opened a new spool file and never closed it (3215 open files
    after 75 s of a full disk). Now nothing is left open or on disk by a failed write."""
    clock = Ticker()
    w = SpoolWriter(str(tmp_path / "spool"), clock=clock)
    w.write(API, "bk", "b", "fp", body(0))
    w.close_all()
    d = os.path.join(str(tmp_path / "spool"), stream_id(API, "bk", "fp"))
    files_before = sorted(os.listdir(d))
    fds = open_fds()
    _failing_fsync(monkeypatch)
    for i in range(50):
        clock.now += 100  # past any backoff: every call really tries
        with pytest.raises(OSError) as e:
            w.write(API, "bk", "b", "fp", body(i))
        assert e.value.errno == errno.ENOSPC
    assert open_fds() == fds, "a failed spool write leaked file descriptors"
    assert w.open_files == 0
    assert sorted(os.listdir(d)) == files_before, "a failed spool write left files behind"
    monkeypatch.undo()
    clock.now += 100
    w.write(API, "bk", "b", "fp", body("ok"))
    w.close_all()
    values = [json.loads(b)[0]["value"] for f in pending_files(d) for _, b in ReplayFile(f).lines()]
    assert values == [0, "ok"]


def test_failed_write_backs_off(tmp_path: Any, monkeypatch: Any) -> None:
    """After a failure, writes fail fast (SpoolBackoff, nothing touched) for a backoff that
    doubles while the disk stays full and is forgotten after a success."""
    clock = Ticker()
    w = SpoolWriter(str(tmp_path / "spool"), clock=clock)
    w.write(API, "bk", "b", "fp", body(0))
    fsyncs = _failing_fsync(monkeypatch)
    with pytest.raises(OSError) as first:
        w.write(API, "bk", "b", "fp", body(1))
    assert not isinstance(first.value, SpoolBackoff) and len(fsyncs) == 1
    delays = []
    for _ in range(8):
        with pytest.raises(SpoolBackoff) as e:  # within the backoff: no attempt at all
            w.write(API, "bk", "b", "fp", body(1))
        assert e.value.errno == errno.ENOSPC and "No space left" in str(e.value)
        delays.append(w.retry_at - clock.now)
        clock.now = w.retry_at  # the backoff is over: one real attempt, which fails again
        with pytest.raises(OSError):
            w.write(API, "bk", "b", "fp", body(1))
    assert len(fsyncs) == 9
    assert delays == sorted(delays) and delays[0] < delays[-1] <= SpoolWriter.ERROR_BACKOFF_MAX
    monkeypatch.undo()
    clock.now = w.retry_at
    w.write(API, "bk", "b", "fp", body(2))
    w.write(API, "bk", "b", "fp", body(3))  # no backoff after a success


def test_full_disk_writes_leave_nothing_open(tiny_fs: Any) -> None:
    """The same on a real full filesystem: the first write to a stream opens a new file."""
    clock = Ticker()
    root = tiny_fs / "spool"
    w = SpoolWriter(str(root), clock=clock)
    w.write(API, "bk", "b", "fp", body(0))
    w.close_all()
    d = os.path.join(str(root), stream_id(API, "bk", "fp"))
    before = sorted(os.listdir(d))
    fill(tiny_fs / "filler")
    fds = open_fds()
    for _ in range(100):
        clock.now += 100
        with pytest.raises(OSError) as e:
            w.write(API, "bk", "b", "fp", body("x" * 5000))
        assert e.value.errno == errno.ENOSPC
    assert open_fds() == fds and w.open_files == 0
    assert sorted(os.listdir(d)) == before
    os.unlink(tiny_fs / "filler")
    clock.now += 100
    w.write(API, "bk", "b", "fp", body(1))
    w.close_all()


# --------------------------------------------------------------------------- modes


def test_files_0600_and_every_created_directory_0700(tmp_path: Any, umask022: None) -> None:
    from isstreamer.sender.delivery import Delivery, Policy
    from isstreamer.sender.transport import Answer

    root = tmp_path / "a" / "b" / "spool"
    w = SpoolWriter(str(root))
    path = w.write(API, "bk", "b", "fp", body(1))
    w.close_all()
    rf = ReplayFile(path)
    assert rf.acquire()
    rf.mark(5)
    rf.release()

    class T:
        api_base = API

        def post_events(self, *a: Any, **k: Any) -> Answer:
            return Answer(400, {}, "{}")

    Delivery(T(), Policy(), str(root / "rejected.jsonl"), lambda m: None).send("bk", body("bad"), 1)  # type: ignore
    for p in (tmp_path / "a", tmp_path / "a" / "b", root, os.path.dirname(path)):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700, p
    for p in (path, path + ".pos", os.path.join(os.path.dirname(path), "meta.json"), root / "rejected.jsonl"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p


def test_an_old_world_readable_rejected_file_is_made_private(tmp_path: Any, umask022: None) -> None:
    from isstreamer.sender.spool import append_private

    p = tmp_path / "spool" / "rejected.jsonl"
    p.parent.mkdir(mode=0o700)
    p.write_text("old\n")
    os.chmod(p, 0o644)
    append_private(str(p), b"new\n")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600 and p.read_text() == "old\nnew\n"


# --------------------------------------------------------------------------- planted symlinks


def test_planted_meta_tmp_symlink_is_not_followed(tmp_path: Any) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    root = tmp_path / "spool"
    d = os.path.join(str(root), stream_id(API, "bk", "fp"))
    os.makedirs(d, mode=0o700)
    os.symlink(victim, os.path.join(d, "meta.json.%d.tmp" % os.getpid()))
    w = SpoolWriter(str(root))
    w.write(API, "bk", "b", "fp", body(1))
    w.close_all()
    assert victim.read_text() == "precious\n"
    meta = os.path.join(d, "meta.json")
    assert not os.path.islink(meta) and json.loads(open(meta).read())["bucket_key"] == "bk"


def test_planted_pos_tmp_symlink_is_not_followed(tmp_path: Any) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    w = SpoolWriter(str(tmp_path / "spool"))
    path = w.write(API, "bk", "b", "fp", body(1))
    w.close_all()
    os.symlink(victim, "%s.pos.%d.tmp" % (path, os.getpid()))
    os.symlink(victim, "%s.pos.tmp" % path)  # the name older versions used
    rf = ReplayFile(path)
    assert rf.acquire()
    rf.mark(3)
    rf.release()
    assert victim.read_text() == "precious\n"
    assert not os.path.islink(path + ".pos") and rf.position() == 3


def test_planted_rejected_symlink_is_not_followed(tmp_path: Any) -> None:
    from isstreamer.sender.spool import append_private

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "spool").mkdir(mode=0o700)
    (tmp_path / "spool" / "rejected.jsonl").symlink_to(victim)
    with pytest.raises(OSError) as e:
        append_private(str(tmp_path / "spool" / "rejected.jsonl"), b"refused\n")
    assert e.value.errno == errno.ELOOP
    assert victim.read_text() == "precious\n"


def test_planted_spool_file_and_meta_symlinks_are_not_read_nor_removed(server: FaultServer, tmp_path: Any) -> None:
    """A .jsonl symlink to a file of the user, a stream whose meta.json is a symlink, a stream
    directory that is a symlink: replay neither sends their content nor deletes anything."""
    root = tmp_path / "spool"
    real = make_spool_file(root, server.url, "bk-real", [[1, 2]])
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps([{"key": "n", "value": "secret"}]) + "\n")
    os.symlink(secret, os.path.join(os.path.dirname(real), "0001700000001.000000-1-2.jsonl"))
    other = stream_dir(root, "bk-linked", api=server.url)
    os.makedirs(other, mode=0o700)
    os.symlink(os.path.join(os.path.dirname(real), "meta.json"), os.path.join(other, "meta.json"))
    os.symlink(secret, os.path.join(other, "0001700000000.000000-1-1.jsonl"))
    elsewhere = tmp_path / "elsewhere"  # a whole stream directory planted as a link
    victim = make_spool_file(elsewhere, server.url, "bk-elsewhere", [["victim"]])
    os.symlink(os.path.dirname(victim), stream_dir(root, "bk-elsewhere", api=server.url))
    p = run_replay(tmp_path, str(root))
    assert sorted(server.values(), key=repr) == [1, 2], (server.values(), p.stderr)
    assert "secret" not in server.values() and os.path.exists(victim)
    assert secret.read_text().startswith("[") and os.path.islink(os.path.join(other, "meta.json"))
    assert "skipped" in p.stderr, p.stderr


# --------------------------------------------------------------------------- unsafe spool roots


def _unsafe_roots(tmp_path: Any) -> List[Any]:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)  # we are root in CI; elsewhere this needs CAP_CHOWN
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    group = tmp_path / "group"
    group.mkdir()
    os.chmod(group, 0o770)
    return [
        (link, "a symbolic link"),
        (foreign, "owned by uid 65534"),
        (open_dir, "writable by other users"),
        (group, "writable by other users"),
    ]


@pytest.fixture
def unsafe_roots(tmp_path: Any) -> List[Any]:
    try:
        return _unsafe_roots(tmp_path)
    except PermissionError as exc:
        pytest.skip("cannot chown a directory to another user here (%s)" % exc)


def test_writer_refuses_an_unsafe_root(unsafe_roots: List[Any]) -> None:
    for root, why in unsafe_roots:
        w = SpoolWriter(str(root))
        with pytest.raises(SpoolUnsafe) as e:
            w.write(API, "bk", "b", "fp", body(1))
        assert "refusing spool directory %s: it is %s" % (root, why) in str(e.value), str(e.value)
        assert not any(n.endswith(".jsonl") for _, _, ns in os.walk(root) for n in ns)


def test_replay_refuses_an_unsafe_root(unsafe_roots: List[Any], tmp_path: Any) -> None:
    for root, why in unsafe_roots:
        p = run_replay(tmp_path, str(root))
        assert p.returncode == 2 and "refusing spool directory" in p.stderr and why in p.stderr, p.stderr


SENDER_SCRIPT = """
import sys, isstreamer
s = isstreamer.Streamer(bucket_key="unsafe", access_key="k", api_base=sys.argv[1], spool_dir=sys.argv[2],
                        flush_interval=0.05, max_attempts=1, backoff_max=0.1, close_timeout=1)
for i in range(100):
    s.log("n", i)
s.close(timeout=2)
print("done", s.stats()["spooled"])
"""


def test_sender_refuses_a_symlinked_spool_root(tmp_path: Any) -> None:
    """The sender says why it cannot spool (and spools nothing through the link)."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-c", SENDER_SCRIPT, "http://127.0.0.1:9", str(tmp_path / "link")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "refusing spool directory %s: it is a symbolic link" % (tmp_path / "link") in r.stderr, r.stderr
    assert os.listdir(real) == []


def test_sender_replay_on_a_full_disk_keeps_the_file(server: FaultServer, tiny_fs: Any) -> None:
    """The sender's side of the same loop: its replay meets a full disk at the first progress
    mark, keeps the file, says so, and pauses replay instead of sending that line every turn."""
    import time

    from isstreamer.streamer import Streamer

    root = tiny_fs / "spool"
    path = make_spool_file(root, server.url, "bk-old", [list(range(i, i + 10)) for i in range(0, 50, 10)])
    fill(tiny_fs / "filler")
    s = Streamer(
        "x", "bk-live", ACCESS_KEY, api_base=server.url, spool_dir=str(root), flush_interval=0.05, close_timeout=1.0
    )
    pid = s.sender_pid or 0
    try:
        assert server.wait_for(lambda: len(server.values()) >= 10, 20)
        time.sleep(2.0)  # sender turns go on meanwhile
        assert sorted(server.values()) == list(range(10)), "the line whose mark failed was sent again"
        assert os.path.exists(path)
    finally:
        s.close(2)
    from procutil import pid_alive

    assert pid and server.wait_for(lambda: not pid_alive(pid), 20), "the sender did not exit"
    assert os.path.exists(path), "the exiting sender removed a file it could not mark"
    assert sorted(server.values()) == list(range(10)), "the exiting sender sent that line again"
