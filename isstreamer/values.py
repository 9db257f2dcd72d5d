"""The value rule set: what keys, values and epochs the events API can take, and conversions.

Every ``coerce_*`` function returns ``(normalized, reason)``: ``reason`` is ``None`` when the input
was used unchanged (exact-type copies of ``bool``/``int``/``float``/``str`` subclasses and numeric
scalars such as ``numpy.int64`` or ``Decimal`` do not count as changes), otherwise a short
snake_case name of the conversion (used as a stats counter).  In non-strict mode inputs that cannot
be sent raise :class:`Skip`; in strict mode (``debug_level >= 2``) every conversion or skip raises
``TypeError`` (wrong type) or ``ValueError`` (right type, bad value) instead.

When a conversion involves several steps (e.g. bytes that decode to more than 2000 characters) the
reason reported is the first, type-level one (``bytes_decoded``).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import math
import numbers
import operator
from collections.abc import Collection, Iterator

__all__ = [
    "MAX_KEY_CHARS",
    "MAX_VALUE_CHARS",
    "INT64_MIN",
    "INT64_MAX",
    "Skip",
    "coerce_key",
    "coerce_value",
    "coerce_epoch",
    "console_line",
]

MAX_KEY_CHARS = 250
"""Longest key the events API takes, in characters (longer keys are truncated)."""

MAX_VALUE_CHARS = 2000
"""Longest string value the events API takes, in characters (longer strings are truncated)."""

INT64_MIN = -(2**63)
"""Smallest integer sent as a JSON number."""

INT64_MAX = 2**63 - 1
"""Largest integer sent as a JSON number."""

# Epoch magnitudes (seconds would be after year 5138 above these): ms, us, ns.
_EPOCH_MS = 1e11
_EPOCH_US = 1e14
_EPOCH_NS = 1e17
_EPOCH_MAX_SECONDS = 1e11  # after unit conversion; larger is nonsense (e.g. 1e21 "ns")

# A decimal string of an int with more bits than this is certainly longer than MAX_VALUE_CHARS.
_MAX_INT_BITS = int(MAX_VALUE_CHARS * math.log2(10)) + 8

# reason -> exception class raised in strict mode
_TYPE_ERROR_REASONS = frozenset(
    {
        "unsupported_type",
        "bytes_decoded",
        "none_value",
        "datetime_to_str",
        "container_value",
        "enum_value",
        "object_to_str",
        "key_not_str",
        "epoch_date",
        "epoch_invalid_type",
    }
)

_RULE_NUMBER = "the events API accepts only finite numbers"
_RULE_VALUE = "values must be bool, int, float or str"
_RULE_KEY = f"keys must be non-empty strings of at most {MAX_KEY_CHARS} characters"
_RULE_EPOCH = "epoch must be a positive finite number of seconds since 1970 or a datetime"


class Skip(Exception):
    """The event cannot be sent and is dropped (non-strict mode).

    ``reason`` is the snake_case stats-counter name (e.g. ``"non_finite"``); ``str(exc)`` is a
    human-readable message naming the key/value problem and the rule.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason


