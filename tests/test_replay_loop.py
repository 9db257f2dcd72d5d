"""The spool-replay loop the sender and ``isstreamer replay`` share (replay.StreamReplay): real
spool files, the delivery policy over a scripted fake transport and a fake clock (no server, no
sleeping). The same loop against a real server and real senders is in test_delivery.py and
test_spool_safety.py.
"""

from __future__ import annotations

import errno
import json
import os
import random
from typing import Any, List, Optional, Tuple

import pytest

from isstreamer.sender.delivery import Delivery, Policy
from isstreamer.sender.replay import Stop, StreamReplay
from isstreamer.sender.spool import SpoolWriter, StreamMeta, pending_files, read_meta
from isstreamer.sender.transport import Answer

try:
    from test_policy import WALL, FakeClock, FakeTransport
except ImportError:  # tests/ made a package
    from .test_policy import WALL, FakeClock, FakeTransport  # type: ignore[no-redef]

API = "http://fake"


def spool_with(tmp_path: Any, lines: List[List[Any]]) -> Tuple[StreamMeta, str]:
    """A stream with one spool file of the given lines (lists of values), written by SpoolWriter."""
    w = SpoolWriter(str(tmp_path / "spool"))
    path = ""
    for values in lines:
        path = w.write(API, "bk", "name", "fp", json.dumps([{"key": "n", "value": v} for v in values]).encode())
    w.close_all()
    meta = read_meta(os.path.dirname(path))
    assert meta is not None
    return meta, path


def make_loop(
    tmp_path: Any,
    *script: Any,
    patient: bool,
    persist: bool = False,
    respool: Any = None,
    keep_going: Any = lambda: True,
    **policy: Any,
) -> Tuple[StreamReplay, FakeTransport, FakeClock, List[bytes]]:
    t = FakeTransport(*script)
    clock = FakeClock()
    d = Delivery(
        t,
        Policy(**policy),
        str(tmp_path / "spool" / "rejected.jsonl"),
        lambda m: None,  # type: ignore
        clock=clock,
        sleep=clock.sleep,
        wall=lambda: WALL,
        rng=random.Random(1),
    )
    respooled: List[bytes] = []
    loop = StreamReplay(
        d, respool or (lambda m, b: respooled.append(b)), patient=patient, persist=persist, keep_going=keep_going
    )
    return loop, t, clock, respooled


def sent_values(t: FakeTransport) -> List[Any]:
    return [e["value"] for kind, events, _ in t.calls if kind == "events" for e in events]


def position(path: str) -> Optional[int]:
    try:
        with open(path + ".pos") as f:
            return int(f.read())
    except FileNotFoundError:
        return None


def test_everything_delivered_removes_the_file(tmp_path: Any) -> None:
    meta, path = spool_with(tmp_path, [[1, 2], [3], [4, 5]])
    for patient in (False, True):
        loop, t, _, _ = make_loop(tmp_path, patient=patient)
        if not os.path.exists(path):
            meta, path = spool_with(tmp_path, [[1, 2], [3], [4, 5]])
        assert loop.run(meta, pending_files(meta.path)) is Stop.DONE
        assert sent_values(t) == [1, 2, 3, 4, 5]
        assert not os.path.exists(path) and not os.path.exists(path + ".pos")
        assert (loop.counts.batches, loop.counts.delivered, loop.counts.finished) == (3, 5, 1)


def test_one_attempt_per_line_when_not_patient(tmp_path: Any) -> None:
    """The sender's mode: the first line not settled ends the run (LATER); progress is kept."""
    meta, path = spool_with(tmp_path, [[1], [2], [3]])
    loop, t, _, _ = make_loop(tmp_path, 204, 503, patient=False)
    assert loop.run(meta, pending_files(meta.path)) is Stop.LATER
    assert sent_values(t) == [1, 2] and os.path.exists(path)
    loop2, t2, _, _ = make_loop(tmp_path, patient=False)
    assert loop2.run(meta, pending_files(meta.path)) is Stop.DONE
    assert sent_values(t2) == [2, 3]  # resumed after the delivered line: nothing sent twice


def test_patient_waits_out_backoff_and_429(tmp_path: Any) -> None:
    """The CLI's mode: 503s and a 429 are waited out (on the fake clock) until the line is settled."""
    meta, path = spool_with(tmp_path, [[1], [2]])
    loop, t, clock, _ = make_loop(
        tmp_path, 503, Answer(429, {"Retry-After": "5"}, ""), 204, 204, patient=True, max_attempts=4
    )
    assert loop.run(meta, pending_files(meta.path)) is Stop.DONE
    assert sent_values(t) == [1, 1, 1, 2]
    assert sum(clock.slept) >= 5.0


