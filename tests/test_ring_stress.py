"""Ring stress: producers SIGKILLed mid-write, wrap-around with records of every size, and a full
ring under each overflow policy. Both backends; real processes, real mappings, real servers.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from typing import Dict, List, Tuple

import orjson
import pytest

from support import GatedProxy, script_env, wait_until, write_script

import isstreamer
from isstreamer.ring import layout as L
from isstreamer.sender.encoder import MIN_BATCH_BYTES, Encoder
from isstreamer.ring import Attachment, Segment, native_available, puts_for


# --------------------------------------------------------------------------- SIGKILL mid-write

PRODUCER = """
    import os, sys, time
    from isstreamer.ring import layout as L
    from isstreamer.ring import Attachment, Segment, puts_for
    path, native, seed, idx = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
    ring = Segment.open(path, native=native)
    p = Attachment(ring, idx).new_producer(0)
    put_str = puts_for(native)[3]
    print(idx, flush=True)
    key = b"p%d" % os.getpid()
    seq = 0
    while True:
        n = (seq * 7919 + seed) % 8000
        body = b"%d:%d:" % (seq, n) + bytes([97 + seq % 26]) * n
        rc = put_str(p, key, len(key), body, len(body), 1700000000.0 + seq)
        if rc == L.FULL:
            time.sleep(0.0002)
            continue
        assert rc == L.OK, rc
        seq += 1
"""


class SegmentCheck:
    """What one killed producer's segment gave back: every record whole, in order, once."""

    def __init__(self, pid: int) -> None:
        self.key = "p%d" % pid
        self.next_seq = 0

    def take(self, events: List[dict]) -> None:
        """Check a batch's events and move on."""
        for e in events:
            assert e["key"] == self.key
            seq_s, n_s, payload = e["value"].split(":", 2)
            seq, n = int(seq_s), int(n_s)
            assert seq == self.next_seq, "gap or duplicate: got %d, want %d" % (seq, self.next_seq)
            assert n == (len(payload)) and payload == chr(97 + seq % 26) * n, "torn record %d" % seq
            assert e["epoch"] == 1700000000.0 + seq
            self.next_seq += 1


def _state(ring: Segment, seg: int) -> str:
    """A segment's header fields, for failure messages."""
    base = ring.seg_offset(seg)
    names = ("state", "owner_pid", "head", "logged", "tail", "consumed")
    offs = (L.S_STATE, L.S_OWNER_PID, L.S_HEAD, L.S_LOGGED, L.S_TAIL, L.S_CONSUMED)
    return ", ".join("%s=%d" % (n, ring.load(base + o)) for n, o in zip(names, offs))


def _drain_once(ring: Segment, enc: Encoder, seg: int, check: SegmentCheck) -> bool:
    """One batch from a segment, checked and released; True if it took anything."""
    base = ring.seg_offset(seg)
    tail, head = ring.load(base + L.S_TAIL), ring.load(base + L.S_HEAD)
    if tail == head:
        return False
    b = enc.next_batch(seg, tail, 200)
    assert not b.corrupt and b.skipped == 0, "the consumer met a torn or corrupt record (%s; tail was %d)" % (
        _state(ring, seg),
        tail,
    )
    assert b.end > tail, "no progress: the consumer would stall"
    assert b.end <= ring.load(base + L.S_HEAD), "read past the published head (%s)" % _state(ring, seg)
    check.take(orjson.loads(b.body))
    ring.store(base + L.S_CONSUMED, ring.load(base + L.S_CONSUMED) + b.nevents)
    ring.store(base + L.S_TAIL, b.end)
    return True


WRITER = """
    import sys
    from isstreamer.ring import Segment
    ring = Segment.open(sys.argv[1], native=False)
    off = int(sys.argv[2])
    ring.store(off, 0xFFFFFFFF)
    print("ready", flush=True)
    while True:
        ring.store(off, 0x100000000)
        ring.store(off, 0xFFFFFFFF)
"""


