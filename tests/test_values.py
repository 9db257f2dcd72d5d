"""Tests for isstreamer.values: every row of the key, value and epoch rule tables, both modes."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import enum
import fractions
import math
import time
from typing import Any, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from isstreamer.values import (
    INT64_MAX,
    INT64_MIN,
    MAX_KEY_CHARS,
    MAX_VALUE_CHARS,
    Skip,
    coerce_epoch,
    coerce_key,
    coerce_value,
    console_line,
)


def assert_sendable(value: object) -> None:
    """The output invariant: exact bool, int64 int, finite float, or short valid-UTF-8 str."""
    t = type(value)
    assert t in (bool, int, float, str), t
    if t is int:
        assert INT64_MIN <= value <= INT64_MAX  # type: ignore[operator]
    elif t is float:
        assert math.isfinite(value)  # type: ignore[arg-type]
    elif t is str:
        assert len(value) <= MAX_VALUE_CHARS  # type: ignore[arg-type]
        value.encode("utf-8")  # type: ignore[union-attr]  # strict: raises on lone surrogates


@pytest.fixture()
def local_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with a fixed non-UTC local time zone (POSIX rule, no tzdata needed): UTC-5 / UTC-4."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset not available")
    monkeypatch.setenv("TZ", "EST+05EDT,M3.2.0,M11.1.0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# ============================================================================ values


class MyInt(int):
    """int subclass."""


class MyFloat(float):
    """float subclass."""


class MyStr(str):
    """str subclass whose __str__ lies (the exact copy must not use it)."""

    def __str__(self) -> str:
        return "lie"


class Color(enum.Enum):
    RED = 1
    PAIR = (1, 2)
    NOTHING = None
    OBJ = object()
    LABEL = "label"
    WHEN = dt.date(2024, 1, 2)


class Level(enum.IntEnum):
    HIGH = 3


class Mode(str, enum.Enum):
    AUTO = "auto"


class Thing:
    """Arbitrary object with a str()."""

    def __str__(self) -> str:
        return "thing!"


class HugeStr:
    def __str__(self) -> str:
        return "z" * 5000


class BadStr:
    def __str__(self) -> str:
        raise RuntimeError("boom")


PLAIN_VALUES: list[tuple[object, object]] = [
    (True, True),
    (False, False),
    (0, 0),
    (-17, -17),
    (INT64_MAX, INT64_MAX),
    (INT64_MIN, INT64_MIN),
    (1.5, 1.5),
    (-0.0, -0.0),
    (1e308, 1e308),
    ("", ""),
    ("hi", "hi"),
    ("é€😀", "é€😀"),
    ("x" * MAX_VALUE_CHARS, "x" * MAX_VALUE_CHARS),
    ("😀" * MAX_VALUE_CHARS, "😀" * MAX_VALUE_CHARS),
    # subclasses: exact type out, not a conversion
    (MyInt(5), 5),
    (MyFloat(2.5), 2.5),
    (MyStr("real"), "real"),
    (Level.HIGH, 3),
    (Mode.AUTO, "auto"),
    # numeric scalars that are not conversions
    (decimal.Decimal("1.25"), 1.25),
    (fractions.Fraction(1, 4), 0.25),
]


@pytest.mark.parametrize("value, expected", PLAIN_VALUES)
@pytest.mark.parametrize("strict", [False, True])
def test_plain_values_pass_unchanged(value: object, expected: object, strict: bool) -> None:
    result, reason = coerce_value(value, strict)
    assert reason is None
    assert result == expected
    assert type(result) is type(expected)
    if isinstance(expected, float):
        assert math.copysign(1, result) == math.copysign(1, expected)  # type: ignore[arg-type]
    assert_sendable(result)


class _Index:
    """Minimal __index__ object (like numpy integers)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n


def test_index_objects_become_int() -> None:
    for strict in (False, True):
        result, reason = coerce_value(_Index(42), strict)
        assert (result, reason, type(result)) == (42, None, int)


def test_index_objects_out_of_range_follow_int_rules() -> None:
    assert coerce_value(_Index(2**64), False) == (str(2**64), "int_out_of_range")
    with pytest.raises(ValueError, match="64-bit"):
        coerce_value(_Index(2**64), True)