def test_patient_gives_up_on_an_outage_unless_persisting(tmp_path: Any) -> None:
    meta, path = spool_with(tmp_path, [[1]])
    loop, t, _, _ = make_loop(tmp_path, *[503] * 10, patient=True, max_attempts=3)
    assert loop.run(meta, pending_files(meta.path)) is Stop.LATER
    assert len(t.calls) == 3 and "3 failed requests in a row" in loop.why and os.path.exists(path)
    # persisting (the sender's exit budget): retries through the outage until the time limit
    loop, t, clock, _ = make_loop(tmp_path, *[503] * 50, patient=True, persist=True, max_attempts=3, backoff_max=1.0)
    assert loop.run(meta, pending_files(meta.path), until=clock.now + 10.0) is Stop.BUDGET
    assert len(t.calls) > 3 and clock.now <= 1000.0 + 10.0 and os.path.exists(path)
    # and delivers once the API answers within it
    loop, t, clock, _ = make_loop(
        tmp_path, *[503] * 6, 204, patient=True, persist=True, max_attempts=3, backoff_max=1.0
    )
    assert loop.run(meta, pending_files(meta.path), until=clock.now + 10.0) is Stop.DONE
    assert not os.path.exists(path)


def test_auth_stops_even_a_persisting_run(tmp_path: Any) -> None:
    meta, path = spool_with(tmp_path, [[1]])
    loop, t, _, _ = make_loop(tmp_path, 401, patient=True, persist=True)
    assert loop.run(meta, pending_files(meta.path), until=2000.0) is Stop.LATER
    assert "HTTP 401" in loop.why and len(t.calls) == 1 and os.path.exists(path)


def test_keep_going_interrupts_a_patient_run(tmp_path: Any) -> None:
    """The sender's exit replay stops when a producer joins (keep_going false)."""
    meta, path = spool_with(tmp_path, [[1], [2], [3]])
    calls = iter([True, False])
    loop, t, _, _ = make_loop(tmp_path, patient=True, keep_going=lambda: next(calls, False))
    assert loop.run(meta, pending_files(meta.path)) is not Stop.DONE
    assert sent_values(t) == [1] and loop.why == "interrupted" and os.path.exists(path)


def test_a_split_cut_short_goes_back_to_the_spool_before_the_mark(tmp_path: Any) -> None:
    meta, path = spool_with(tmp_path, [[1, 2, 3, 4], [5]])
    loop, t, _, respooled = make_loop(tmp_path, 413, 204, 503, patient=False)
    assert loop.run(meta, pending_files(meta.path)) is Stop.LATER
    assert [[e["value"] for e in json.loads(b)] for b in respooled] == [[3, 4]]
    with open(path, "rb") as f:
        first = len(f.readline())
    assert position(path) == first  # the line is settled: its rest is in the spool


def test_a_failed_write_back_keeps_the_line(tmp_path: Any) -> None:
    """The rest of a split cannot be spooled (disk full): the line is not marked, the file kept."""
    meta, path = spool_with(tmp_path, [[1, 2, 3, 4], [5]])

    def full(m: StreamMeta, b: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    loop, t, _, _ = make_loop(tmp_path, 413, 204, 503, patient=False, respool=full)
    assert loop.run(meta, pending_files(meta.path)) is Stop.FAULT
    assert "No space left on device" in loop.why and position(path) is None and os.path.exists(path)
    assert loop.counts.finished == 0


def test_the_time_limit_stops_between_lines(tmp_path: Any) -> None:
    meta, path = spool_with(tmp_path, [[1], [2], [3]])

    def slow(p: str, events: Any) -> Answer:
        clock.now += 1.0
        return Answer(204, {}, "")

    loop, t, clock, _ = make_loop(tmp_path, slow, slow, slow, patient=False)
    assert loop.run(meta, pending_files(meta.path), until=clock.now + 1.5) is Stop.BUDGET
    assert sent_values(t) == [1, 2] and os.path.exists(path)


@pytest.mark.parametrize("patient", [False, True])
def test_bucket_creation_goes_through_the_policy(tmp_path: Any, patient: bool) -> None:
    meta, _ = spool_with(tmp_path, [[1]])
    loop, t, _, _ = make_loop(tmp_path, 503, 201, patient=patient)
    assert loop.bucket(meta) is patient  # patient: retried after the backoff; else one attempt
    assert [c[0] for c in t.calls] == ["buckets"] * (2 if patient else 1)
    assert loop.d.failures == (0 if patient else 1)
