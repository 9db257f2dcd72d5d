"""The delivery policy (isstreamer/delivery.py) on its own: a scripted fake transport and a
fake clock, no server, no sleeping. What it checks against a real server and real senders is in
test_delivery.py; here each rule of the policy is one small test (in the manner of urllib3's
``Retry`` tests).
"""

from __future__ import annotations

import json
import os
import random
import stat
from email.utils import formatdate
from typing import Any, Dict, List, Optional, Tuple

import pytest

from isstreamer.sender.delivery import AUTH_STATUSES, Delivery, Kind, Policy, Result, classify, retry_after_seconds
from isstreamer.sender.transport import Answer

WALL = 1_800_000_000.0  # the fake wall clock (time.time()) of every test


class FakeClock:
    """A monotonic clock that only moves when told; ``sleep`` advances it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: List[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


class FakeTransport:
    """Answers requests from a script: a status, or a callable (path, body) -> Answer."""

    api_base = "http://fake"

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls: List[Tuple[str, Any, Optional[float]]] = []

    def _answer(self, path: str, body: Any) -> Answer:
        item = self.script.pop(0) if self.script else 204
        if callable(item):
            return item(path, body)
        if isinstance(item, Answer):
            return item
        return Answer(item, {}, "", None if item else "ConnectionError: refused")

    def post_events(self, bucket_key: str, body: bytes, timeout: Optional[float] = None) -> Answer:
        self.calls.append(("events", json.loads(body), timeout))
        return self._answer("events", json.loads(body))

    def create_bucket(self, bucket_key: str, bucket_name: str, timeout: Optional[float] = None) -> Answer:
        self.calls.append(("buckets", bucket_key, timeout))
        return self._answer("buckets", bucket_key)


def make(*script: Any, tmp_path: Any = None, **policy: Any) -> Tuple[Delivery, FakeTransport, FakeClock, List[str]]:
    t = FakeTransport(*script)
    clock = FakeClock()
    reports: List[str] = []
    rejected = os.path.join(str(tmp_path), "rejected.jsonl") if tmp_path is not None else "/nonexistent/rejected.jsonl"
    d = Delivery(
        t,
        Policy(**policy),
        rejected,
        reports.append,
        clock=clock,
        sleep=clock.sleep,  # type: ignore[arg-type]
        wall=lambda: WALL,
        rng=random.Random(1),
    )
    return d, t, clock, reports


def body(*values: Any) -> bytes:
    return json.dumps([{"key": "n", "value": v} for v in values]).encode()


def answer(status: int, **headers: str) -> Answer:
    return Answer(status, headers, "")


def attempt(d: Delivery, what: str) -> Result:
    """One event batch or one bucket creation: the two requests share the policy."""
    if what == "events":
        return d.send("bk", body(1, 2), 2)
    return d.create_bucket("bk", "name")


BOTH = pytest.mark.parametrize("what", ["events", "buckets"])


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    "status,kind",
    [
        (200, Kind.DELIVERED),
        (201, Kind.DELIVERED),
        (204, Kind.DELIVERED),
        (0, Kind.TRANSIENT),
        (500, Kind.TRANSIENT),
        (502, Kind.TRANSIENT),
        (503, Kind.TRANSIENT),
        (599, Kind.TRANSIENT),
        (429, Kind.RATE_LIMITED),
        (401, Kind.AUTH),
        (402, Kind.AUTH),
        (403, Kind.AUTH),
        (400, None),
        (404, None),
        (413, None),
        (418, None),
    ],
)
def test_classify(status: int, kind: Optional[Kind]) -> None:
    assert classify(status) is kind


def test_kind_is_an_enum_and_knows_settled() -> None:
    assert {k for k in Kind if k.settled} == {Kind.DELIVERED, Kind.REJECTED}
    d, _, _, _ = make(204)
    assert isinstance(d.send("bk", body(1), 1).kind, Kind)


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    "headers,expected",
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-5"}, 0.0),
        ({"Retry-After": "120"}, 120.0),
        ({"Retry-After": "86400"}, 300.0),  # capped
        ({"Retry-After": "1e308"}, 300.0),
        ({"Retry-After": "inf"}, 300.0),
        ({"Retry-After": "nan"}, 1.0),  # unusable: the default
        ({"Retry-After": "soon"}, 1.0),
        ({"Retry-After": formatdate(WALL + 42, usegmt=True)}, 42.0),
        ({"Retry-After": formatdate(WALL - 42, usegmt=True)}, 0.0),
        ({"Retry-After": formatdate(WALL + 7 * 86400, usegmt=True)}, 300.0),  # capped
        ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, 300.0),
        ({"Retry-After": formatdate(WALL + 30).replace("+0000", "-0000").replace("GMT", "-0000")}, 30.0),
        ({"Retry-After": " 4 "}, 4.0),
        ({"Retry-After": ""}, 1.0),
        ({"X-RateLimit-Reset": str(WALL + 9)}, 9.0),
        ({"X-RateLimit-Reset": str(WALL + 1e9)}, 300.0),
        ({"X-RateLimit-Reset": "garbage"}, 1.0),
        ({"Retry-After": "soon", "X-RateLimit-Reset": str(WALL + 9)}, 9.0),
        ({}, 1.0),
    ],
)
def test_retry_after_seconds(headers: Dict[str, str], expected: float) -> None:
    assert retry_after_seconds(answer(429, **headers), 1.0, 300.0, WALL) == pytest.approx(expected, abs=1e-6)


@BOTH
def test_429_waits_for_retry_after_and_is_no_failure(what: str) -> None:
    d, t, clock, _ = make(answer(429, **{"Retry-After": "7"}), max_attempts=1)
    r = attempt(d, what)
    assert r.kind is Kind.RATE_LIMITED
    assert not d.outage and d.failures == 0 and d.retries == 0
    assert d.wait_time() == pytest.approx(7.0)
    assert attempt(d, what).kind is Kind.DEFERRED and len(t.calls) == 1  # nothing sent before it elapses
    clock.now += 7.0
    assert attempt(d, what).kind is Kind.DELIVERED and len(t.calls) == 2


@BOTH
def test_retry_after_is_capped_by_the_policy(what: str) -> None:
    d, _, _, _ = make(answer(429, **{"Retry-After": "1000000"}), retry_after_max=60.0)
    attempt(d, what)
    assert d.wait_time() == pytest.approx(60.0)


@BOTH
def test_http_date_retry_after(what: str) -> None:
    d, _, _, _ = make(answer(429, **{"Retry-After": formatdate(WALL + 12, usegmt=True)}))
    attempt(d, what)
    assert d.wait_time() == pytest.approx(12.0)


def test_rate_limit_remaining_zero_paces_until_reset() -> None:
    d, _, _, _ = make(answer(204, **{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(WALL + 5)}))
    assert d.send("bk", body(1), 1).kind is Kind.DELIVERED
    assert d.wait_time() == pytest.approx(5.0)


def test_rate_limit_remaining_positive_does_not_pace() -> None:
    d, _, _, _ = make(answer(204, **{"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": str(WALL + 5)}))
    d.send("bk", body(1), 1)
    assert d.ready()


# --------------------------------------------------------------------------- waits only grow


@BOTH
def test_an_answer_never_shortens_a_longer_wait(what: str) -> None:
    """The drift issue 10 found: the sender's bucket creation overwrote ``not_before`` with the
    auth pause; a spent rate limit in the same answer asked for longer, and wins."""
    d, _, clock, _ = make(
        Answer(401, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(WALL + 100)}, ""), auth_retry_interval=10.0
    )
    assert attempt(d, what).kind is Kind.AUTH
    assert d.wait_time() == pytest.approx(100.0)
    d.wait_until(clock.now + 3)  # a shorter wait asked later changes nothing
    assert d.wait_time() == pytest.approx(100.0)


@BOTH
def test_auth_pause_outlasts_a_shorter_retry_after(what: str) -> None:
    d, _, clock, _ = make(Answer(403, {"Retry-After": "1", "X-RateLimit-Remaining": "0"}, ""), auth_retry_interval=30.0)
    attempt(d, what)
    assert d.wait_time() == pytest.approx(30.0)


# --------------------------------------------------------------------------- transient failures


@BOTH
@pytest.mark.parametrize("status", [0, 500, 502, 503, 504])
def test_transient_failures_back_off_exponentially_then_outage(what: str, status: int) -> None:
    d, t, clock, reports = make(status, status, status, status, max_attempts=3, backoff_initial=1.0, backoff_max=3.0)
    waits = []
    for _ in range(3):
        r = attempt(d, what)
        assert r.kind is Kind.TRANSIENT
        waits.append(d.wait_time())
        clock.now += d.wait_time()
    # jitter in [0.5, 1] x (1, 2, 3 capped)
    for w, full in zip(waits, (1.0, 2.0, 3.0)):
        assert 0.5 * full <= w <= full
    assert d.outage and d.failures == 3 and d.retries == 3
    assert sum("unreachable" in m for m in reports) == 1
    assert len(t.calls) == 3


def test_failures_count_across_buckets_and_events() -> None:
    """max_attempts failed requests in a row, bucket creations included, mean an outage."""
    d, _, clock, _ = make(503, 503, max_attempts=2)
    d.create_bucket("bk", "n")
    clock.now += d.wait_time()
    d.send("bk", body(1), 1)
    assert d.outage


@BOTH
def test_success_leaves_outage_and_resets_backoff(what: str) -> None:
    d, _, clock, reports = make(503, 503, 204, max_attempts=2, backoff_initial=0.5)
    for _ in range(2):
        attempt(d, what)
        clock.now += d.wait_time()
    assert d.outage and d.delay > 0.5
    assert attempt(d, what).kind is Kind.DELIVERED
    assert not d.outage and d.failures == 0 and d.delay == 0.5
    assert "answers again" in reports[-1]


def test_other_refusal_of_an_event_batch_is_transient() -> None:
    d, _, _, _ = make(404)
    r = d.send("bk", body(1), 1)
    assert r.kind is Kind.TRANSIENT and r.leftover == [body(1)] and d.failures == 1


def test_other_refusal_of_a_bucket_is_settled_and_reported() -> None:
    d, _, _, reports = make(answer(400))
    r = d.create_bucket("bk", "n")
    assert r.kind is Kind.REJECTED and r.kind.settled
    assert "refused bucket 'bk' (HTTP 400" in reports[-1]


# --------------------------------------------------------------------------- auth


@BOTH
@pytest.mark.parametrize("status", sorted(AUTH_STATUSES))
def test_auth_pauses_and_reports_once(what: str, status: int) -> None:
    d, t, clock, reports = make(status, status, 204, auth_retry_interval=30.0)
    assert attempt(d, what).kind is Kind.AUTH
    assert d.auth_blocked and d.wait_time() == pytest.approx(30.0)
    clock.now += 30
    assert attempt(d, what).kind is Kind.AUTH
    assert sum(str(status) in m for m in reports) == 1
    clock.now += 30
    assert attempt(d, what).kind is Kind.DELIVERED and not d.auth_blocked
    assert d.failures == 0 and d.retries == 0  # auth is no transient failure


def test_auth_report_names_the_bucket_for_a_creation() -> None:
    d, _, _, reports = make(401)
    d.create_bucket("my-bucket", "n")
    assert "creating bucket 'my-bucket'" in reports[0] and "401" in reports[0]


# --------------------------------------------------------------------------- 400 / 413 splitting


def test_413_halves_until_it_fits(tmp_path: Any) -> None:
    def small_only(path: str, events: Any) -> Answer:
        return answer(413 if len(events) > 2 else 204)

    d, t, _, _ = make(*[small_only] * 20, tmp_path=tmp_path)
    r = d.send("bk", body(*range(8)), 8)
    assert r.kind is Kind.DELIVERED and r.delivered == 8
    sent = [c[1] for c in t.calls if len(c[1]) <= 2]
    assert sorted(e["value"] for batch in sent for e in batch) == list(range(8))


def test_400_bisects_to_the_poisoned_event(tmp_path: Any) -> None:
    def poison(path: str, events: Any) -> Answer:
        return Answer(400, {}, '{"error":"INVALID_EVENT"}') if any(e["value"] == "bad" for e in events) else answer(204)

    d, _, _, _ = make(*[poison] * 20, tmp_path=tmp_path)
    r = d.send("bk", body(0, 1, 2, "bad", 4, 5, 6), 7)
    assert r.kind is Kind.REJECTED and r.delivered == 6 and r.rejected == 1
    rec = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_bytes().splitlines()]
    assert [x["event"]["value"] for x in rec] == ["bad"] and rec[0]["status"] == 400
    assert stat.S_IMODE(os.stat(tmp_path / "rejected.jsonl").st_mode) == 0o600


def test_bucket_removed_rejects_whole_batch_without_bisecting(tmp_path: Any) -> None:
    d, t, _, reports = make(Answer(400, {}, '{"error":"BUCKET_REMOVED"}'), tmp_path=tmp_path)
    r = d.send("bk", body(1, 2, 3), 3)
    assert r.kind is Kind.REJECTED and r.rejected == 3 and len(t.calls) == 1
    assert "BUCKET_REMOVED" in reports[0]


def test_split_cut_short_by_a_failure_keeps_the_rest(tmp_path: Any) -> None:
    d, _, _, _ = make(413, 204, 503, tmp_path=tmp_path)
    r = d.send("bk", body(1, 2, 3, 4), 4)
    assert r.kind is Kind.TRANSIENT and r.delivered == 2
    assert [json.loads(b) for b in r.leftover or []] == [json.loads(body(3, 4))]


def test_split_cut_short_by_a_429_is_rate_limited(tmp_path: Any) -> None:
    d, _, _, _ = make(413, answer(429, **{"Retry-After": "2"}), tmp_path=tmp_path)
    r = d.send("bk", body(1, 2, 3, 4), 4)
    assert r.kind is Kind.RATE_LIMITED and r.delivered == 0
    assert [json.loads(b) for b in r.leftover or []] == [json.loads(body(1, 2)), json.loads(body(3, 4))]


# --------------------------------------------------------------------------- pacing, deadlines


def test_max_rps_paces_requests() -> None:
    d, t, clock, _ = make(204, 204, 204, max_rps=4.0)
    for _ in range(3):
        assert d.send("bk", body(1), 1).kind is Kind.DELIVERED
    assert clock.slept == [pytest.approx(0.25), pytest.approx(0.25)]


def test_pacing_past_the_deadline_defers() -> None:
    d, t, clock, _ = make(204, 204, max_rps=1.0)
    d.send("bk", body(1), 1)
    r = d.send("bk", body(1), 1, deadline=clock.now + 0.5)
    assert r.kind is Kind.DEFERRED and len(t.calls) == 1 and r.leftover == [body(1)]


def test_request_timeout_follows_the_deadline() -> None:
    d, t, clock, _ = make(204, 204, 204)
    d.send("bk", body(1), 1)
    d.send("bk", body(1), 1, deadline=clock.now + 3.0)
    d.send("bk", body(1), 1, deadline=clock.now - 1.0)
    assert [c[2] for c in t.calls] == [None, pytest.approx(3.0), 0.2]


def test_finish_by_keeps_backoff_short_and_never_shortens_server_waits() -> None:
    d, _, clock, _ = make(*[503] * 6, max_attempts=2, backoff_initial=4.0, backoff_max=30.0, finish_backoff=0.25)
    d.send("bk", body(1), 1)
    assert d.wait_time() >= 2.0  # the normal backoff
    d.finish_by(clock.now + 5.0)
    assert d.wait_time() <= 0.25  # shortened for the exit budget
    for _ in range(4):
        clock.now += d.wait_time()
        assert d.send("bk", body(1), 1).kind is Kind.TRANSIENT
        assert d.wait_time() <= 0.25
    assert 0 < (d.time_left() or 0) < 5.0
    d.wait_until(clock.now + 20)  # what a server asked (429, auth) is kept
    d.finish_by(clock.now + 5.0)
    assert d.wait_time() == pytest.approx(20.0)
    d.finish_by(None)
    clock.now += 20
    d.send("bk", body(1), 1)
    assert d.delay > 0.25  # the normal policy again


def test_rejected_file_never_follows_a_symlink(tmp_path: Any) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "rejected.jsonl").symlink_to(victim)
    d, _, _, reports = make(Answer(400, {}, "{}"), tmp_path=tmp_path)
    r = d.send("bk", body("bad"), 1)
    assert r.kind is Kind.REJECTED
    assert victim.read_text() == "precious\n"
    assert "could not be written" in reports[-1]
