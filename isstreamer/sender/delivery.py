"""Delivery policy of the sender: what each answer of the events API means.

This module is the one owner of that policy: event batches (:meth:`Delivery.send`) and bucket
creations (:meth:`Delivery.create_bucket`) go through the same mapping (:func:`classify`).

* 2xx: delivered.
* 5xx, connection errors, timeouts: transient; retried with capped exponential backoff and
  jitter; after ``max_attempts`` failed attempts at a batch, or ``max_attempts`` failed requests
  in a row (bucket creations included), the batch is spooled and the sender is in *outage*
  (every batch goes straight to the spool) until a probe succeeds. While the sender is
  finishing (:meth:`Delivery.finish_by`), backoff is short and never passes the deadline.
* 429: nothing is sent before ``Retry-After`` (delta-seconds or HTTP-date, at most
  ``retry_after_max``) elapses; ``X-RateLimit-Remaining: 0`` paces until ``X-RateLimit-Reset``
  (same cap); ``max_rps`` caps the request rate. A 429 is not a failure of the API.
* 413: the batch is split in halves (one event that is still too large is rejected).
* 400: the batch is bisected to isolate the events the server refuses; every other event is
  delivered; the refused ones go to ``rejected.jsonl`` with the server's answer.
  ``BUCKET_REMOVED`` rejects the batch whole and is reported clearly.
* 401/402/403: the batch is spooled and the episode reported loudly once; sending pauses
  for ``auth_retry_interval`` and then probes again.
* Any other 4xx: transient for event batches; for a bucket creation, reported and settled
  (the bucket's events then meet the server's verdict).

Waits only ever grow (``not_before`` takes the max), so one answer never shortens the wait
another one asked for.
"""

from __future__ import annotations

import enum
import math
import time
from typing import Any, Callable, List, Optional


from .. import lazy
from ..record import record
from ..options import BACKOFF_INITIAL, DEFAULTS, FINISH_BACKOFF, RETRY_AFTER_MAX
from .transport import Answer, Transport

log = lazy.Logger("isstreamer")


class Kind(enum.Enum):
    """What became of one attempt at a batch (or a bucket creation)."""

    DELIVERED = "delivered"  # 2xx
    REJECTED = "rejected"  # settled: some or all events refused (in the rejected file), or a bucket refused
    TRANSIENT = "transient"  # 5xx, no answer, other 4xx: try again after the backoff
    RATE_LIMITED = "rate_limited"  # 429: try again after Retry-After (not a failure of the API)
    AUTH = "auth"  # 401/402/403: paused for auth_retry_interval
    DEFERRED = "deferred"  # not sent at all: pacing or a pending wait said not yet

    @property
    def settled(self) -> bool:
        """True when nothing more is to be done with the batch."""
        return self in (Kind.DELIVERED, Kind.REJECTED)


AUTH_STATUSES = {
    401: "the access key was refused (401)",
    402: "the monthly event limit is exceeded (402)",
    403: "access denied (403)",
}


@record()
class Policy:
    """Knobs of the delivery policy (defaults: isstreamer.options)."""

    max_attempts: int = DEFAULTS.max_attempts
    backoff_initial: float = BACKOFF_INITIAL
    backoff_max: float = DEFAULTS.backoff_max
    auth_retry_interval: float = DEFAULTS.auth_retry_interval
    max_rps: float = DEFAULTS.max_rps  # 0 = no ceiling
    retry_after_max: float = RETRY_AFTER_MAX  # longest wait a Retry-After / X-RateLimit-Reset may impose
    finish_backoff: float = FINISH_BACKOFF  # longest backoff while finishing (finish_by: close/exit budget)

    @classmethod
    def of(cls, settings: Any) -> "Policy":
        """The policy of a sender's settings (or anything with the same four fields)."""
        return cls(
            max_attempts=settings.max_attempts,
            backoff_max=settings.backoff_max,
            auth_retry_interval=settings.auth_retry_interval,
            max_rps=settings.max_rps,
        )


@record()
class Result:
    """Outcome of one attempt at a batch."""

    kind: Kind
    delivered: int = 0
    rejected: int = 0
    leftover: Optional[List[bytes]] = None  # sub-batches not sent (transient/auth mid-split)
    answer: Optional[Answer] = None


