"""``log_object`` flattening: turn an object into the (key, leaf value) pairs it logs.

The Streamer stamps every pair with one epoch and runs the value rules on each leaf, so leaves
here may be anything (sets, arbitrary objects, cycles cut short): the value rules decide.
"""

from __future__ import annotations

import datetime as _dt
import enum
import numbers
from collections.abc import Mapping, Sequence, Set
from typing import Iterable, Iterator

from . import lazy

__all__ = ["MAX_DEPTH", "flatten_object"]

MAX_DEPTH = 32
"""Deepest nesting level that is expanded; a container nested deeper is logged as a leaf."""

_TEXT_TYPES = (str, bytes, bytearray, memoryview)
_SCALAR_TYPES = (
    str,
    bytes,
    bytearray,
    memoryview,
    numbers.Number,
    _dt.date,
    _dt.time,
    _dt.timedelta,
    enum.Enum,
)

# Exact types that are always leaves: checked first, so plain values skip the ABC checks.
_PLAIN_LEAVES = frozenset((int, float, str, bool, type(None), bytes))


def flatten_object(obj: object, key_prefix: str | None = None) -> list[tuple[str, object]]:
    """Return the ``(key, leaf value)`` pairs that ``log_object(obj, key_prefix)`` logs.

    Prefix: ``None`` -> ``type(obj).__name__ + "_"`` (``list_0``, ``dict_a``, ``Point_x``);
    ``""`` -> no prefix; ``"x"`` -> ``"x_"``.  Namedtuples and dataclasses give their field names,
    mappings ``str(key)``, other sequences (list, tuple, range, deque, ...) their indices, and any
    other object its public instance attributes, ``__slots__`` and ``property`` values (sorted by
    name; a property that raises, methods and classes are left out).  Nested mappings, sequences,
    namedtuples and dataclasses are flattened with ``_`` separators; other nested values are
    leaves.  Cycles and nesting deeper than :data:`MAX_DEPTH` end recursion: that value becomes a
    leaf.  A top-level scalar (number, str, bytes, None, date/time, enum) or set is one pair keyed
    by ``key_prefix`` (if non-empty) or its type name.
    """
    type_name = type(obj).__name__
    if key_prefix is None:
        prefix = type_name + "_"
    else:
        key_prefix = str(key_prefix)
        prefix = key_prefix + "_" if key_prefix else ""

    if obj is None or isinstance(obj, _SCALAR_TYPES) or isinstance(obj, Set) or _is_numpy_scalar(obj):
        return [(key_prefix or type_name, obj)]

    items = _container_items(obj)
    if items is None:
        items = _object_items(obj)
    pairs: list[tuple[str, object]] = []
    path = {id(obj)}
    for name, value in items:
        _flatten_into(pairs, prefix + name, value, 1, path)
    return pairs


def _flatten_into(pairs: list[tuple[str, object]], key: str, value: object, depth: int, path: set[int]) -> None:
    """Append ``value`` (flattened when it is a nested container) under ``key``.

    ``depth`` is the nesting level of ``value`` (top-level children are 1); ``path`` holds the ids
    of the containers currently being expanded, to detect cycles without rejecting shared ones.
    """
    if type(value) in _PLAIN_LEAVES or depth > MAX_DEPTH or id(value) in path:
        pairs.append((key, value))
        return
    items = _container_items(value)
    if items is None:
        pairs.append((key, value))
        return
    path.add(id(value))
    try:
        for name, child in items:
            _flatten_into(pairs, key + "_" + name, child, depth + 1, path)
    finally:
        path.discard(id(value))


def _container_items(obj: object) -> Iterable[tuple[str, object]] | None:
    """(name, value) items of a flattenable container, or ``None`` when ``obj`` is a leaf."""
    if isinstance(obj, _TEXT_TYPES):
        return None
    if isinstance(obj, tuple) and hasattr(type(obj), "_fields"):  # namedtuple
        return list(zip(map(str, type(obj)._fields), obj))
    if hasattr(type(obj), "__dataclass_fields__") and not isinstance(obj, type):  # dataclasses.is_dataclass
        return list(_dataclass_items(obj))
    if isinstance(obj, Mapping):
        return [(str(k), v) for k, v in obj.items()]
    if isinstance(obj, Sequence):
        return [(str(i), v) for i, v in enumerate(obj)]
    if _is_numpy_array(obj):
        return [(str(i), v) for i, v in enumerate(obj.tolist())]  # type: ignore[attr-defined]
    return None


def _dataclass_items(obj: object) -> Iterator[tuple[str, object]]:
    """Fields of a dataclass instance in declaration order (unset fields are left out)."""
    dataclasses = lazy.load("dataclasses")  # the program that made a dataclass has loaded it already
    for field in dataclasses.fields(obj):  # type: ignore[arg-type]
        try:
            yield field.name, getattr(obj, field.name)
        except AttributeError:
            continue


def _object_items(obj: object) -> list[tuple[str, object]]:
    """Public instance attributes, ``__slots__`` and ``property`` values, sorted by name."""
    found: dict[str, object] = {}
    try:
        instance_vars = vars(obj)
    except TypeError:
        instance_vars = {}
    for name, value in list(instance_vars.items()):
        if isinstance(name, str) and not name.startswith("_") and not _is_code(value):
            found[name] = value
    cls = type(obj)
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        for name in slots:
            if not isinstance(name, str) or name.startswith("_") or name in found:
                continue
            try:
                value = getattr(obj, name)
            except AttributeError:  # slot never assigned
                continue
            if not _is_code(value):
                found[name] = value
    seen: set[str] = set()
    for klass in cls.__mro__:
        for name, attr in list(klass.__dict__.items()):
            if name in seen:
                continue
            seen.add(name)  # the first class in the MRO defining a name wins
            if not isinstance(attr, property) or name.startswith("_") or name in found:
                continue
            try:
                found[name] = getattr(obj, name)
            except Exception:  # noqa: BLE001 - a failing property is skipped, not fatal
                continue
    return sorted(found.items(), key=lambda item: item[0])


def _is_code(value: object) -> bool:
    """True for functions, methods and classes stored as attributes (code, not data)."""
    # inspect: on first use, it costs several ms of a producer's start-up
    return isinstance(value, type) or lazy.load("inspect").isroutine(value)


def _is_numpy_scalar(obj: object) -> bool:
    """True for numpy scalars (``numpy.generic``), detected without importing numpy."""
    t = type(obj)
    return t.__module__ == "numpy" and any(
        base.__name__ == "generic" and base.__module__ == "numpy" for base in t.__mro__
    )


def _is_numpy_array(obj: object) -> bool:
    """True for numpy arrays with at least one dimension (flattened by index via ``tolist``)."""
    t = type(obj)
    return t.__module__ == "numpy" and t.__name__ == "ndarray" and getattr(obj, "ndim", 0) >= 1