def test_python_backend_64bit_fields_are_never_seen_half_written(tmp_path):
    """Another process must only ever see values that were stored, never a transient 0 (with
    the bug about a quarter of the reads see 0; a Python producer's head, stored once per
    record, shows it about once in 10^5 reads)."""
    ring = Segment.create(L.SEG_DATA_MIN, 1, nbuckets=1, directory=str(tmp_path), native=False)
    reader = Segment.open(ring.path, native=native_available())  # atomic loads where available
    off = ring.seg_offset(0) + L.S_HEAD
    script = write_script(tmp_path, "writer.py", WRITER)
    proc = subprocess.Popen(
        [sys.executable, script, ring.path, str(off)], stdout=subprocess.PIPE, env=script_env("python")
    )
    try:
        assert proc.stdout.readline().strip() == b"ready"
        bad, flips, last = None, 0, None
        for _ in range(5_000_000):  # until a bad value, or the writer was seen storing 100k times
            v = reader.load(off)
            if v not in (0xFFFFFFFF, 0x100000000):
                bad = v
                break
            if v != last:
                flips, last = flips + 1, v
                if flips >= 100_000:
                    break
        assert bad is None, "read %#x, a value that was never stored" % bad
    finally:
        proc.kill()
        proc.wait()
        reader.close()
        ring.close()


@pytest.mark.parametrize("backend", ["native", "python"])
@pytest.mark.slow
def test_producers_killed_mid_write(tmp_path, backend, monkeypatch):
    """Many rounds of producers SIGKILLed at random points while a consumer drains them: every
    published record decodes whole, in order, exactly once; nothing past head ever appears;
    the consumer never stalls; the segments are reclaimed and reused."""
    if backend == "native" and not native_available():
        pytest.fail("the C extension is not built (python isstreamer/_build_native.py)")
    native = backend == "native"
    rounds, per_round = 30, 3
    ring = Segment.create(per_round * L.SEG_DATA_MIN, per_round, nbuckets=1, directory=str(tmp_path), native=native)
    enc = Encoder(ring, MIN_BATCH_BYTES * 4, native=native)
    script = write_script(tmp_path, "producer.py", PRODUCER)
    env = script_env(backend)
    rng = random.Random(20260101)
    total = 0
    procs: List[subprocess.Popen] = []
    try:
        for rnd in range(rounds):
            procs = [
                subprocess.Popen(
                    [sys.executable, script, ring.path, "1" if native else "0", str(rnd * 10 + k), str(k)],
                    stdout=subprocess.PIPE,
                    env=env,
                )
                for k in range(per_round)
            ]
            segs: Dict[int, Tuple[subprocess.Popen, SegmentCheck]] = {}
            for proc in procs:
                line = proc.stdout.readline()
                assert line.strip().isdigit(), "producer failed to start"
                assert int(line) not in segs, "two producers were given segment %s" % line.strip()
                segs[int(line)] = (proc, SegmentCheck(proc.pid))
            kill_at = {seg: rng.randint(0, 60) for seg in segs}
            alive = set(segs)
            passes = 0
            while alive:
                for seg in list(alive):
                    if passes >= kill_at[seg]:
                        proc = segs[seg][0]
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait()
                        alive.discard(seg)
                for seg, (_, check) in segs.items():
                    _drain_once(ring, enc, seg, check)
                passes += 1
                if rng.random() < 0.5:
                    threading.Event().wait(rng.uniform(0, 0.002))
            for seg, (proc, check) in segs.items():
                guard = 0
                while _drain_once(ring, enc, seg, check):
                    guard += 1
                    assert guard < 100_000
                base = ring.seg_offset(seg)
                logged = ring.load(base + L.S_LOGGED)
                # `logged` is bumped right after head is published: a kill in between leaves it one short
                assert check.next_seq in (logged, logged + 1), (check.next_seq, _state(ring, seg), check.key)
                assert ring.load(base + L.S_TAIL) == ring.load(base + L.S_HEAD)
                total += check.next_seq
                proc.stdout.close()
                for off in (L.S_HEAD, L.S_TAIL, L.S_LOGGED, L.S_CONSUMED):  # reuse it next round
                    ring.store(base + off, 0)
        assert total > 0
    finally:
        for proc in procs:  # a failed check must not leave producers spinning
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        ring.close()


# --------------------------------------------------------------------------- every size, wrapping


