"""Settings shared by a Streamer and its sender process (a small module: producers import it).

Nothing here imports the HTTP stack, so ``import isstreamer`` and a first ``log()`` stay light.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List

from . import ids
from .options import BUFFER_SIZE, DEFAULTS, Options
from .record import asdict, factory, fields, record
from .ring import layout as L
from .sender.spool import key_fingerprint

# the options the sender needs (the others are the producers')
SENDER_OPTIONS = (
    "spool_dir",
    "flush_interval",
    "max_batch_events",
    "max_batch_bytes",
    "request_timeout",
    "close_timeout",
    "spool_max_bytes",
    "use_gzip",
    "max_attempts",
    "backoff_max",
    "auth_retry_interval",
    "max_rps",
)


@record(hidden=("access_key",))
class SenderSettings:
    """Everything the sender process needs; sent as JSON on its stdin. Defaults: options.DEFAULTS."""

    ring_path: str
    api_base: str
    access_key: str
    spool_dir: str
    buffer_size: int = BUFFER_SIZE
    flush_interval: float = DEFAULTS.flush_interval
    max_batch_events: int = DEFAULTS.max_batch_events
    max_batch_bytes: int = DEFAULTS.max_batch_bytes
    request_timeout: float = DEFAULTS.request_timeout
    close_timeout: float = DEFAULTS.close_timeout
    spool_max_bytes: int = DEFAULTS.spool_max_bytes
    debug_level: int = 0
    native: bool = True
    use_gzip: bool = DEFAULTS.use_gzip
    max_attempts: int = DEFAULTS.max_attempts
    backoff_max: float = DEFAULTS.backoff_max
    auth_retry_interval: float = DEFAULTS.auth_retry_interval
    max_rps: float = DEFAULTS.max_rps
    ring_identity: List[int] = factory(list)  # (st_dev, st_ino) of the table file
    spool_only: bool = False  # an adopted ring of another access key: spool, never send
    fingerprint: str = ""  # with spool_only: the ring's key fingerprint (its spool stream)
    rules: List[List[Any]] = factory(list)  # [[key or glob, rule dict]]: isstreamer.rules
    ceiling: Dict[str, Any] = factory(dict)  # max_events_per_second, monthly_budget, fallback

    @classmethod
    def of(cls, options: Options, **rest: Any) -> "SenderSettings":
        """The settings for a Streamer's ``options`` (resolved: its spool_dir is set) and ``rest``."""
        return cls(**{name: getattr(options, name) for name in SENDER_OPTIONS}, **rest)

    def meta(self) -> Dict[str, Any]:
        """What a ring records of these settings for an adopter: everything but the access key
        (whose SHA-256 fingerprint is kept instead) and the ring's own path."""
        d = asdict(self)
        for k in ("access_key", "ring_path", "ring_identity", "spool_only", "fingerprint"):
            d.pop(k)
        d["fingerprint"] = key_fingerprint(self.access_key)
        d["created"] = time.time()
        d["wake"] = ids.token_hex(8)  # names the sender's wake socket (see Table.wake_path)
        if len(json.dumps(d, sort_keys=True).encode()) > L.META_MAX:  # aggregate: too many rules for the
            d.pop("rules")  # ring header; an adopter of this ring (after a crash) sends its events without them
        return d

    @classmethod
    def from_meta(cls, meta: Dict[str, Any], access_key: str) -> "SenderSettings":
        """Settings for adopting a ring from its recorded meta: with ``access_key`` when it is the
        key the ring was made with, else spool-only (the events wait for their own key)."""
        known = set(fields(cls)) - {"fingerprint", "spool_only", "access_key"}
        d = {k: v for k, v in meta.items() if k in known}
        fp = str(meta.get("fingerprint", ""))
        same = bool(access_key) and fp == key_fingerprint(access_key)
        return cls(ring_path="", access_key=access_key if same else "", spool_only=not same, fingerprint=fp, **d)

    def to_json(self) -> bytes:
        """Serialise for the child's stdin: one line (the reader stops at the newline)."""
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> "SenderSettings":
        """Parse what ``to_json`` wrote."""
        return cls(**json.loads(data))