# (input, non-strict result, reason, strict exception)
CONVERTED: list[tuple[object, object, str, type[Exception]]] = [
    (2**63, "9223372036854775808", "int_out_of_range", ValueError),
    (-(2**63) - 1, "-9223372036854775809", "int_out_of_range", ValueError),
    (10**30, "1" + "0" * 30, "int_out_of_range", ValueError),
    (MyInt(2**70), str(2**70), "int_out_of_range", ValueError),
    ("a" * 2001, "a" * MAX_VALUE_CHARS, "value_truncated", ValueError),
    ("€" * 5000, "€" * MAX_VALUE_CHARS, "value_truncated", ValueError),
    ("bad\ud800x", "bad\ufffdx", "invalid_unicode", ValueError),
    ("lone\udc00", "lone\ufffd", "invalid_unicode", ValueError),
    ("pair\ud83d\ude00", "pair\U0001f600", "invalid_unicode", ValueError),  # joined, not replaced
    (b"bytes", "bytes", "bytes_decoded", TypeError),
    (b"caf\xc3\xa9", "café", "bytes_decoded", TypeError),
    (b"bad\xff", "bad\ufffd", "bytes_decoded", TypeError),
    (bytearray(b"ba"), "ba", "bytes_decoded", TypeError),
    (memoryview(b"mv"), "mv", "bytes_decoded", TypeError),
    (b"y" * 3000, "y" * MAX_VALUE_CHARS, "bytes_decoded", TypeError),  # first reason reported
    (dt.datetime(2024, 1, 2, 3, 4, 5, 6), "2024-01-02T03:04:05.000006", "datetime_to_str", TypeError),
    (
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "2024-01-02T03:04:05+00:00",
        "datetime_to_str",
        TypeError,
    ),
    (dt.date(2024, 1, 2), "2024-01-02", "datetime_to_str", TypeError),
    (dt.time(13, 14), "13:14:00", "datetime_to_str", TypeError),
    (Color.RED, 1, "enum_value", TypeError),
    (Color.LABEL, "label", "enum_value", TypeError),
    (Color.PAIR, "PAIR", "enum_value", TypeError),  # .value unsendable -> .name
    (Color.NOTHING, "NOTHING", "enum_value", TypeError),
    (Color.OBJ, "OBJ", "enum_value", TypeError),  # .value would only be str(object) -> .name
    (Color.WHEN, "2024-01-02", "enum_value", TypeError),
    (Thing(), "thing!", "object_to_str", TypeError),
    (HugeStr(), "z" * MAX_VALUE_CHARS, "object_to_str", TypeError),
]


@pytest.mark.parametrize("value, expected, reason, strict_error", CONVERTED)
def test_converted_values(value: object, expected: object, reason: str, strict_error: type[Exception]) -> None:
    result, got_reason = coerce_value(value, False)
    assert got_reason == reason
    assert result == expected
    assert type(result) is type(expected)
    assert_sendable(result)
    with pytest.raises(strict_error) as info:
        coerce_value(value, True, key="temp")
    assert type(info.value) is strict_error
    assert "isstreamer:" in str(info.value) and "'temp'" in str(info.value)


# (input, reason, strict exception, message fragment)
SKIPPED: list[tuple[object, str, type[Exception], str]] = [
    (math.nan, "non_finite", ValueError, "NaN"),
    (math.inf, "non_finite", ValueError, "inf"),
    (-math.inf, "non_finite", ValueError, "-inf"),
    (MyFloat("nan"), "non_finite", ValueError, "NaN"),
    (decimal.Decimal("NaN"), "non_finite", ValueError, "NaN"),
    (decimal.Decimal("sNaN"), "non_finite", ValueError, "NaN"),
    (decimal.Decimal("-Infinity"), "non_finite", ValueError, "-inf"),
    (decimal.Decimal("1e400"), "non_finite", ValueError, "too large"),
    (fractions.Fraction(10**400), "non_finite", ValueError, "too large"),
    (10**2500, "int_out_of_range", ValueError, "longer than 2000"),
    (1 + 2j, "unsupported_type", TypeError, "complex"),
    (complex(math.nan, 0), "unsupported_type", TypeError, "complex"),
    (None, "none_value", TypeError, "None"),
    ({"a": 1}, "container_value", TypeError, "log_object"),
    ([1, 2], "container_value", TypeError, "log_object"),
    ((1, 2), "container_value", TypeError, "log_object"),
    ({1, 2}, "container_value", TypeError, "log_object"),
    (frozenset(), "container_value", TypeError, "log_object"),
    (collections.deque([1]), "container_value", TypeError, "log_object"),
    (collections.OrderedDict(a=1), "container_value", TypeError, "log_object"),
    (range(3), "container_value", TypeError, "log_object"),
    ({}.keys(), "container_value", TypeError, "log_object"),
    (iter([1]), "container_value", TypeError, "iterator"),
    ((i for i in range(2)), "container_value", TypeError, "iterator"),
]


