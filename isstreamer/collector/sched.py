"""Fair ordering of the collector's writes: one client's bulk writes cannot starve another's.

:class:`FairExecutor` is the database writer thread. Every call belongs to a *flow* (the key
holder it writes for) and has a *cost* (about the kilobytes of work it is: decoding, validating
and storing a body). Calls run in weighted fair queueing order: a call's tag is
``max(its flow's last tag, virtual time) + cost`` and the smallest tag runs next; the virtual
time advances by the cost of each call run divided by the number of flows still backlogged
(those whose last tag it has not reached), as a processor shared equally between them would.

A flow that keeps sending big bodies has tags about one body ahead of the virtual time, so a
small write of another flow goes next: it waits for the call in progress, not for a round of
every bulk writer. Flows that keep the thread busy share it equally; one alone gets all of it.
New flows start at the virtual time, so using many keys buys no priority.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import threading
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple, TypeVar

__all__ = ["FairExecutor"]

T = TypeVar("T")


class FairExecutor:
    """Worker threads (one unless ``workers``) running submitted calls in fair order (see the
    module docstring); with several, the next call in that order goes to the first one free."""

    def __init__(self, name: str, workers: int = 1) -> None:
        self._cond = threading.Condition()
        self._queue: List[Tuple[float, int, concurrent.futures.Future, Callable[[], Any], float]] = []
        self._tags: Dict[Hashable, float] = {}  # last tag of each backlogged flow
        self._expiry: List[Tuple[float, int, Hashable]] = []  # (tag, order, flow): when a flow stops being backlogged
        self._now = 0.0  # virtual time
        self._order = itertools.count()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name="%s-%d" % (name, i) if workers > 1 else name, daemon=True)
            for i in range(max(1, int(workers)))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], T], flow: Hashable = None, cost: float = 1.0) -> "concurrent.futures.Future[T]":
        """Queue ``fn()`` for ``flow`` at ``cost``; its Future holds the result or the exception."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        cost = max(float(cost), 1e-6)
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            tag = max(self._tags.get(flow, 0.0), self._now) + cost
            order = next(self._order)
            self._tags[flow] = tag
            heapq.heappush(self._expiry, (tag, order, flow))
            heapq.heappush(self._queue, (tag, order, future, fn, cost))
            self._cond.notify()
        return future

    def _next(self) -> Optional[Tuple[concurrent.futures.Future, Callable[[], Any], float]]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            _, _, future, fn, cost = heapq.heappop(self._queue)
            return future, fn, cost

    def _advance(self, cost: float) -> None:
        """Virtual time after a call of ``cost``: shared by the backlogged flows; flows whose
        last tag it passes are no longer backlogged (and forgotten)."""
        with self._cond:
            self._now += cost / max(1, len(self._tags))
            while self._expiry and self._expiry[0][0] <= self._now:
                tag, _, flow = heapq.heappop(self._expiry)
                if self._tags.get(flow) == tag:
                    del self._tags[flow]

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            future, fn, cost = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            self._advance(cost)

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new calls; the queued ones still run (``wait``: until they have)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()