def classify(status: int) -> Optional[Kind]:
    """The policy's reading of an HTTP status (0 = no answer); None for a refusal (400/404/413...)
    whose handling depends on the request (split a batch, settle a bucket creation)."""
    if 200 <= status < 300:
        return Kind.DELIVERED
    if status == 429:
        return Kind.RATE_LIMITED
    if status in AUTH_STATUSES:
        return Kind.AUTH
    if status == 0 or status >= 500:
        return Kind.TRANSIENT
    return None


def retry_after_seconds(
    answer: Answer, default: float = 1.0, cap: float = Policy.retry_after_max, wall: Optional[float] = None
) -> float:
    """Seconds to wait from a 429 or a spent rate limit, in ``[0, cap]``.

    ``Retry-After`` (delta-seconds or HTTP-date), else ``X-RateLimit-Reset`` (epoch seconds),
    else ``default``. ``wall`` is the current ``time.time()`` (for tests).
    """
    now = time.time() if wall is None else wall
    wait: Optional[float] = None
    ra = answer.headers.get("Retry-After")
    if ra:
        try:
            wait = float(ra)
        except ValueError:
            try:  # an HTTP date: rare, and email.utils a costly import
                when = lazy.load("email.utils").parsedate_to_datetime(ra)
                if when.tzinfo is None:  # "-0000": UTC as well (RFC 9110 dates are GMT)
                    when = when.replace(tzinfo=lazy.load("datetime").timezone.utc)
                wait = when.timestamp() - now
            except (TypeError, ValueError, IndexError, OverflowError):
                wait = None
    if wait is None or math.isnan(wait):
        reset = answer.headers.get("X-RateLimit-Reset")
        wait = None
        if reset:
            try:
                wait = float(reset) - now
            except ValueError:
                wait = None
    if wait is None or math.isnan(wait):
        wait = default
    return min(max(0.0, wait), max(0.0, cap))


def limit_spent(answer: Answer) -> bool:
    """True when the answer says the rate limit's allowance is spent (``X-RateLimit-Remaining``
    of 0 or less); a header that is not a number says nothing."""
    try:
        return int(answer.headers.get("X-RateLimit-Remaining", "1")) <= 0
    except ValueError:
        return False