@pytest.mark.parametrize("value, reason, strict_error, fragment", SKIPPED)
def test_skipped_values(value: object, reason: str, strict_error: type[Exception], fragment: str) -> None:
    with pytest.raises(Skip) as info:
        coerce_value(value, False, key="temp")
    assert info.value.reason == reason
    assert fragment in str(info.value) and "'temp'" in str(info.value)
    with pytest.raises(strict_error) as strict_info:
        coerce_value(value, True, key="temp")
    assert type(strict_info.value) is strict_error
    assert fragment in str(strict_info.value) and "'temp'" in str(strict_info.value)


def test_object_whose_str_fails_is_skipped() -> None:
    with pytest.raises(Skip, match=r"str\(\) failed \(RuntimeError\)") as info:
        coerce_value(BadStr(), False, key="temp")
    assert info.value.reason == "unsupported_type"
    with pytest.raises(TypeError, match="object of type BadStr"):
        coerce_value(BadStr(), True, key="temp")


def test_nan_message_matches_documented_example() -> None:
    with pytest.raises(ValueError) as info:
        coerce_value(float("nan"), True, key="temp")
    assert str(info.value) == ("isstreamer: value for key 'temp' is NaN; the events API accepts only finite numbers")


def test_messages_without_key() -> None:
    with pytest.raises(Skip, match=r"^isstreamer: value is None;"):
        coerce_value(None, False)


def test_skip_is_exception_with_reason_and_message() -> None:
    exc = Skip("none_value", "isstreamer: value is None")
    assert isinstance(exc, Exception)
    assert exc.reason == "none_value" and str(exc) == "isstreamer: value is None"
    assert str(Skip("bare")) == "bare"


def test_truncated_invalid_unicode_keeps_utf8_valid() -> None:
    value = "a" * 1999 + "\ud800" + "b" * 10
    result, reason = coerce_value(value, False)
    assert reason == "invalid_unicode"
    assert result == "a" * 1999 + "\ufffd"
    assert_sendable(result)


