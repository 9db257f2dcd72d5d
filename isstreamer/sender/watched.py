"""The sender's HTTP requests in a worker thread: the sender's own thread keeps moving the ring
while a request hangs (see ``Sender._while_waiting``)."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Dict, Optional

from .. import lazy
from .transport import Transport

log = lazy.Logger("isstreamer")


class WatchedTransport:
    """The sender's transport, each request run in a worker thread while the sender's own thread
    waits for it calling ``while_waiting(started)`` every POLL seconds: the ring keeps moving
    while a request hangs. One request at a time; the HTTP session lives in the worker."""

    POLL = 0.02

    def __init__(self, inner: Transport, while_waiting: Callable[[float], None]) -> None:
        self.inner = inner
        self.api_base = inner.api_base
        self.while_waiting = while_waiting
        self._jobs: "queue.Queue[Optional[Callable[[], None]]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._reported = False

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="isstreamer-http", daemon=True)
            self._thread.start()
        done = threading.Event()
        box: Dict[str, Any] = {}

        def job() -> None:
            try:
                box["r"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["e"] = exc
            finally:
                done.set()

        self._jobs.put(job)
        started = time.monotonic()
        while not done.wait(self.POLL):
            try:
                self.while_waiting(started)
            except Exception:  # noqa: BLE001 - the wait goes on; reported once
                if not self._reported:
                    self._reported = True
                    log.exception("isstreamer: sender error while a request was out")
        if "e" in box:
            raise box["e"]
        return box["r"]

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def post_events(self, *args: Any) -> Any:
        """Transport.post_events, in the worker."""
        return self._run(self.inner.post_events, *args)

    def create_bucket(self, *args: Any) -> Any:
        """Transport.create_bucket, in the worker."""
        return self._run(self.inner.create_bucket, *args)

    def close(self) -> None:
        """Stop the worker and close the session."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(5)
        self.inner.close()
