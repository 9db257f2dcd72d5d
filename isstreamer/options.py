"""Every option's default, once (as sentry-python's ``consts.py`` does).

:class:`Options` holds the keyword-only options of :class:`~isstreamer.streamer.Streamer` (the
arguments it has beyond ISStreamer 2.0.0's); ``DEFAULTS`` is an instance with every default.
The Streamer's signature, the sender's settings (:class:`~isstreamer.settings.SenderSettings`),
the delivery policy (:class:`~isstreamer.sender.delivery.Policy`), the transport and the CLI all
read their defaults from here. Nothing here imports anything heavy: producers import it.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional, Tuple

from .record import asdict, record

DEFAULT_RING_SIZE = (64 if sys.maxsize > 2**32 else 8) * 1024 * 1024  # bytes of one process's segment
MIB = 1024 * 1024
REJECTED_FILE = "rejected.jsonl"  # in the spool directory: events the API refused, with its answer
OFFLINE_FILE = "isstreamer_out.csv"
API_BASE = "https://groker.init.st"


@record(frozen=True)
class Options:
    """The Streamer's keyword-only options (see the README's table for what each one means)."""

    flush_interval: float = 1.0  # a lone event is sent after at most this long (s)
    max_batch_events: int = 10000
    max_batch_bytes: int = 900_000  # the events API takes bodies up to 1 MB
    ring_size: int = DEFAULT_RING_SIZE
    max_ring_memory: int = 0  # 0: a quarter of the ring directory's file system (at least 16 MiB)
    max_producers: int = 0  # accepted for compatibility, no effect
    close_timeout: float = 5.0  # s close() (and exit) wait for delivery
    on_full: str = "block"  # or "drop"
    full_timeout: float = 2.0  # s a put waits once on a full segment
    spool_dir: Optional[str] = None  # None: $ISSTREAMER_SPOOL_DIR, else ~/.local/state/isstreamer/spool
    spool_max_bytes: int = 512 * MIB
    request_timeout: float = 10.0  # s per HTTP request
    max_rps: float = 0.0  # requests per second ceiling (0: none)
    max_attempts: int = 4  # failed requests in a row before a batch is spooled (outage)
    backoff_max: float = 30.0  # s, the longest backoff between retries
    auth_retry_interval: float = 30.0  # s paused after 401/402/403
    use_gzip: bool = False
    offline_file: Optional[str] = None  # None: the configuration's, else OFFLINE_FILE

    # the least value each numeric option may take (bools are refused)
    MINIMA = {
        "max_batch_events": 1,
        "max_producers": 0,
        "max_attempts": 1,
        "ring_size": 1,
        "max_ring_memory": 0,
        "max_batch_bytes": 1,
        "spool_max_bytes": 1,
        "flush_interval": 1e-3,
        "request_timeout": 1e-3,
        "backoff_max": 0.0,
        "auth_retry_interval": 0.0,
        "close_timeout": 0.0,
        "full_timeout": 0.0,
        "max_rps": 0.0,
    }

    def __post_init__(self) -> None:
        if self.on_full not in ("block", "drop"):
            raise ValueError("isstreamer: on_full must be 'block' or 'drop'")
        for name, least in self.MINIMA.items():
            check_number(name, getattr(self, name), least)

    def replace(self, **changes: Any) -> "Options":
        """A copy with ``changes`` (validated again)."""
        values = asdict(self)
        values.update(changes)
        return Options(**values)

    def as_dict(self) -> Dict[str, Any]:
        """The options by name (for pickling a Streamer)."""
        return asdict(self)


def check_number(name: str, value: Any, least: float) -> None:
    """``value`` must be a number (not a bool) at least ``least``: ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= least:
        raise ValueError("isstreamer: %s must be a number >= %g, not %r" % (name, least, value))


DEFAULTS = Options()

# the delivery policy's own knobs, not options of the Streamer
BACKOFF_INITIAL = 0.25  # s, the first backoff after a failure
RETRY_AFTER_MAX = 300.0  # s, the longest wait a Retry-After / X-RateLimit-Reset may impose
FINISH_BACKOFF = 0.25  # s, the longest backoff while finishing (close / exit budget)
BUFFER_SIZE = 10  # ISStreamer 2.0.0's default: events waiting that trigger a send

__all__: Tuple[str, ...] = (
    "API_BASE",
    "BACKOFF_INITIAL",
    "BUFFER_SIZE",
    "DEFAULTS",
    "DEFAULT_RING_SIZE",
    "FINISH_BACKOFF",
    "MIB",
    "OFFLINE_FILE",
    "Options",
    "REJECTED_FILE",
    "RETRY_AFTER_MAX",
    "check_number",
)