@given(
    st.one_of(
        st.text(),
        st.binary(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.decimals(),
        st.fractions(),
        st.datetimes(),
        st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
        st.text(min_size=1990, max_size=2100),
    )
)
def test_output_is_always_sendable(value: Any) -> None:
    try:
        result, _reason = coerce_value(value, False)
    except Skip:
        return
    assert_sendable(result)


# ---------------------------------------------------------------------------- numpy


def test_numpy_scalars() -> None:
    np = pytest.importorskip("numpy")
    cases = [
        (np.int64(7), 7, int),
        (np.int8(-3), -3, int),
        (np.uint32(9), 9, int),
        (np.float64(2.5), 2.5, float),
        (np.float32(1.5), 1.5, float),
        (np.float16(0.5), 0.5, float),
        (np.bool_(True), True, bool),
        (np.bool_(False), False, bool),
    ]
    for value, expected, typ in cases:
        for strict in (False, True):
            result, reason = coerce_value(value, strict)
            assert (result, reason, type(result)) == (expected, None, typ), value


def test_numpy_problem_values() -> None:
    np = pytest.importorskip("numpy")
    assert coerce_value(np.uint64(2**64 - 1), False) == (str(2**64 - 1), "int_out_of_range")
    with pytest.raises(ValueError):
        coerce_value(np.uint64(2**64 - 1), True)
    for value, reason, error in [
        (np.float64("nan"), "non_finite", ValueError),
        (np.float32("inf"), "non_finite", ValueError),
        (np.complex128(1j), "unsupported_type", TypeError),
        (np.array([1, 2]), "container_value", TypeError),
    ]:
        with pytest.raises(Skip) as info:
            coerce_value(value, False)
        assert info.value.reason == reason
        with pytest.raises(error):
            coerce_value(value, True)


# ============================================================================ keys


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("key", ["k", "temperature (°C)", " padded ", "k" * MAX_KEY_CHARS, "😀"])
def test_plain_keys(key: str, strict: bool) -> None:
    assert coerce_key(key, strict) == (key, None)


@pytest.mark.parametrize("strict", [False, True])
def test_str_subclass_key_is_exact_str(strict: bool) -> None:
    result, reason = coerce_key(MyStr("key"), strict)
    assert (result, reason, type(result)) == ("key", None, str)


# (input, non-strict result, reason, strict exception)
KEY_CONVERTED: list[tuple[object, str, str, type[Exception]]] = [
    (42, "42", "key_not_str", TypeError),
    (1.5, "1.5", "key_not_str", TypeError),
    (True, "True", "key_not_str", TypeError),
    (Thing(), "thing!", "key_not_str", TypeError),
    (b"raw", "raw", "key_not_str", TypeError),
    (b"\xffx", "\ufffdx", "key_not_str", TypeError),
    ("k" * 251, "k" * MAX_KEY_CHARS, "key_truncated", ValueError),
    ("é" * 1000, "é" * MAX_KEY_CHARS, "key_truncated", ValueError),
    ("bad\udc80", "bad\ufffd", "invalid_unicode", ValueError),
    ("\ud800" + "k" * 300, "\ufffd" + "k" * (MAX_KEY_CHARS - 1), "invalid_unicode", ValueError),
]


@pytest.mark.parametrize("key, expected, reason, strict_error", KEY_CONVERTED)
def test_converted_keys(key: object, expected: str, reason: str, strict_error: type[Exception]) -> None:
    result, got_reason = coerce_key(key, False)
    assert (result, got_reason, type(result)) == (expected, reason, str)
    assert len(result) <= MAX_KEY_CHARS
    with pytest.raises(strict_error) as info:
        coerce_key(key, True)
    assert type(info.value) is strict_error
    assert "isstreamer: key" in str(info.value)


@pytest.mark.parametrize(
    "key, strict_error",
    [(None, TypeError), ("", ValueError), ("   ", ValueError), ("\t\n", ValueError)],
)
def test_empty_keys_are_skipped(key: object, strict_error: type[Exception]) -> None:
    with pytest.raises(Skip) as info:
        coerce_key(key, False)
    assert info.value.reason == "empty_key"
    with pytest.raises(strict_error) as strict_info:
        coerce_key(key, True)
    assert type(strict_info.value) is strict_error
    assert "keys must be non-empty strings" in str(strict_info.value)


def test_long_key_message_states_length_and_limit() -> None:
    with pytest.raises(ValueError, match=r"is 300 characters long; .* at most 250"):
        coerce_key("k" * 300, True)


# ============================================================================ epochs

NOW = 1_700_000_000.25


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize(
    "epoch, expected",
    [
        (NOW, NOW),
        (1_700_000_000, 1_700_000_000.0),
        (1, 1.0),
        (99_999_999_999.0, 99_999_999_999.0),  # just under the ms threshold: still seconds
        (MyFloat(5.5), 5.5),
        (MyInt(6), 6.0),
        (decimal.Decimal("1700000000.5"), 1_700_000_000.5),
        (fractions.Fraction(3, 2), 1.5),
        (_Index(1_700_000_000), 1_700_000_000.0),
        (dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.timezone.utc), 1_700_000_000.0),
        (dt.datetime(2023, 11, 14, 17, 13, 20, tzinfo=dt.timezone(dt.timedelta(hours=-5))), 1_700_000_000.0),
    ],
)
def test_plain_epochs(epoch: object, expected: float, strict: bool) -> None:
    result, reason = coerce_epoch(epoch, strict)
    assert reason is None
    assert type(result) is float and result == expected


@pytest.mark.parametrize("strict", [False, True])
def test_none_epoch_means_now(strict: bool) -> None:
    assert coerce_epoch(None, strict) == (None, None)


