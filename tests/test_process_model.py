"""The process model at unit level: layout agreement with C, hardened opens, ownership locks,
full-ring drop episodes, the fallback's CPU check, and a sender that imports its parent's package.

The end-to-end reproducers of issue 9 (pools, fork storms, exit races, pid namespaces, orphans)
live in tests/test_multiprocess.py.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from support import ROOT, script_env, wait_until, write_script

from isstreamer.ring import layout as L
from isstreamer import ring as R
from isstreamer.ring import Attachment, Segment, RingClosed, RingRefused, Table, native_available

needs_native = pytest.mark.skipif(not native_available(), reason="needs the C extension")


# --------------------------------------------------------------------------- layout


@needs_native
def test_layout_matches_the_c_structs():
    """layout.py's numbers are the C structs' (ffi.offsetof / sizeof on the compiled extension)."""
    ffi = R.ffi
    hdr = {
        "magic": L.H_MAGIC,
        "version": L.H_VERSION,
        "nsegs": L.H_NSEGS,
        "seg_data_size": L.H_SEG_DATA_SIZE,
        "nbuckets": L.H_NBUCKETS,
        "total_size": L.H_TOTAL_SIZE,
        "sender_pid": L.H_SENDER_PID,
        "closing": L.H_CLOSING,
        "flush_seq": L.H_FLUSH_SEQ,
        "nbuckets_used": L.H_NBUCKETS_USED,
        "nslots_used": L.H_NSLOTS_USED,
        "counters": L.H_COUNTERS,
        "drops": L.H_DROPS,
    }
    for field, off in hdr.items():
        assert ffi.offsetof("iss_ring_hdr", field) == off, field
    seg = {
        "head": L.S_HEAD,
        "logged": L.S_LOGGED,
        "drops": L.S_DROPS,
        "reserved": L.S_RESERVED,
        "tail": L.S_TAIL,
        "consumed": L.S_CONSUMED,
        "rel_end": L.S_REL_END,
        "rel_consumed": L.S_REL_CONSUMED,
        "lost": L.S_LOST,
    }
    for field, off in seg.items():
        assert ffi.offsetof("iss_seg_hdr", field) == off, field
    slot = {"state": L.SL_STATE, "seg_id": L.SL_SEG_ID, "owner_pid": L.SL_OWNER_PID, "data_size": L.SL_DATA_SIZE}
    for field, off in slot.items():
        assert ffi.offsetof("iss_slot", field) == off, field
    assert ffi.sizeof("iss_slot") == L.SLOT_SIZE
    assert ffi.sizeof("iss_seg_hdr") == L.SEG_HDR_SIZE
    assert ffi.sizeof("iss_rec") == L.REC_HDR_SIZE
    assert ffi.offsetof("iss_rec", "epoch") == 16
    assert L.META_MAX + L.H_META + 4 == L.HDR_SIZE and L.H_DROPS + 8 * L.NDROPS <= L.H_META


# --------------------------------------------------------------------------- hardened opens


def _table(tmp_path) -> Table:
    return Table.create(L.SEG_DATA_MIN, {"created": 0}, directory=str(tmp_path), native=native_available())


def test_symlink_at_a_ring_path_is_refused(tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    link = tmp_path / "isstreamer-1-abc.ring"
    os.symlink(target, link)
    with pytest.raises(RingRefused, match="symbolic link"):
        Table.open(str(link))
    with pytest.raises(RingRefused, match="symbolic link"):
        Segment.open(str(link))
    assert target.read_bytes() == b"precious"


def test_file_of_another_mode_or_owner_is_refused(tmp_path):
    t = _table(tmp_path)
    t.close()
    os.chmod(t.path, 0o644)
    with pytest.raises(RingRefused, match="mode 644"):
        Table.open(t.path)
    os.chmod(t.path, 0o600)
    if os.geteuid() == 0:
        os.chown(t.path, 65534, 65534)
        with pytest.raises(RingRefused, match="owned by uid 65534"):
            Table.open(t.path)
        os.chown(t.path, 0, 0)
    assert Table.open(t.path).nslots == Table.NSLOTS


def test_replaced_file_is_refused_by_identity(tmp_path):
    """A handle carries (st_dev, st_ino): a new file at the same path is not the ring it knew."""
    t = _table(tmp_path)
    ident = t.identity
    t.close()
    os.unlink(t.path)
    with pytest.raises(RingClosed):
        Table.open(t.path, identity=ident)
    fd = os.open(t.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, open("/dev/urandom", "rb").read(8192))
    os.close(fd)
    with pytest.raises(RingRefused):
        Table.open(t.path, identity=ident)


def test_a_table_is_not_a_segment_and_back(tmp_path):
    t = _table(tmp_path)
    with pytest.raises(RingRefused, match="not a ring file"):
        Segment.open(t.path)
    r = Segment.create(L.SEG_DATA_MIN, directory=str(tmp_path))
    with pytest.raises(RingRefused, match="not a ring file"):
        Table.open(r.path)


def test_failed_creation_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="ring_size"):
        Table.create(1 << 40, {}, directory=str(tmp_path))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- ownership


OWNER = """
import sys, time
from isstreamer.ring import Attachment, Table
t = Table.open(sys.argv[1])
att = Attachment.create(t, 1 << 16, t.native)
print(att.slot, att.seg_id, flush=True)
time.sleep(3600)
"""


def test_owner_lock_dies_with_the_process_and_is_not_inherited(tmp_path, backend):
    """The sender's liveness probe is the kernel's record lock: held while the owner lives, free
    once it is SIGKILLed; a fork child of the owner does not hold it."""
    t = _table(tmp_path)
    path = write_script(tmp_path, "owner.py", OWNER)
    proc = subprocess.Popen([sys.executable, path, t.path], stdout=subprocess.PIPE, text=True, env=script_env(backend))
    try:
        slot, seg_id = map(int, proc.stdout.readline().split())
        fd = R.open_private(t.seg_path(seg_id))
        assert R.lock_held_elsewhere(fd, L.LOCK_OWNER)
        assert [(s, st, i) for s, st, i, _ in t.slots()] == [(slot, L.SLOT_OWNED, seg_id)]
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not R.lock_held_elsewhere(fd, L.LOCK_OWNER), 10)
        os.close(fd)
    finally:
        proc.kill()
        proc.wait()
    att = Attachment.create(t, 1 << 16, t.native)
    fd = R.open_private(t.seg_path(att.seg_id))
    pid = os.fork()
    if pid == 0:  # the child: the parent's lock is not ours
        os._exit(0 if R.lock_held_elsewhere(fd, L.LOCK_OWNER) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, "a fork child saw its parent's segment as free"
    os.close(fd)


# --------------------------------------------------------------------------- full ring


@pytest.mark.parametrize("native", [True, False])
def test_full_segment_drops_cost_a_put_and_are_counted(tmp_path, native):
    """After the one wait of a full episode (``dropping`` set), every put that finds no room is
    counted as ring_full by the put itself; the first put that fits ends the episode."""
    if native and not native_available():
        pytest.skip("needs the C extension")
    ring = Segment.create(L.SEG_DATA_MIN, directory=str(tmp_path), native=native)
    att = Attachment(ring)
    p = att.new_producer(0)
    put = R.puts_for(native)[0]
    n = 0
    while put(p, b"k", 1, 1.5, 1.0) == L.OK:
        n += 1
    assert put(p, b"k", 1, 1.5, 1.0) == L.FULL
    p.dropping = 1
    for _ in range(10):
        assert put(p, b"k", 1, 1.5, 1.0) == L.DROPPED
    drops = ring.seg_field(0, L.S_DROPS + 8 * L.D["ring_full"])
    assert drops == 10
    ring.store(ring.seg_offset(0) + L.S_TAIL, ring.seg_field(0, L.S_HEAD))  # the sender drained it
    assert put(p, b"k", 1, 1.5, 1.0) == L.OK
    assert p.dropping == 0
    assert ring.seg_field(0, L.S_LOGGED) == n + 1


# --------------------------------------------------------------------------- backends


def test_fallback_refused_on_weakly_ordered_cpus(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "armv7l")
    monkeypatch.delenv(R.ENV_FORCE_FALLBACK, raising=False)
    with pytest.raises(RuntimeError, match="not safe on armv7l"):
        R.check_fallback_safe()
    monkeypatch.setenv(R.ENV_FORCE_FALLBACK, "1")
    R.check_fallback_safe()
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.delenv(R.ENV_FORCE_FALLBACK)
    R.check_fallback_safe()


# --------------------------------------------------------------------------- the sender's imports

HOSTILE_PKG = "raise SystemExit('the sender imported the working directory\\'s isstreamer')\n"

FROM_ELSEWHERE = """
import sys
from isstreamer import Streamer
s = Streamer(bucket_key="cwd", access_key="k", api_base=sys.argv[1])
for i in range(100):
    s.log("i", i)
