"""Random identifiers from ``os.urandom`` (the ``secrets`` and ``uuid`` modules cost an import of
``hashlib``/``hmac`` and ``platform`` at start-up, for nothing these names need)."""

from __future__ import annotations

import os
from typing import Any

from . import lazy


def token_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as lowercase hex (as ``secrets.token_hex``)."""
    return os.urandom(nbytes).hex()


def random_id63() -> int:
    """A random odd 63-bit integer (never 0): a segment's identity."""
    return (int.from_bytes(os.urandom(8), "little") >> 1) | 1


def uuid4() -> str:
    """A random RFC 4122 version-4 UUID in its canonical form (as ``str(uuid.uuid4())``)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


_SHA256: Any = None


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` in hex, from the interpreter's own small ``_sha2`` / ``_sha256`` module
    when it has one (``hashlib`` loads OpenSSL: about 2.5 ms of a Streamer's start-up)."""
    global _SHA256
    if _SHA256 is None:
        for name in ("_sha2", "_sha256", "hashlib"):  # 3.12 and newer, 3.9 to 3.11, anything else
            try:
                _SHA256 = lazy.load(name).sha256
                break
            except (ImportError, AttributeError):
                continue
    return _SHA256(data).hexdigest()
