"""csrc/dtoa.c (iss_dtoa, Schubfach): byte-for-byte equal to Python's repr(float)."""

from __future__ import annotations

import json
import math
import os
import random
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isstreamer.ring import native_available

pytestmark = pytest.mark.skipif(not native_available(), reason="needs the C extension")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def native():
    from isstreamer._native import ffi, lib

    buf = ffi.new("char[64]")

    def dtoa(v: float) -> str:
        n = lib.iss_dtoa(v, buf, 64)
        return ffi.unpack(buf, n).decode("ascii")

    def fmt(v: float) -> str:
        n = lib.iss_format_double(v, buf, 40)
        return ffi.unpack(buf, n).decode("ascii")

    return ffi, lib, dtoa, fmt


def _f(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def _bits(v: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def _edge_cases() -> list:
    vals = [
        0.0,
        -0.0,
        5e-324,
        -5e-324,
        1e-323,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        -1.7976931348623157e308,
        0.1,
        0.2,
        0.3,
        0.1 + 0.2,
        1 / 3,
        2 / 3,
        21.5,
        3.0,
        -3.0,
        1.5,
        123456.7,
        1e-300,
        1.5e300,
        123456789012345.0,
        2.0**53 - 1,
        2.0**53,
        2.0**53 + 2,
        9007199254740993.0,
        2.0**63,
        2.0**64,
        1e15,
        1e16,
        1e17,
        9999999999999998.0,
        9999999999999999.0,
        999999999999999.9,
        1e15 + 0.5,
        1e16 - 2,
        1e-4,
        1e-5,
        0.00011,
        0.000099,
        1e21,
        1e22,
        1e23,
        5e-310,
        4.9406564584124654e-324,
        1.2345678901234567,
        0.30000000000000004,
        2.718281828459045,
        math.pi,
        math.e,
        1.7976931348623157e308 / 3,
        8.41e21,
        5.684341886080802e-14,
        4.35679e-10,
        1.7800590868057611e-307,
        2.0019531250000004,
        9.007199254740993e15,
        4503599627370497.0,
    ]
    smallest_normal = 2.2250738585072014e-308
    for base in (smallest_normal, 1.0, 2.0**52, 2.0**53, 1e16, 1e-4, 1e22):
        b = _bits(base)
        vals += [_f(b + i) for i in range(-3, 4)]
    vals += [_f(b) for b in range(1, 200)]  # smallest subnormals
    vals += [_f((1 << 52) - i) for i in range(1, 50)]  # largest subnormals
    vals += [_f(0x7FEFFFFFFFFFFFFF - i) for i in range(50)]  # near DBL_MAX
    for e in range(-1074, 1024):
        vals.append(2.0**e)
        vals.append(_f(_bits(2.0**e) + 1) if e > -1074 else 1e-323)
        if e > -1074:
            vals.append(_f(_bits(2.0**e) - 1))
    for e in range(-324, 309):
        for m in ("1", "2", "5", "9.999999999999999", "1.7976931348623157", "4.9"):
            v = float(f"{m}e{e}")
            if math.isfinite(v):
                vals.append(v)
    for n in range(1, 18):  # 17-digit and shorter values
        vals.append(float("0." + "9" * n))
        vals.append(float("1." + "0" * (n - 1) + "1"))
        vals.append(float("1" * n))
    return vals


def test_edge_cases(native):
    _, _, dtoa, fmt = native
    for v in _edge_cases():
        for x in (v, -v):
            assert dtoa(x) == repr(x), x.hex()
            assert fmt(x) == repr(x), x.hex()


def test_random_bit_patterns(native):
    _, _, dtoa, _ = native
    rnd = random.Random(20240601)
    done = 0
    while done < 200_000:
        v = _f(rnd.getrandbits(64))
        if not math.isfinite(v):
            continue
        r = repr(v)
        assert dtoa(v) == r, v.hex()
        done += 1


def test_short_decimals(native):
    """Typical telemetry: values with few significant digits across magnitudes."""
    _, _, dtoa, _ = native
    rnd = random.Random(7)
    for _ in range(50_000):
        digits = rnd.randint(1, 17)
        v = float(f"{rnd.randrange(10**digits)}e{rnd.randint(-30, 30)}")
        assert dtoa(v) == repr(v), v.hex()


@settings(max_examples=3000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_hypothesis_matches_repr(native, v):
    _, _, dtoa, fmt = native
    assert dtoa(v) == repr(v)
    assert fmt(v) == repr(v)


def test_output_is_json_that_round_trips(native):
    _, _, dtoa, _ = native
    rnd = random.Random(3)
    for _ in range(2000):
        v = _f(rnd.getrandbits(64))
        if math.isfinite(v):
            assert json.loads(dtoa(v)) == v or (v == 0 and json.loads(dtoa(v)) == 0)


def test_non_finite_and_bounds(native):
    ffi, lib, dtoa, _ = native
    buf = ffi.new("char[64]")
    for v in (math.inf, -math.inf, math.nan):
        assert lib.iss_dtoa(v, buf, 64) == 0
        assert lib.iss_format_double(v, buf, 40) == 0
    assert lib.iss_dtoa(1.5, ffi.NULL, 64) == 0
    for v in (-2.2250738585072014e-308, 0.1, -0.0, 1e16, 123456.7, 5e-324):
        text = repr(v).encode()
        n = len(text)
        small = ffi.new("char[]", n + 1)
        small[n] = b"#"
        assert lib.iss_dtoa(v, small, n) == n
        assert ffi.unpack(small, n) == text and small[n] == b"#"  # nothing past cap
        small[0] = b"@"
        assert lib.iss_dtoa(v, small, n - 1) == 0
        assert small[0] == b"@"  # nothing written
        assert lib.iss_dtoa(v, small, 0) == 0
    assert len(repr(-2.2250738585072014e-308)) == 24  # ISS_DTOA_MAX_LEN


def test_generated_table_is_current():
    """csrc/dtoa_table.h is exactly what csrc/gen_dtoa_table.py prints (which also re-proves
    the precision of the table)."""
    gen = os.path.join(ROOT, "csrc", "gen_dtoa_table.py")
    out = subprocess.run([sys.executable, gen], check=True, capture_output=True, text=True)
    with open(os.path.join(ROOT, "csrc", "dtoa_table.h"), encoding="ascii") as f:
        assert out.stdout == f.read()