class _Problem(Exception):
    """Internal: a conversion (strict mode only) or a skip, raised by the shared rule code.

    ``error`` overrides the strict-mode exception class chosen from the reason.
    """

    def __init__(self, reason: str, message: str, error: type[Exception] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.error = error


def _short(obj: object, limit: int = 60) -> str:
    """A bounded, never-failing repr for messages."""
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real problem
        text = f"<{type(obj).__name__} object>"
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text


def _what(key: str | None) -> str:
    """'value for key 'k'' or 'value' for messages."""
    return "value" if key is None else f"value for key {_short(key)}"


def _strict_error(problem: _Problem) -> Exception:
    """The strict-mode exception for a problem: TypeError for wrong types, else ValueError."""
    cls = problem.error or (TypeError if problem.reason in _TYPE_ERROR_REASONS else ValueError)
    return cls(problem.message)


def _fix_unicode(text: str) -> tuple[str, bool]:
    """Replace lone surrogates with U+FFFD (joining valid surrogate pairs); report if changed."""
    if text.isascii():
        return text, False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return fixed, True
    return text, False


def _is_numpy_bool(value: object) -> bool:
    """True for ``numpy.bool_`` scalars (detected without importing numpy)."""
    t = type(value)
    return t.__module__ == "numpy" and t.__name__ in ("bool_", "bool")


# --------------------------------------------------------------------------------------------
# keys


def coerce_key(key: object, strict: bool) -> tuple[str, str | None]:
    """Normalize an event key to a ``str`` of 1..MAX_KEY_CHARS characters, valid UTF-8.

    Non-strict: non-str keys become ``str(key)`` (``bytes`` are UTF-8 decoded) with reason
    ``key_not_str``; long keys are cut to 250 characters (``key_truncated``); lone surrogates become
    U+FFFD (``invalid_unicode``); ``None``, empty and whitespace-only keys raise
    ``Skip("empty_key")``.  Strict: each of those raises ``TypeError`` (wrong type) or
    ``ValueError`` instead.  ``str`` subclasses are returned as exact ``str`` (reason ``None``).
    """
    try:
        return _coerce_key(key, strict)
    except _Problem as problem:
        if strict:
            raise _strict_error(problem) from None
        raise Skip(problem.reason, problem.message) from None


def _coerce_key(key: object, strict: bool) -> tuple[str, str | None]:
    reason: str | None = None
    if type(key) is str:
        text = key
    elif isinstance(key, str):
        text = str.__str__(key)
    elif key is None:
        raise _Problem("empty_key", f"isstreamer: key is None; {_RULE_KEY}", TypeError)
    else:
        message = f"isstreamer: key {_short(key)} is {type(key).__name__}, not str; {_RULE_KEY}"
        if strict:
            raise _Problem("key_not_str", message)
        reason = "key_not_str"
        if isinstance(key, (bytes, bytearray, memoryview)):
            text = bytes(key).decode("utf-8", "replace")
        else:
            try:
                text = str(key)
            except Exception as exc:  # noqa: BLE001
                raise _Problem(
                    "key_not_str",
                    f"isstreamer: key of type {type(key).__name__} cannot be converted to str "
                    f"({type(exc).__name__}); {_RULE_KEY}",
                ) from None

    if not text or text.isspace():
        raise _Problem(
            "empty_key",
            f"isstreamer: key {text!r} is empty or whitespace; {_RULE_KEY}",
        )
    fixed, changed = _fix_unicode(text)
    if changed:
        if strict:
            raise _Problem(
                "invalid_unicode",
                f"isstreamer: key {_short(text)} contains lone surrogate characters that are not "
                "valid UTF-8; keys must be valid Unicode text",
            )
        text = fixed
        reason = reason or "invalid_unicode"
    if len(text) > MAX_KEY_CHARS:
        if strict:
            raise _Problem(
                "key_truncated",
                f"isstreamer: key {_short(text)} is {len(text)} characters long; {_RULE_KEY}",
            )
        text = text[:MAX_KEY_CHARS]
        reason = reason or "key_truncated"
    return text, reason


# --------------------------------------------------------------------------------------------
# values


def coerce_value(value: object, strict: bool, *, key: str | None = None) -> tuple[bool | int | float | str, str | None]:
    """Normalize an event value to ``bool``, int64 ``int``, finite ``float`` or a short ``str``.

    Plain values, their subclasses, ``__index__`` objects (numpy ints), ``Decimal``/``Fraction``/
    numpy floats pass (reason ``None``).  Non-strict conversions: out-of-int64 ints -> decimal str
    (``int_out_of_range``), long str -> 2000 chars (``value_truncated``), lone surrogates -> U+FFFD
    (``invalid_unicode``), bytes -> UTF-8 text (``bytes_decoded``), date/time -> ``isoformat()``
    (``datetime_to_str``), Enum -> ``.value`` or ``.name`` (``enum_value``), other objects ->
    ``str()`` (``object_to_str``).  :class:`Skip`: NaN/inf (``non_finite``), complex
    (``unsupported_type``), None (``none_value``), containers/iterators (``container_value``).
    Strict raises ``TypeError`` (wrong type) or ``ValueError`` (bad value) for all of those.
    ``key`` (optional) only names the event in messages.
    """
    try:
        return _coerce_value(value, strict, key, 0)
    except _Problem as problem:
        if strict:
            raise _strict_error(problem) from None
        raise Skip(problem.reason, problem.message) from None


def _convert(reason: str, message: str, strict: bool) -> str:
    """A conversion is about to happen: raise in strict mode, else return the reason."""
    if strict:
        raise _Problem(reason, message)
    return reason


def _coerce_str(text: str, strict: bool, key: str | None, reason: str | None) -> tuple[str, str | None]:
    """Apply the str rules (valid UTF-8, at most MAX_VALUE_CHARS) to an exact ``str``."""
    if len(text) <= MAX_VALUE_CHARS and text.isascii():
        return text, reason
    fixed, changed = _fix_unicode(text)
    if changed:
        r = _convert(
            "invalid_unicode",
            f"isstreamer: {_what(key)} contains lone surrogate characters that are not valid "
            "UTF-8; string values must be valid Unicode text",
            strict,
        )
        text = fixed
        reason = reason or r
    if len(text) > MAX_VALUE_CHARS:
        r = _convert(
            "value_truncated",
            f"isstreamer: {_what(key)} is a string of {len(text)} characters; the events API "
            f"accepts at most {MAX_VALUE_CHARS}",
            strict,
        )
        text = text[:MAX_VALUE_CHARS]
        reason = reason or r
    return text, reason


def _coerce_int(number: int, strict: bool, key: str | None, reason: str | None) -> tuple[int | str, str | None]:
    """Apply the int rules to an exact ``int``: int64 stays, larger becomes its decimal string."""
    if INT64_MIN <= number <= INT64_MAX:
        return number, reason
    message = (
        f"isstreamer: {_what(key)} is an integer outside the 64-bit range "
        f"[{INT64_MIN}, {INT64_MAX}]; the events API accepts only int64 integers"
    )
    text = str(number) if number.bit_length() <= _MAX_INT_BITS else None
    if text is None or len(text) > MAX_VALUE_CHARS:
        # its exact decimal string would not fit a value either: cannot be sent faithfully
        raise _Problem(
            "int_out_of_range",
            message + f" and its decimal form is longer than {MAX_VALUE_CHARS} characters",
        )
    r = _convert("int_out_of_range", message, strict)
    return text, reason or r


def _coerce_float(
    number: float, strict: bool, key: str | None, reason: str | None, source: object
) -> tuple[float, str | None]:
    """Apply the float rules to an exact ``float``: finite passes, NaN/inf are skipped."""
    if math.isfinite(number):
        return number, reason
    raise _Problem(
        "non_finite",
        f"isstreamer: {_what(key)} is {_nonfinite_name(source, number)}; {_RULE_NUMBER}",
    )


def _nonfinite_name(source: object, number: float) -> str:
    """'NaN', 'inf' or '-inf' for messages (with the source type when not a float)."""
    name = "NaN" if number != number else ("inf" if number > 0 else "-inf")
    if type(source) is not float:
        name += f" ({type(source).__name__})"
    return name


def _coerce_value(
    value: object, strict: bool, key: str | None, depth: int
) -> tuple[bool | int | float | str, str | None]:
    t = type(value)
    # exact plain types first
    if t is bool:
        return value, None  # type: ignore[return-value]
    if t is int:
        return _coerce_int(value, strict, key, None)  # type: ignore[arg-type]
    if t is float:
        return _coerce_float(value, strict, key, None, value)  # type: ignore[arg-type]
    if t is str:
        return _coerce_str(value, strict, key, None)  # type: ignore[arg-type]

    # subclasses of the plain types (incl. IntEnum/StrEnum and numpy.float64): exact copies
    if isinstance(value, int):  # bool cannot be subclassed, so this is a real int subclass
        return _coerce_int(int.__int__(value), strict, key, None)
    if isinstance(value, float):
        return _coerce_float(float.__float__(value), strict, key, None, value)
    if isinstance(value, str):
        return _coerce_str(str.__str__(value), strict, key, None)

    if value is None:
        raise _Problem(
            "none_value",
            f"isstreamer: {_what(key)} is None; {_RULE_VALUE}",
        )
    if _is_numpy_bool(value):
        return bool(value), None

    if isinstance(value, enum.Enum):
        return _coerce_enum(value, strict, key, depth)

    # numeric scalars: numpy ints (__index__), Decimal, Fraction, numpy floats, numbers.Real
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            kind = "NaN" if value.is_nan() else ("inf" if value > 0 else "-inf")
            raise _Problem(
                "non_finite",
                f"isstreamer: {_what(key)} is {kind} (Decimal); {_RULE_NUMBER}",
            )
        return _real_to_float(value, strict, key)
    if isinstance(value, complex) or (isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real)):
        raise _Problem(
            "unsupported_type",
            f"isstreamer: {_what(key)} is a complex number ({type(value).__name__}); {_RULE_VALUE}",
        )
    if hasattr(t, "__index__"):
        try:
            number = operator.index(value)
        except Exception:  # noqa: BLE001 - not really an integer; treat as an object
            pass
        else:
            return _coerce_int(int.__int__(number), strict, key, None)
    if isinstance(value, numbers.Real):
        return _real_to_float(value, strict, key)

    if isinstance(value, (bytes, bytearray, memoryview)):
        r = _convert(
            "bytes_decoded",
            f"isstreamer: {_what(key)} is {t.__name__}, not str; decode it first ({_RULE_VALUE})",
            strict,
        )
        data = value.tobytes() if isinstance(value, memoryview) else bytes(value)
        return _coerce_str(data.decode("utf-8", "replace"), strict, key, r)

    if isinstance(value, (_dt.date, _dt.time)):  # datetime is a date subclass
        r = _convert(
            "datetime_to_str",
            f"isstreamer: {_what(key)} is a {t.__name__} object; {_RULE_VALUE} "
            "(format it with .isoformat(), or pass it as the epoch)",
            strict,
        )
        return _coerce_str(value.isoformat(), strict, key, r)

    if isinstance(value, Collection):
        raise _Problem(
            "container_value",
            f"isstreamer: {_what(key)} is a container ({t.__name__}); {_RULE_VALUE} "
            "(use log_object() to log its items)",
        )
    if isinstance(value, Iterator):
        raise _Problem(
            "container_value",
            f"isstreamer: {_what(key)} is an iterator ({t.__name__}); {_RULE_VALUE} "
            "(materialize it and use log_object() to log its items)",
        )

    message = (
        f"isstreamer: {_what(key)} is an object of type {t.__name__}; {_RULE_VALUE} "
        "(convert it explicitly, e.g. with str())"
    )
    r = _convert("object_to_str", message, strict)
    try:
        text = str(value)
    except Exception as exc:  # noqa: BLE001 - a broken __str__ drops only this event
        raise _Problem(
            "unsupported_type",
            f"isstreamer: {_what(key)} is an object of type {t.__name__} whose str() failed "
            f"({type(exc).__name__}); {_RULE_VALUE}",
        ) from None
    return _coerce_str(str.__str__(text), strict, key, r)


