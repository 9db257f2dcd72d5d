"""Per-key downsampling rules, applied by the sender while it drains (never in ``log()``).

    Streamer(..., rules={
        "temperature": Window(1.0, ("mean", "min", "max")),   # every second: mean, min, max
        "pressure_*": Deadband(absolute=0.5, heartbeat=60),   # report by exception
        "door_*": OnChange(),                                  # strings / booleans: on change
    })

A key takes the rule of its exact name if there is one (a pattern is matched literally first,
whatever characters it holds), else of the first glob pattern (``fnmatch``: ``*``, ``?``,
``[...]``) that matches it; keys without a rule pass through unchanged.
Strings and booleans under any rule are sent on change. Rules travel to the sender (and to every
process using the Streamer) as JSON, see :func:`rules_to_json`.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .record import record

#: statistics a Window can send, in the order of their bit in the C kernel's mask
STATS = ("mean", "min", "max", "last", "first", "count", "sum")

KIND_WINDOW = 1
KIND_DEADBAND = 2
KIND_CHANGE = 3


def _num(name: str, v: Any, least: float, strict: bool = False) -> float:
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or not math.isfinite(v)
        or (v <= least if strict else v < least)
    ):
        raise ValueError(
            "isstreamer: %s must be a finite number %s %g, not %r" % (name, ">" if strict else ">=", least, v)
        )
    return float(v)


@record(frozen=True)
class Window:
    """Send ``stats`` of each key every ``seconds`` (windows aligned to multiples of ``seconds``
    of the epoch; the window's end is the epoch sent). ``mean`` is sent under the key itself,
    the others as ``key_min``, ``key_max``..."""

    seconds: float
    stats: Tuple[str, ...] = ("mean",)

    def __post_init__(self) -> None:
        _num("Window.seconds", self.seconds, 0.0, strict=True)
        stats = (self.stats,) if isinstance(self.stats, str) else tuple(self.stats)
        bad = [s for s in stats if s not in STATS]
        if bad or not stats:
            raise ValueError("isstreamer: Window.stats must be among %s, not %r" % (", ".join(STATS), self.stats))
        object.__setattr__(self, "stats", tuple(dict.fromkeys(stats)))


@record(frozen=True)
class Deadband:
    """Report by exception: send a value when it differs from the last one sent by more than
    ``absolute`` or by more than ``relative`` x |last sent| (either, when both are given; every
    change when neither is), and at least every ``heartbeat`` seconds of epoch (0: never)."""

    absolute: float = 0.0
    relative: float = 0.0
    heartbeat: float = 0.0

    def __post_init__(self) -> None:
        _num("Deadband.absolute", self.absolute, 0.0)
        _num("Deadband.relative", self.relative, 0.0)
        _num("Deadband.heartbeat", self.heartbeat, 0.0)


@record(frozen=True)
class OnChange:
    """Send a value only when it differs from the last one sent (and at least every ``heartbeat``
    seconds of epoch, 0: never). For strings and booleans; numbers compare exactly."""

    heartbeat: float = 0.0

    def __post_init__(self) -> None:
        _num("OnChange.heartbeat", self.heartbeat, 0.0)


Rule = Union[Window, Deadband, OnChange]


def rule_to_dict(rule: Rule) -> Dict[str, Any]:
    """A JSON-able form of a rule."""
    if isinstance(rule, Window):
        return {"kind": "window", "seconds": rule.seconds, "stats": list(rule.stats)}
    if isinstance(rule, Deadband):
        return {"kind": "deadband", "absolute": rule.absolute, "relative": rule.relative, "heartbeat": rule.heartbeat}
    if isinstance(rule, OnChange):
        return {"kind": "change", "heartbeat": rule.heartbeat}
    raise TypeError("isstreamer: a rule must be Window, Deadband or OnChange, not %s" % type(rule).__name__)


def rule_from_dict(d: Mapping[str, Any]) -> Rule:
    """Inverse of :func:`rule_to_dict`."""
    kind = d.get("kind")
    if kind == "window":
        return Window(d["seconds"], tuple(d.get("stats", ("mean",))))
    if kind == "deadband":
        return Deadband(d.get("absolute", 0.0), d.get("relative", 0.0), d.get("heartbeat", 0.0))
    if kind == "change":
        return OnChange(d.get("heartbeat", 0.0))
    raise ValueError("isstreamer: unknown rule kind %r" % kind)


def normalize_rules(rules: Optional[Any]) -> List[List[Any]]:
    """``{pattern: rule}`` or ``[(pattern, rule), ...]`` -> ``[[pattern, rule_dict], ...]`` (checked)."""
    if not rules:
        return []
    items: Sequence[Any] = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    out: List[List[Any]] = []
    for item in items:
        pattern, rule = item
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("isstreamer: a rule's key or pattern must be a non-empty str, not %r" % (pattern,))
        out.append([pattern, rule_to_dict(rule if not isinstance(rule, Mapping) else rule_from_dict(rule))])
    return out


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class RuleSet:
    """Resolves a key to its rule: exact names first (a pattern is also the literal name of a key,
    whatever characters it holds: ``temp[C]`` names the key ``temp[C]``), then glob patterns in
    the order given (``temp[C]`` also matches ``tempC``)."""

    def __init__(self, rules: Sequence[Sequence[Any]]) -> None:
        self.rules: List[Rule] = []
        self.exact: Dict[str, int] = {}
        self.globs: List[Tuple[str, int]] = []
        for pattern, d in rules:
            idx = len(self.rules)
            self.rules.append(rule_from_dict(d) if isinstance(d, Mapping) else d)
            self.exact.setdefault(pattern, idx)  # every pattern names its key literally, first
            if _is_glob(pattern):
                self.globs.append((pattern, idx))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def lookup(self, key: str) -> int:
        """Index of the rule of ``key`` in :attr:`rules`, -1 when none applies."""
        i = self.exact.get(key)
        if i is not None:
            return i
        for pattern, idx in self.globs:
            if fnmatch.fnmatchcase(key, pattern):
                return idx
        return -1


def stat_key(key: str, stat: str) -> str:
    """The key a statistic is sent under: the key itself for ``mean``, ``key_<stat>`` otherwise."""
    return key if stat == "mean" else "%s_%s" % (key, stat)


def ceiling_settings(max_events_per_second: float, monthly_budget: int, fallback: Optional[Rule]) -> Dict[str, Any]:
    """The sender's ``ceiling`` settings (checked): {} when none is set."""
    _num("max_events_per_second", max_events_per_second, 0.0)
    if isinstance(monthly_budget, bool) or not isinstance(monthly_budget, int) or monthly_budget < 0:
        raise ValueError("isstreamer: monthly_budget must be an int >= 0, not %r" % (monthly_budget,))
    out: Dict[str, Any] = {}
    if max_events_per_second:
        out["max_events_per_second"] = float(max_events_per_second)
    if monthly_budget:
        out["monthly_budget"] = monthly_budget
    if fallback is not None:
        out["fallback"] = rule_to_dict(fallback)
    return out
