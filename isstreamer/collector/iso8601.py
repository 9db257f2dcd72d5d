"""A small ISO 8601 timestamp parser that behaves the same on every Python version.

``datetime.fromisoformat`` accepts much more on 3.11 than on 3.9 (``Z``, basic format, any
number of fraction digits), so the collector would store or refuse the same event depending on
the interpreter. This parser accepts one documented set of forms everywhere:

- a calendar date, extended ``2023-11-14`` or basic ``20231114``;
- optionally a time after ``T``, ``t`` or a space: ``hh``, ``hh:mm``, ``hh:mm:ss`` (or basic
  ``hhmm``, ``hhmmss``), with a fraction of any length after ``.`` or ``,``; ``24:00`` is the
  end of the day;
- optionally a zone: ``Z``, ``z``, ``+hh``, ``+hh:mm``, ``+hhmm`` (no zone means UTC).

Week and ordinal dates and leap seconds are refused.
"""

from __future__ import annotations

import calendar
import re
from typing import Optional

__all__ = ["parse_iso8601"]

_ISO = re.compile(
    r"(?P<y>\d{4})(?P<sep>-?)(?P<mo>\d{2})(?P=sep)(?P<d>\d{2})"
    r"(?:[Tt ](?P<h>\d{2})(?:(?P<tsep>:?)(?P<mi>\d{2})(?:(?P=tsep)(?P<s>\d{2}))?)?(?:[.,](?P<f>\d{1,30}))?)?"
    r"(?P<z>[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)


def _offset_seconds(zone: Optional[str]) -> Optional[int]:
    """Seconds east of UTC of a zone designator, or None when it is invalid."""
    if not zone or zone in ("Z", "z"):
        return 0
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        return None
    return sign * (hours * 3600 + minutes * 60)


def parse_iso8601(text: str) -> Optional[float]:
    """Seconds since the Unix epoch of an ISO 8601 timestamp, or None when it is not one."""
    m = _ISO.fullmatch(text.strip())
    if m is None:
        return None
    year, month, day = int(m["y"]), int(m["mo"]), int(m["d"])
    if year < 1 or not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    hour = int(m["h"] or 0)
    minute = int(m["mi"] or 0)
    second = int(m["s"] or 0)
    fraction = float("0." + m["f"]) if m["f"] else 0.0
    if m["f"] and m["h"] is None:
        return None
    if hour == 24:
        if minute or second or fraction:
            return None
    elif hour > 23 or minute > 59 or second > 59:
        return None
    if m["f"] and m["s"] is None:  # a fraction of the last unit given: of the hour or the minute
        fraction *= 60.0 if m["mi"] is not None else 3600.0
    offset = _offset_seconds(m["z"])
    if offset is None:
        return None
    days = calendar.timegm((year, month, day, 0, 0, 0, 0, 0, 0)) // 86400
    return days * 86400.0 + hour * 3600 + minute * 60 + second + fraction - offset
