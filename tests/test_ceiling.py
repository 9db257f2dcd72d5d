"""The ceiling of downsampling (``max_events_per_second``, ``monthly_budget``, the API's rate
limit) as pure policy: a fake clock, no sender, no server (the end-to-end cases are in
tests/test_aggregate_ceiling.py)."""

from __future__ import annotations

import calendar
import time

from isstreamer.sender.ceiling import Ceiling


class Clock:
    """A clock that moves only when told."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_rate_under_the_ceiling_fits_and_one_over_it_does_not():
    clock = Clock()
    c = Ceiling(100.0, 0, 1000, clock=clock)
    for _ in range(10):  # 50 events/s for 10 s
        clock.t += 1.0
        c.observe(50)
    assert c.unfit(0) is None
    for _ in range(10):  # then 200 events/s
        clock.t += 1.0
        c.observe(200)
    why = c.unfit(0)
    assert why is not None and "exceed max_events_per_second=100" in why, why


def test_the_rate_is_not_trusted_before_min_age():
    clock = Clock()
    c = Ceiling(1.0, 0, 1000, clock=clock)
    c.observe(10_000)
    clock.t += Ceiling.MIN_AGE / 2
    assert c.unfit(0) is None
    clock.t += Ceiling.MIN_AGE
    assert c.unfit(0) is not None


def test_a_monthly_budget_is_a_sustainable_rate():
    wall = 1_700_000_000.0  # November 2023: 30 days
    clock = Clock()
    tm = time.gmtime(wall)
    days = calendar.monthrange(tm.tm_year, tm.tm_mon)[1]
    budget = int(days * 86400 * 10)  # 10 events/s on average
    c = Ceiling(0.0, budget, 1000, clock=clock, wall=lambda: wall)
    assert abs(c.budget_rate(wall) - 10.0) < 1e-9
    for _ in range(10):
        clock.t += 1.0
        c.observe(8)
    assert c.unfit(0) is None
    for _ in range(10):
        clock.t += 1.0
        c.observe(20)
    why = c.unfit(0)
    assert why is not None and "monthly_budget" in why, why


def test_the_rate_limit_holding_a_backlog_three_times_over_five_seconds_does_not_fit():
    clock = Clock()
    c = Ceiling(0.0, 0, 1000, clock=clock)
    assert c.unfit(5000) is None  # once
    clock.t += 0.2
    assert c.unfit(5000) is None  # within half a second: the same check
    clock.t += 3.0
    assert c.unfit(5000) is None  # twice
    clock.t += 3.0
    why = c.unfit(5000)  # three times, 6.2 s apart
    assert why is not None and "rate limit" in why and "5000" in why, why


def test_a_small_backlog_held_by_the_rate_limit_fits():
    clock = Clock()
    c = Ceiling(0.0, 0, 1000, clock=clock)
    for _ in range(10):
        clock.t += 2.0
        assert c.unfit(999) is None  # no more than a batch waits: the limit is not the bottleneck
