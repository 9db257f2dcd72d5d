"""Entry point of the sender process: settings from stdin, the ring's sender lock, then the loop.

The lock is taken before the HTTP stack is imported, so the process that started this one
learns within milliseconds that a sender serves the ring. A second sender started on a ring
that already has one exits at once (status 0).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

from .. import lazy
from ..ring import RingClosed, RingRefused, Table
from ..settings import SenderSettings

log = lazy.Logger("isstreamer")


def raise_fd_limit() -> None:
    """Raise the soft limit on open files to the hard limit (the sender keeps no descriptor per
    segment, but opens each one briefly to ask the kernel whether its owner lives)."""
    if resource is None:
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        pass


def main() -> int:
    """Run a sender for the ring named in the settings read from stdin (JSON)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal: the sender still drains
    raise_fd_limit()
    # one line, not to EOF: a fork child of the starter may hold the pipe's write end for a while
    settings = SenderSettings.from_json(sys.stdin.buffer.readline())

    def configure(logging: Any) -> None:
        logging.raiseExceptions = False  # our stderr may be a pipe whose reader has exited
        level = logging.DEBUG if settings.debug_level >= 3 else logging.WARNING
        logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)

    # logging is imported at the first message (lazy.Logger), configured then: a sender that
    # has nothing to say never imports it (its start-up is what a one-shot script waits for)
    lazy.when_loaded("logging", configure)
    try:
        table = Table.open(
            settings.ring_path,
            native=settings.native,
            identity=tuple(settings.ring_identity) if settings.ring_identity else None,
        )
    except RingClosed:
        return 0
    except RingRefused as exc:
        log.error("%s", exc)
        return 2
    if not table.hold_sender_lock():
        return 0  # another sender serves this ring
    table.set_sender_pid(os.getpid())  # informational (stats, tests); liveness is the lock
    from .loop import Sender  # the HTTP stack: only now

    sender = Sender(settings, table)

    def _term(signum, frame):  # noqa: ARG001
        sender.stop_requested = True

    signal.signal(signal.SIGTERM, _term)
    return sender.run()


if __name__ == "__main__":
    sys.exit(main())
