"""Does the stream fit? The ceiling of downsampling's ``max_events_per_second``,
``monthly_budget`` and the API's rate limit: pure policy, given the events towards the wire and
what the delivery says, with an injectable clock (tested without a sender or a server).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Deque, List, Optional, Tuple

from .. import lazy


class Ceiling:
    """An events-per-second ceiling, a monthly budget (as a sustainable rate: the budget over the
    seconds of the current UTC month) and the API's rate limit: the sender kept waiting by a 429
    or ``X-RateLimit-Remaining: 0`` while a backlog of more than a batch waits in the ring, at
    three checks at least 5 s apart in all (within a minute)."""

    SPAN = 10.0  # seconds of sending the rate is measured over
    MIN_AGE = 2.0  # seconds of measurement before the rate is trusted

    def __init__(
        self,
        max_events_per_second: float,
        monthly_budget: int,
        batch_events: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.max_eps = float(max_events_per_second or 0.0)
        self.budget = int(monthly_budget or 0)
        self.batch_events = batch_events
        self.clock = clock
        self.wall = wall
        self.t0 = clock()
        self.marks: Deque[Tuple[float, int]] = deque()  # (time, events towards the wire in that turn)
        self.total = 0
        self.limited: List[float] = []  # times the sender was held by the rate limit with a backlog

    def budget_rate(self, now_wall: float) -> float:
        """Events per second that spend the monthly budget evenly over this UTC month (0: none)."""
        if not self.budget:
            return 0.0
        tm = time.gmtime(now_wall)
        # calendar: only with a monthly budget (the sender's start-up time)
        days = lazy.load("calendar").monthrange(tm.tm_year, tm.tm_mon)[1]
        return self.budget / (days * 86400.0)

    def observe(self, n: int) -> None:
        """``n`` more events would go on the wire."""
        if n:
            self.total += n
            self.marks.append((self.clock(), n))

    def rate(self) -> float:
        """Events per second towards the wire over the last SPAN seconds."""
        now = self.clock()
        while self.marks and self.marks[0][0] < now - self.SPAN:
            self.marks.popleft()
        span = min(self.SPAN, now - self.t0)
        return sum(n for _, n in self.marks) / span if span > 0 else 0.0

    def unfit(self, held_backlog: int) -> Optional[str]:
        """Why the stream does not fit (None while it does). ``held_backlog``: the events waiting
        in the ring while the API's rate limit holds the sender back (0 when it does not)."""
        now = self.clock()
        if held_backlog > self.batch_events and (not self.limited or now - self.limited[-1] >= 0.5):
            self.limited = [t for t in self.limited if now - t <= 60.0] + [now]  # one episode
            if len(self.limited) >= 3 and now - self.limited[0] >= 5.0:
                return "the API's rate limit holds the sender back while %d events wait" % held_backlog
        if now - self.t0 < self.MIN_AGE:
            return None
        rate = self.rate()
        if self.max_eps and rate > self.max_eps:
            return "%.0f events/s exceed max_events_per_second=%g" % (rate, self.max_eps)
        brate = self.budget_rate(self.wall())
        if brate and rate > brate:
            return "%.0f events/s would spend monthly_budget=%d in %.1f days" % (
                rate,
                self.budget,
                self.budget / rate / 86400,
            )
        return None