ok = s.flush(30)
st = s.stats()
print(ok, st["sent"], st["backend"], flush=True)
s.close()
"""


def test_sender_imports_its_parents_package_whatever_the_working_directory(tmp_path, collector, backend):
    """Issue 11 item 1: with an ``isstreamer/`` folder in the working directory (the repo root
    after a plain ``pip install .``), the sender still imports the package its parent imported."""
    cwd = tmp_path / "work"
    (cwd / "isstreamer").mkdir(parents=True)
    (cwd / "isstreamer" / "__init__.py").write_text(HOSTILE_PKG)
    (cwd / "isstreamer" / "sender_main.py").write_text(HOSTILE_PKG)
    script = write_script(tmp_path, "app.py", FROM_ELSEWHERE)
    env = script_env(backend, PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, script, collector.url], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "100", backend], out.stdout + out.stderr
    assert "working directory" not in out.stderr


LIGHT = """
import sys
import isstreamer
from isstreamer import Streamer
s = Streamer(bucket_key="light", access_key="k", api_base=sys.argv[1])
s.log("t", 1.5)
heavy = sorted(m for m in ("requests", "aiohttp", "click", "tqdm", "urllib3") if m in sys.modules)
print(",".join(heavy) or "none", flush=True)
s.close(10)
"""


def test_a_producer_imports_no_http_stack(tmp_path, collector, backend):
    """Issue 11 item 4: import isstreamer, Streamer(...) and the first log() import none of
    requests, aiohttp, click or tqdm (only the sender and the CLI do): every pool worker pays
    the import."""
    script = write_script(tmp_path, "light.py", LIGHT)
    out = subprocess.run(
        [sys.executable, script, collector.url], env=script_env(backend), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none", "a producer imported %s" % out.stdout.strip()