def _real_to_float(value: object, strict: bool, key: str | None) -> tuple[float, str | None]:
    """float(x) for Decimal/Fraction/numpy floats; NaN/inf and float overflow are skipped."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:
        number = math.inf if value > 0 else -math.inf  # type: ignore[operator]
    except (TypeError, ValueError) as exc:
        raise _Problem(
            "unsupported_type",
            f"isstreamer: {_what(key)} ({type(value).__name__}) cannot be converted to float "
            f"({type(exc).__name__}); {_RULE_VALUE}",
        ) from None
    if math.isfinite(number):
        return number, None
    if _is_nan_or_inf(value):
        name = _nonfinite_name(value, number)
        raise _Problem("non_finite", f"isstreamer: {_what(key)} is {name}; {_RULE_NUMBER}")
    raise _Problem(
        "non_finite",
        f"isstreamer: {_what(key)} {_short(value)} is too large for a 64-bit float; {_RULE_NUMBER}",
    )


def _is_nan_or_inf(value: object) -> bool:
    """True when a Real number is itself NaN or infinite (not merely too large for a float)."""
    try:
        return value != value or value in (math.inf, -math.inf)  # type: ignore[comparison-overlap]
    except Exception:  # noqa: BLE001
        return False


def _coerce_enum(
    member: enum.Enum, strict: bool, key: str | None, depth: int
) -> tuple[bool | int | float | str, str | None]:
    """Enum members send their ``.value`` (by the value rules) or, if that cannot be sent as is
    or as a number/string conversion, their ``.name``."""
    _convert(
        "enum_value",
        f"isstreamer: {_what(key)} is an enum member {_short(member)}; {_RULE_VALUE} (pass .value or .name)",
        strict,
    )
    inner = getattr(member, "value", None)
    if depth < 8:
        try:
            result, inner_reason = _coerce_value(inner, False, key, depth + 1)
        except _Problem:
            pass
        else:
            if inner_reason != "object_to_str":
                return result, "enum_value"
    name, _ = _coerce_str(str(member.name), False, key, None)
    return name, "enum_value"


# --------------------------------------------------------------------------------------------
# epochs


def coerce_epoch(epoch: object, strict: bool, *, key: str | None = None) -> tuple[float | None, str | None]:
    """Normalize an event timestamp to float seconds since 1970, or ``None`` meaning "now".

    ``None`` -> ``(None, None)``.  Positive finite numbers are seconds, except that values that
    look like milliseconds (>= 1e11), microseconds (>= 1e14) or nanoseconds (>= 1e17) are scaled
    (reasons ``epoch_ms``/``epoch_us``/``epoch_ns``).  Datetimes use ``.timestamp()`` (naive =
    local time); a ``date`` is local midnight (``epoch_date``).  Anything else (NaN, inf, <= 0,
    bool, str, objects, results beyond 1e11 s) keeps "now": ``(None, "epoch_invalid")``.  Strict
    mode raises ``TypeError``/``ValueError`` for anything but plain seconds and datetimes.
    """
    if epoch is None:
        return None, None
    try:
        return _coerce_epoch(epoch, strict, key)
    except _Problem as problem:
        if strict:
            raise _strict_error(problem) from None
        return None, "epoch_invalid"


def _epoch_for(key: str | None) -> str:
    """'epoch' or 'epoch for key 'k'' for messages."""
    return "epoch" if key is None else f"epoch for key {_short(key)}"


def _coerce_epoch(epoch: object, strict: bool, key: str | None) -> tuple[float, str | None]:
    what = _epoch_for(key)

    def bad_type() -> _Problem:
        return _Problem(
            "epoch_invalid_type",
            f"isstreamer: {what} {_short(epoch)} is {type(epoch).__name__}; {_RULE_EPOCH}",
        )

    def bad_value(detail: str) -> _Problem:
        return _Problem(
            "epoch_invalid",
            f"isstreamer: {what} {_short(epoch)} {detail}; {_RULE_EPOCH}",
        )

    if isinstance(epoch, bool) or _is_numpy_bool(epoch):
        raise bad_type()

    if isinstance(epoch, _dt.datetime):
        try:
            seconds = epoch.timestamp()
        except (OverflowError, OSError, ValueError):
            raise bad_value("cannot be converted to a timestamp") from None
        if not seconds > 0:
            raise bad_value("is not after 1970-01-01")
        return seconds, None
    if isinstance(epoch, _dt.date):
        _convert(
            "epoch_date",
            f"isstreamer: {what} {_short(epoch)} is a date, not a datetime; pass a datetime "
            "or seconds (a date means local midnight)",
            strict,
        )
        try:
            seconds = _dt.datetime.combine(epoch, _dt.time()).timestamp()
        except (OverflowError, OSError, ValueError):
            raise bad_value("cannot be converted to a timestamp") from None
        if not seconds > 0:
            raise bad_value("is not after 1970-01-01")
        return seconds, "epoch_date"

    # numbers: exact int first (exact division), then anything int-like, then reals
    integer: int | None = None
    number: float
    if isinstance(epoch, int):
        integer = int.__int__(epoch)
    elif not isinstance(epoch, (float, decimal.Decimal, str, bytes)) and hasattr(type(epoch), "__index__"):
        try:
            integer = int.__int__(operator.index(epoch))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001
            integer = None
    if integer is not None:
        if integer <= 0:
            raise bad_value("is not positive")
        try:
            number = float(integer)
        except OverflowError:
            raise bad_value("is too large") from None
    elif isinstance(epoch, (float, decimal.Decimal)) or (
        isinstance(epoch, numbers.Real) and not isinstance(epoch, (str, bytes))
    ):
        try:
            number = float(epoch)  # type: ignore[arg-type]
        except (OverflowError, ValueError, TypeError):
            raise bad_value("is not a finite number") from None
        if not math.isfinite(number):
            raise bad_value("is not a finite number")
        if not number > 0:
            raise bad_value("is not positive")
    else:
        raise bad_type()

    if number >= _EPOCH_NS:
        divisor, reason, unit = 1_000_000_000, "epoch_ns", "nanoseconds"
    elif number >= _EPOCH_US:
        divisor, reason, unit = 1_000_000, "epoch_us", "microseconds"
    elif number >= _EPOCH_MS:
        divisor, reason, unit = 1_000, "epoch_ms", "milliseconds"
    else:
        return number, None
    seconds = integer / divisor if integer is not None else number / divisor
    if seconds >= _EPOCH_MAX_SECONDS:
        raise bad_value("is too large even as nanoseconds")
    _convert(
        reason,
        f"isstreamer: {what} {_short(epoch)} looks like {unit}, not seconds; "
        "the events API takes epoch seconds (divide before logging)",
        strict,
    )
    return seconds, reason


# --------------------------------------------------------------------------------------------
# console


def console_line(key: str, value: object, epoch: float) -> str:
    """The ``debug_level >= 1`` console line, exactly as ISStreamer 2.0.0 printed it:
    ``"<local time %Y-%m-%d %H:%M:%S.%f>: <key> <value>"``."""
    stamp = _dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S.%f")
    return "{time}: {key} {value}".format(time=stamp, key=key, value=value)