@pytest.mark.parametrize(
    "epoch, expected, reason",
    [
        (1e11, 1e8, "epoch_ms"),
        (NOW * 1e3, NOW, "epoch_ms"),
        (1_700_000_000_250, NOW, "epoch_ms"),
        (1e14, 1e8, "epoch_us"),
        (1_700_000_000_250_000, NOW, "epoch_us"),
        (1e17, 1e8, "epoch_ns"),
        (1_700_000_000_250_000_000, NOW, "epoch_ns"),
        (1_700_000_000_123_456_789, 1_700_000_000_123_456_789 / 10**9, "epoch_ns"),
    ],
)
def test_scaled_epochs(epoch: float, expected: float, reason: str) -> None:
    result, got_reason = coerce_epoch(epoch, False)
    assert got_reason == reason
    assert type(result) is float and result == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError) as info:
        coerce_epoch(epoch, True, key="temp")
    assert type(info.value) is ValueError
    unit = {"epoch_ms": "milliseconds", "epoch_us": "microseconds", "epoch_ns": "nanoseconds"}
    assert f"looks like {unit[reason]}" in str(info.value) and "'temp'" in str(info.value)


def test_ns_integer_epoch_is_divided_exactly() -> None:
    ns = 1_700_000_000_123_456_789
    assert coerce_epoch(ns, False)[0] == ns / 10**9  # exact int division, correctly rounded


@pytest.mark.parametrize(
    "epoch, strict_error",
    [
        (math.nan, ValueError),
        (math.inf, ValueError),
        (-math.inf, ValueError),
        (0, ValueError),
        (0.0, ValueError),
        (-1, ValueError),
        (-1_700_000_000.0, ValueError),
        (decimal.Decimal("NaN"), ValueError),
        (decimal.Decimal("sNaN"), ValueError),
        (1e25, ValueError),  # beyond any plausible unit
        (10**400, ValueError),
        (dt.datetime(1960, 1, 1, tzinfo=dt.timezone.utc), ValueError),
        (True, TypeError),
        (False, TypeError),
        ("1700000000", TypeError),
        (b"1700000000", TypeError),
        (object(), TypeError),
        ([1_700_000_000], TypeError),
        (1 + 0j, TypeError),
        (dt.time(1, 2), TypeError),
        (dt.timedelta(seconds=5), TypeError),
    ],
)
def test_invalid_epochs_keep_now(epoch: object, strict_error: type[Exception]) -> None:
    assert coerce_epoch(epoch, False) == (None, "epoch_invalid")
    with pytest.raises(strict_error) as info:
        coerce_epoch(epoch, True, key="temp")
    assert type(info.value) is strict_error
    assert "isstreamer: epoch for key 'temp'" in str(info.value)


def test_naive_datetime_epoch_is_local_time(local_tz: None) -> None:
    naive = dt.datetime(2023, 11, 14, 17, 13, 20)  # 17:13:20 EST == 22:13:20 UTC
    for strict in (False, True):
        assert coerce_epoch(naive, strict) == (1_700_000_000.0, None)


def test_date_epoch_is_local_midnight(local_tz: None) -> None:
    # 2023-11-14 00:00 EST == 05:00 UTC
    assert coerce_epoch(dt.date(2023, 11, 14), False) == (1_699_938_000.0, "epoch_date")
    with pytest.raises(TypeError, match="date"):
        coerce_epoch(dt.date(2023, 11, 14), True)


def test_numpy_epochs() -> None:
    np = pytest.importorskip("numpy")
    assert coerce_epoch(np.int64(1_700_000_000), True) == (1_700_000_000.0, None)
    assert coerce_epoch(np.float64(NOW), True) == (NOW, None)
    assert coerce_epoch(np.float32(1.5), True) == (1.5, None)
    assert coerce_epoch(np.int64(1_700_000_000_250), False) == (NOW, "epoch_ms")
    assert coerce_epoch(np.bool_(True), False) == (None, "epoch_invalid")
    with pytest.raises(TypeError):
        coerce_epoch(np.bool_(True), True)


# ============================================================================ console


def test_console_line_format(local_tz: None) -> None:
    assert console_line("temp", 21.5, 1_700_000_000.0) == "2023-11-14 17:13:20.000000: temp 21.5"
    assert console_line("door", True, 1_700_000_000.123456) == ("2023-11-14 17:13:20.123456: door True")
    assert console_line("msg", "hello world", 1_700_000_000.5) == ("2023-11-14 17:13:20.500000: msg hello world")


def test_console_line_matches_2_0_0_expression() -> None:
    epoch = time.time()
    expected = "{time}: {key} {value}".format(
        time=dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S.%f"), key="k", value=3
    )
    assert console_line("k", 3, epoch) == expected