def _every_size_records() -> List[Tuple[str, bytes, object]]:
    """(kind, key, value) whose record sizes cover every multiple of 8 up to ISS_REC_MAX."""
    out: List[Tuple[str, bytes, object]] = []
    for size in range(L.REC_HDR_SIZE + 8, L.REC_MAX + 1, 8):
        body = size - L.REC_HDR_SIZE
        for fill in (0, 7):  # exact fit, and 7 bytes of padding
            payload = body - fill
            if payload < 1:
                continue
            klen = min(L.KEY_MAX, max(1, payload // 9))
            slen = payload - klen
            if slen > L.STR_MAX:
                klen, slen = L.KEY_MAX, payload - L.KEY_MAX
            if slen <= L.STR_MAX:
                key = bytes([48 + klen % 10]) * klen
                out.append(("str", key, bytes([65 + size % 26]) * slen))
    out.append(("str", b"k" * L.KEY_MAX, b"v" * L.STR_MAX))  # the largest record there is
    for i in range(1, L.KEY_MAX + 1, 37):
        out.append(("f64", b"f" * i, i / 7.0))
        out.append(("i64", b"i" * i, -(2**63) + i))
        out.append(("bool", b"b" * i, bool(i & 1)))
    return out


def test_wraparound_with_every_record_size(tmp_path, backend):
    """Records of every size up to the limits through a minimum-size segment: it wraps many
    times, padding and exact fits alike, and every record comes back intact."""
    native = backend == "native"
    ring = Segment.create(L.SEG_DATA_MIN, 1, nbuckets=1, directory=str(tmp_path), native=native)
    att = Attachment(ring, 0, 1)
    p = att.new_producer(0)
    f64, i64, boolean, string = puts_for(native)
    enc = Encoder(ring, MIN_BATCH_BYTES, native=native)
    records = _every_size_records()
    got: List[Tuple[str, object]] = []
    pads_seen = 0

    def drain() -> None:
        nonlocal pads_seen
        while ring.seg_field(0, L.S_TAIL) < ring.seg_field(0, L.S_HEAD):
            tail = ring.seg_field(0, L.S_TAIL)
            off = tail % ring.seg_data_size
            data = ring.seg_offset(0) + L.SEG_HDR_SIZE
            if ring.mm[data + off + 4] == L.T_PAD:
                pads_seen += 1
            b = enc.next_batch(0, tail, 1000)
            assert not b.corrupt and b.end > tail
            got.extend((e["key"], e["value"]) for e in orjson.loads(b.body))
            ring.store(ring.seg_offset(0) + L.S_TAIL, b.end)

    try:
        for kind, key, value in records:
            while True:
                if kind == "str":
                    rc = string(p, key, len(key), value, len(value), 1.7e9)
                elif kind == "f64":
                    rc = f64(p, key, len(key), value, 1.7e9)
                elif kind == "i64":
                    rc = i64(p, key, len(key), value, 1.7e9)
                else:
                    rc = boolean(p, key, len(key), value, 1.7e9)
                if rc != L.FULL:
                    break
                drain()
            assert rc == L.OK, (kind, len(key))
        drain()
        assert len(got) == len(records)
        for (gk, gv), (kind, key, value) in zip(got, records):
            assert gk == key.decode()
            want = value.decode() if kind == "str" else value
            assert gv == want and type(gv) is type(want)
        assert ring.seg_field(0, L.S_HEAD) > 50 * ring.seg_data_size  # wrapped many times
        assert pads_seen > 10
        # one past each limit is refused and writes nothing
        head = ring.seg_field(0, L.S_HEAD)
        assert string(p, b"k" * (L.KEY_MAX + 1), L.KEY_MAX + 1, b"v", 1, 1.7e9) == L.ETOOBIG
        assert string(p, b"k", 1, b"v" * (L.STR_MAX + 1), L.STR_MAX + 1, 1.7e9) == L.ETOOBIG
        assert ring.seg_field(0, L.S_HEAD) == head
    finally:
        ring.close()


# --------------------------------------------------------------------------- full ring policies


def _streamer(gated: GatedProxy, tmp_path, **kw) -> isstreamer.Streamer:
    kw.setdefault("request_timeout", 120.0)
    return isstreamer.Streamer(
        bucket_key=kw.pop("bucket_key"),
        access_key="k",
        api_base=gated.url,
        spool_dir=str(tmp_path / "spool"),
        ring_size=L.SEG_DATA_MIN,
        flush_interval=0.01,
        **kw,
    )


VALUE = "v" * 200


def _stall(s: isstreamer.Streamer, gated: GatedProxy) -> int:
    """Hold the sender inside a request, then stop it (SIGSTOP): a hanging API alone no longer
    fills the ring (the sender drains it to the spool while a request is out). Returns its pid."""
    assert wait_until(lambda: gated.waiting > 0, 60), "the sender never reached the API"
    pid = s.sender_pid
    assert pid
    os.kill(pid, signal.SIGSTOP)
    return pid


def _resume(pid: int, gated: GatedProxy) -> None:
    os.kill(pid, signal.SIGCONT)
    gated.gate.set()


def test_full_ring_drop_policy(tmp_path, collector, gated, backend):
    """on_full="drop": events that do not fit are dropped at once and counted as ring_full;
    every event that was taken is delivered exactly once when the API answers again."""
    s = _streamer(gated, tmp_path, bucket_key="drop", on_full="drop")
    n = 3000
    pid = 0
    try:
        pid = _stall(s, gated)
        for i in range(n):
            s.log("n", "%d:%s" % (i, VALUE))
        st = s.stats()
        dropped = st["dropped"].get("ring_full", 0)
        assert dropped > 0 and st["logged"] + dropped == n, st
        assert s.ring_fill() > 0.9
        _resume(pid, gated)
        assert s.flush(timeout=120)
    finally:
        if pid:
            _resume(pid, gated)
        s.close(timeout=30)
    assert wait_until(lambda: len(collector.events("drop")) >= n - dropped, 60)
    got = [int(e["value"].split(":")[0]) for e in collector.events("drop")]
    assert len(got) == len(set(got)) == n - dropped
    assert got == sorted(got)  # what was kept is a prefix-ordered subset, in order


def test_full_ring_block_policy_waits_for_room(tmp_path, collector, gated, backend):
    """on_full="block": log() waits while the ring is full and goes on once the sender drains;
    nothing is dropped."""
    s = _streamer(gated, tmp_path, bucket_key="block", on_full="block", full_timeout=300.0)
    n = 1000
    done: List[int] = []
    errors: List[BaseException] = []

    def work() -> None:
        try:
            for i in range(n):
                s.log("n", "%d:%s" % (i, VALUE))
                done.append(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    t = threading.Thread(target=work)
    pid = 0
    try:
        pid = _stall(s, gated)
        t.start()
        assert wait_until(lambda: s.ring_fill() > 0.95, 60), "the ring never filled up"
        stuck_at = len(done)
        assert t.is_alive() and stuck_at < n, "log() did not wait for room"
        _resume(pid, gated)
        t.join(300)
        assert not t.is_alive() and not errors, errors
        assert len(done) == n
        assert s.flush(timeout=120)
        assert s.stats()["dropped"].get("ring_full", 0) == 0
    finally:
        if pid:
            _resume(pid, gated)
        t.join(300)
        s.close(timeout=30)
    assert wait_until(lambda: len(collector.events("block")) >= n, 60)
    got = [int(e["value"].split(":")[0]) for e in collector.events("block")]
    assert sorted(got) == list(range(n))


def test_full_ring_block_policy_gives_up_after_full_timeout(tmp_path, collector, gated, backend):
    """on_full="block" with a short full_timeout: once it passes the event is dropped and
    counted as ring_full; the caller's loop goes on; the rest is delivered exactly once."""
    s = _streamer(gated, tmp_path, bucket_key="block-timeout", on_full="block", full_timeout=0.01)
    n = 400
    pid = 0
    try:
        pid = _stall(s, gated)
        for i in range(n):
            s.log("n", "%d:%s" % (i, VALUE))
        st = s.stats()
        dropped = st["dropped"].get("ring_full", 0)
        assert dropped > 0 and st["logged"] + dropped == n, st
        _resume(pid, gated)
        assert s.flush(timeout=120)
    finally:
        if pid:
            _resume(pid, gated)
        s.close(timeout=30)
    assert wait_until(lambda: len(collector.events("block-timeout")) >= n - dropped, 60)
    got = [int(e["value"].split(":")[0]) for e in collector.events("block-timeout")]
    assert len(got) == len(set(got)) == n - dropped


@pytest.mark.slow
def test_hanging_api_never_stalls_the_loop(tmp_path, collector, gated, backend):
    """Issue 10 item 1: the API holds every request for a while (a stalled connection, a captive
    portal): the sender drains the ring to the spool while its request is out, so a tight loop on
    a small ring (on_full="block") neither waits out full_timeout nor drops; once the API answers,
    every event arrives exactly once (the in-flight batch's spool copy is taken back)."""
    s = _streamer(gated, tmp_path, bucket_key="hang", on_full="block", full_timeout=30.0)
    n = 20000
    try:
        assert wait_until(lambda: gated.waiting > 0, 60), "the sender never reached the API"
        for i in range(n):
            s.log("n", "%d:%s" % (i, VALUE))
        st = s.stats()
        assert not st["dropped"], st
        assert st["spooled"] > 0, "nothing was drained to the spool while the request was out"
        gated.gate.set()
        assert s.flush(timeout=180)
    finally:
        gated.gate.set()
        s.close(timeout=30)
    assert wait_until(lambda: len(collector.events("hang")) >= n, 120)
    got = [int(e["value"].split(":")[0]) for e in collector.events("hang")]
    assert sorted(got) == list(range(n)), "lost or doubled: %d events for %d" % (len(got), n)
