"""Settings shared by a Streamer and its sender process (a small module: producers import it).

Nothing here imports the HTTP stack, so ``import isstreamer`` and a first ``log()`` stay light.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Dict

from .spool import DEFAULT_MAX_BYTES


@dataclass
class SenderSettings:
    """Everything the sender process needs; sent as JSON on its stdin."""

    ring_path: str
    api_base: str
    access_key: str = field(repr=False)
    spool_dir: str
    buffer_size: int = 10
    flush_interval: float = 1.0
    max_batch_events: int = 1000
    max_batch_bytes: int = 900_000
    request_timeout: float = 10.0
    close_timeout: float = 5.0
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    debug_level: int = 0
    native: bool = True
    use_gzip: bool = False
    policy: Dict[str, float] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Serialise for the child's stdin."""
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "SenderSettings":
        """Parse what ``to_json`` wrote."""
        return cls(**json.loads(data))