class Delivery:
    """Sends batches and creates buckets for one account, keeping the pacing, backoff and
    outage state. ``clock``, ``sleep``, ``wall`` and ``rng`` are injectable for tests."""

    def __init__(
        self,
        transport: Transport,
        policy: Policy,
        rejected_path: str,
        report: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
        rng: Optional[Any] = None,
    ) -> None:
        self.t = transport
        self.policy = policy
        self.rejected_path = rejected_path
        self.report = report
        self.clock = clock
        self.sleep = sleep
        self.wall = wall
        self._rng = rng  # a random.Random, made at the first backoff (the sender's start-up time)
        self.not_before = 0.0  # clock time before which the server (429, auth pause) wants nothing
        self.backoff_until = 0.0  # clock time before which our own backoff sends nothing
        self.outage = False
        self.auth_blocked = False
        self.delay = policy.backoff_initial
        self.retries = 0
        self.failures = 0  # transient failures in a row
        self.requests = 0  # event requests made
        self.last_request = -math.inf
        self.deadline: Optional[float] = None  # finish_by
        self.last_answer: Optional[Answer] = None

    # ---- state ------------------------------------------------------------------------------
    def ready(self, now: Optional[float] = None) -> bool:
        """True when a request may be sent now."""
        return (now if now is not None else self.clock()) >= max(self.not_before, self.backoff_until)

    def wait_time(self) -> float:
        """Seconds until a request may be sent."""
        return max(0.0, max(self.not_before, self.backoff_until) - self.clock())

    def wait_until(self, until: float) -> None:
        """Send nothing before clock time ``until``, as the server asked (waits only grow)."""
        self.not_before = max(self.not_before, until)

    def finish_by(self, deadline: Optional[float]) -> None:
        """Spend the time left until clock time ``deadline`` retrying: backoff at most
        ``policy.finish_backoff`` (a pending one is shortened; the server's waits are not).
        None: the normal policy again."""
        self.deadline = deadline
        if deadline is not None:
            self.delay = min(self.delay, self.policy.finish_backoff)
            self.backoff_until = min(self.backoff_until, self.clock() + self.policy.finish_backoff)

    def time_left(self) -> Optional[float]:
        """Seconds left before the finish_by deadline (None when not finishing)."""
        return None if self.deadline is None else self.deadline - self.clock()

    @property
    def rng(self) -> Any:
        """The jitter's random.Random (``rng``, or one of its own made on first use)."""
        if self._rng is None:
            self._rng = lazy.load("random").Random()
        return self._rng

    def backoff(self) -> None:
        """Wait longer before the next request (capped exponential backoff with jitter)."""
        delay = self.delay * self.rng.uniform(0.5, 1.0)
        if self.deadline is not None:
            delay = min(delay, self.policy.finish_backoff)
        self.backoff_until = max(self.backoff_until, self.clock() + delay)
        self.delay = min(self.policy.backoff_max, self.delay * 2)
        if self.deadline is not None:
            self.delay = min(self.delay, self.policy.finish_backoff)

    def mark_healthy(self) -> None:
        """The API answered: leave outage / auth pause, reset the backoff."""
        if self.outage or self.auth_blocked:
            self.report("isstreamer: the events API answers again; replaying the spool")
        self.outage = False
        self.auth_blocked = False
        self.failures = 0
        self.delay = self.policy.backoff_initial

    def transient_failure(self) -> None:
        """A request got no answer or a 5xx: back off; ``max_attempts`` in a row mean an outage."""
        self.retries += 1
        self.failures += 1
        self.backoff()
        if self.failures >= self.policy.max_attempts:
            self.enter_outage()

    def enter_outage(self) -> None:
        """Spool new batches until a probe gets through."""
        if not self.outage:
            self.report("isstreamer: the events API is unreachable; spooling events to disk until it answers")
        self.outage = True

    # ---- the one mapping of answers ---------------------------------------------------------------
    def rate_limited(self) -> bool:
        """True while the API's rate limit (a 429, or ``X-RateLimit-Remaining`` spent) holds
        sending back: the one definition of "rate limited" (the ceiling asks it too)."""
        a = self.last_answer
        return (
            a is not None
            and self.wait_time() > 0
            and not self.auth_blocked
            and not self.outage
            and (a.status == 429 or limit_spent(a))
        )

    def _on_answer(self, a: Answer, what: str) -> Optional[Kind]:
        """Apply the policy to one answer (``what`` names the request in reports); returns its
        Kind, or None for a refusal left to the caller."""
        self.last_answer = a
        kind = classify(a.status)
        if a.status and a.status != 429 and limit_spent(a):
            self.wait_until(self.clock() + retry_after_seconds(a, 0.0, self.policy.retry_after_max, self.wall()))
        if kind is Kind.DELIVERED:
            self.mark_healthy()
        elif kind is Kind.RATE_LIMITED:
            self.wait_until(self.clock() + retry_after_seconds(a, 1.0, self.policy.retry_after_max, self.wall()))
        elif kind is Kind.AUTH:
            if not self.auth_blocked:
                self.report(
                    "isstreamer: %s%s; events are kept in the spool and sending retries every %gs"
                    % (what, AUTH_STATUSES[a.status], self.policy.auth_retry_interval)
                )
            self.auth_blocked = True
            self.wait_until(self.clock() + self.policy.auth_retry_interval)
        elif kind is Kind.TRANSIENT:
            self.transient_failure()
        return kind

    def _timeout(self, deadline: Optional[float]) -> Optional[float]:
        return None if deadline is None else max(0.2, deadline - self.clock())

    def _pace(self, deadline: Optional[float]) -> bool:
        """Sleep for the rps ceiling; False if that would pass the deadline."""
        if self.policy.max_rps > 0:
            gap = 1.0 / self.policy.max_rps - (self.clock() - self.last_request)
            if gap > 0:
                if deadline is not None and self.clock() + gap > deadline:
                    return False
                self.sleep(gap)
        return True

    # ---- buckets ------------------------------------------------------------------------------------
    def create_bucket(self, bucket_key: str, bucket_name: str, deadline: Optional[float] = None) -> Result:
        """One attempt at creating a bucket: DELIVERED (201/204), REJECTED (refused: reported,
        nothing more to do), or what the policy says for the answer (a failed request counts
        towards an outage like an event request)."""
        if not self.ready() or not self._pace(deadline):
            return Result(Kind.DEFERRED)
        self.last_request = self.clock()
        a = self.t.create_bucket(bucket_key, bucket_name, self._timeout(deadline))
        kind = self._on_answer(a, "creating bucket %r: " % bucket_key)
        if kind is None:
            self.report(
                "isstreamer: the events API refused bucket %r (HTTP %d: %s)" % (bucket_key, a.status, a.text[:200])
            )
            kind = Kind.REJECTED
        return Result(kind, answer=a)

    # ---- sending ----------------------------------------------------------------------------
    def send(self, bucket_key: str, body: bytes, nevents: int, deadline: Optional[float] = None) -> Result:
        """One attempt at a batch (with 400/413 splitting). Never raises for HTTP trouble."""
        if not self.ready() or not self._pace(deadline):
            return Result(Kind.DEFERRED, leftover=[body])
        self.last_request = self.clock()
        self.requests += 1
        a = self.t.post_events(bucket_key, body, self._timeout(deadline))
        kind = self._on_answer(a, "")
        if kind is Kind.DELIVERED:
            return Result(kind, delivered=nevents, answer=a)
        if kind is None and a.status in (400, 413):
            return self._split(bucket_key, body, a, deadline)
        if kind is None:  # another refusal (404...): not this batch's fault as far as we know
            self.transient_failure()
            kind = Kind.TRANSIENT
        return Result(kind, leftover=[body], answer=a)

    def _split(self, bucket_key: str, body: bytes, first: Answer, deadline: Optional[float]) -> Result:
        try:
            orjson = lazy.load("orjson")  # only to isolate a refused event (the sender's start-up time)
            events = orjson.loads(body)
        except ValueError:
            events = None
        if not isinstance(events, list):
            self._reject(bucket_key, [body.decode("utf-8", "replace")], first)
            return Result(Kind.REJECTED, rejected=1, answer=first)
        if first.status == 400 and "BUCKET_REMOVED" in first.text:
            self.report(
                "isstreamer: bucket %r was removed on the server (BUCKET_REMOVED); its events are "
                "written to %s" % (bucket_key, self.rejected_path)
            )
            self._reject(bucket_key, events, first)
            return Result(Kind.REJECTED, rejected=len(events), answer=first)
        if len(events) <= 1:
            self._reject(bucket_key, events, first)
            return Result(Kind.REJECTED, rejected=len(events), answer=first)
        res = Result(Kind.DELIVERED, answer=first)
        mid = len(events) // 2
        for half in (events[:mid], events[mid:]):
            hb = orjson.dumps(half)
            if res.leftover is not None:  # a failure stopped the split: keep the rest
                res.leftover.append(hb)
                continue
            r = self.send(bucket_key, hb, len(half), deadline)  # recursion bisects further
            res.delivered += r.delivered
            res.rejected += r.rejected
            if not r.kind.settled:
                res.kind = r.kind
                res.answer = r.answer
                res.leftover = list(r.leftover or [hb])
        if res.kind is Kind.DELIVERED and res.rejected:
            res.kind = Kind.REJECTED
        return res

    def _reject(self, bucket_key: str, events: list, answer: Answer) -> None:
        from ..safefile import append_private

        orjson = lazy.load("orjson")

        data = b"".join(
            orjson.dumps(
                {
                    "time": self.wall(),
                    "api_base": self.t.api_base,
                    "bucket_key": bucket_key,
                    "status": answer.status,
                    "answer": answer.text[:1000],
                    "event": ev,
                }
            )
            + b"\n"
            for ev in events
        )
        try:
            append_private(self.rejected_path, data)
        except OSError as exc:
            self.report(
                "isstreamer: %d event(s) refused by the events API (HTTP %d) could not be written to "
                "%s (%s); they are lost" % (len(events), answer.status, self.rejected_path, exc)
            )
            return
        log.warning(
            "isstreamer: %d event(s) refused by the events API (HTTP %d), written to %s",
            len(events),
            answer.status,
            self.rejected_path,
        )
