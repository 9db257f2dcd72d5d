"""Delivery policy of the sender: what each answer of the events API means for a batch.

* 2xx: delivered.
* 5xx, connection errors, timeouts: transient; retried with capped exponential backoff and
  jitter; after ``max_attempts`` failed attempts at a batch, or ``max_attempts`` failed requests
  in a row (bucket creations included), the batch is spooled and the sender is in *outage*
  (every batch goes straight to the spool) until a probe succeeds.
* 429: nothing is sent before ``Retry-After`` elapses; ``X-RateLimit-Remaining: 0`` paces until
  ``X-RateLimit-Reset``; ``max_rps`` caps the request rate.
* 413: the batch is split in halves (one event that is still too large is rejected).
* 400: the batch is bisected to isolate the events the server refuses; every other event is
  delivered; the refused ones go to ``rejected.jsonl`` with the server's answer.
  ``BUCKET_REMOVED`` rejects the batch whole and is reported clearly.
* 401/402/403: the batch is spooled and the episode reported loudly once; sending pauses
  for ``auth_retry_interval`` and then probes again.
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import orjson

from .transport import Answer, Transport

log = logging.getLogger("isstreamer")

DELIVERED = "delivered"
REJECTED = "rejected"  # some or all events refused and written to the rejected file
TRANSIENT = "transient"  # try again later
AUTH = "auth"  # 401/402/403


@dataclass
class Policy:
    """Knobs of the delivery policy."""

    max_attempts: int = 4
    backoff_initial: float = 0.25
    backoff_max: float = 30.0
    auth_retry_interval: float = 30.0
    max_rps: float = 0.0  # 0 = no ceiling


@dataclass
class Result:
    """Outcome of one attempt at a batch."""

    kind: str
    delivered: int = 0
    rejected: int = 0
    leftover: Optional[List[bytes]] = None  # sub-batches not sent (transient/auth mid-split)
    answer: Optional[Answer] = None


def retry_after_seconds(answer: Answer, default: float = 1.0) -> float:
    """Seconds to wait from a 429 (Retry-After, else X-RateLimit-Reset, else default)."""
    ra = answer.headers.get("Retry-After")
    if ra:
        try:
            return max(0.0, float(ra))
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                return max(0.0, parsedate_to_datetime(ra).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    reset = answer.headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            pass
    return default


class Delivery:
    """Sends batches for one account, keeping the pacing, backoff and outage state."""

    def __init__(self, transport: Transport, policy: Policy, rejected_path: str,
                 report: Callable[[str], None]) -> None:
        self.t = transport
        self.policy = policy
        self.rejected_path = rejected_path
        self.report = report
        self.not_before = 0.0  # monotonic time before which nothing is sent
        self.outage = False
        self.auth_blocked = False
        self.delay = policy.backoff_initial
        self.retries = 0
        self.failures = 0  # transient failures in a row
        self.requests = 0
        self.last_request = 0.0

    # ---- state ------------------------------------------------------------------------------
    def ready(self, now: Optional[float] = None) -> bool:
        """True when a request may be sent now."""
        return (now if now is not None else time.monotonic()) >= self.not_before

    def wait_time(self) -> float:
        """Seconds until a request may be sent."""
        return max(0.0, self.not_before - time.monotonic())

    def backoff(self) -> None:
        """Wait longer before the next request (capped exponential backoff with jitter)."""
        jitter = random.uniform(0.5, 1.0)
        self.not_before = max(self.not_before, time.monotonic() + self.delay * jitter)
        self.delay = min(self.policy.backoff_max, self.delay * 2)

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

    # ---- sending ----------------------------------------------------------------------------
    def _pace(self, deadline: Optional[float]) -> bool:
        """Sleep for the rps ceiling; False if that would pass the deadline."""
        if self.policy.max_rps > 0:
            gap = 1.0 / self.policy.max_rps - (time.monotonic() - self.last_request)
            if gap > 0:
                if deadline is not None and time.monotonic() + gap > deadline:
                    return False
                time.sleep(gap)
        return True

    def _post(self, bucket_key: str, body: bytes, deadline: Optional[float]) -> Answer:
        timeout = None if deadline is None else max(0.2, deadline - time.monotonic())
        self.last_request = time.monotonic()
        self.requests += 1
        a = self.t.post_events(bucket_key, body, timeout)
        if a.status and "X-RateLimit-Remaining" in a.headers:
            try:
                if int(a.headers["X-RateLimit-Remaining"]) <= 0 and a.status != 429:
                    self.not_before = max(self.not_before, time.monotonic() + retry_after_seconds(a, 0.0))
            except ValueError:
                pass
        return a

    def send(self, bucket_key: str, body: bytes, nevents: int, deadline: Optional[float] = None) -> Result:
        """One attempt at a batch (with 400/413 splitting). Never raises for HTTP trouble."""
        if not self.ready() or not self._pace(deadline):
            return Result(TRANSIENT, leftover=[body])
        a = self._post(bucket_key, body, deadline)
        if a.ok:
            self.mark_healthy()
            return Result(DELIVERED, delivered=nevents, answer=a)
        if a.status == 429:
            wait = retry_after_seconds(a)
            self.not_before = max(self.not_before, time.monotonic() + wait)
            return Result(TRANSIENT, leftover=[body], answer=a)
        if a.status in (401, 402, 403):
            if not self.auth_blocked:
                what = {401: "the access key was refused (401)", 403: "access denied (403)",
                        402: "the monthly event limit is exceeded (402)"}[a.status]
                self.report("isstreamer: %s; events are kept in the spool and sending retries every %gs"
                            % (what, self.policy.auth_retry_interval))
            self.auth_blocked = True
            self.not_before = max(self.not_before, time.monotonic() + self.policy.auth_retry_interval)
            return Result(AUTH, leftover=[body], answer=a)
        if a.status in (400, 413):
            return self._split(bucket_key, body, a, deadline)
        # 5xx, other statuses, no answer at all
        self.transient_failure()
        return Result(TRANSIENT, leftover=[body], answer=a)

    def _split(self, bucket_key: str, body: bytes, first: Answer, deadline: Optional[float]) -> Result:
        try:
            events = orjson.loads(body)
        except ValueError:
            events = None
        if not isinstance(events, list):
            self._reject(bucket_key, [body.decode("utf-8", "replace")], first)
            return Result(REJECTED, rejected=1, answer=first)
        if first.status == 400 and "BUCKET_REMOVED" in first.text:
            self.report("isstreamer: bucket %r was removed on the server (BUCKET_REMOVED); its events are "
                        "written to %s" % (bucket_key, self.rejected_path))
            self._reject(bucket_key, events, first)
            return Result(REJECTED, rejected=len(events), answer=first)
        if len(events) == 1:
            self._reject(bucket_key, events, first)
            return Result(REJECTED, rejected=1, answer=first)
        res = Result(DELIVERED)
        mid = len(events) // 2
        for half in (events[:mid], events[mid:]):
            hb = orjson.dumps(half)
            if res.leftover is not None:  # a transient failure stopped the split: keep the rest
                res.leftover.append(hb)
                continue
            r = self.send(bucket_key, hb, len(half), deadline)  # recursion bisects further
            res.delivered += r.delivered
            res.rejected += r.rejected
            if r.kind in (TRANSIENT, AUTH):
                res.kind = r.kind
                res.leftover = list(r.leftover or [])
        if res.kind == DELIVERED and res.rejected:
            res.kind = REJECTED
        return res

    def _reject(self, bucket_key: str, events: list, answer: Answer) -> None:
        os.makedirs(os.path.dirname(self.rejected_path) or ".", exist_ok=True)
        with open(self.rejected_path, "ab") as f:
            for ev in events:
                f.write(orjson.dumps({"time": time.time(), "api_base": self.t.api_base, "bucket_key": bucket_key,
                                      "status": answer.status, "answer": answer.text[:1000], "event": ev}) + b"\n")
        log.warning("isstreamer: %d event(s) refused by the events API (HTTP %d), written to %s",
                    len(events), answer.status, self.rejected_path)
