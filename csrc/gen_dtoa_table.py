#!/usr/bin/env python3
"""Generate ``csrc/dtoa_table.h`` for ``csrc/dtoa.c`` (Schubfach shortest double -> text).

Regenerate with:

    python csrc/gen_dtoa_table.py > csrc/dtoa_table.h

Besides emitting the tables, the script *checks* the arithmetic that dtoa.c relies on and
refuses to emit anything if a check fails:

1. The integer approximations of floor(q*log10(2)), floor(q*log10(2) + log10(3/4)) and
   floor(e*log2(10)) are exact over every argument dtoa.c can pass.
2. The 128-bit power-of-ten table is precise enough for the "round to odd" product in
   dtoa.c to equal round-to-odd of the exact product, for every exponent and every
   (scaled) significand.  See ``check_precision`` for the argument; the search for the
   worst case is exhaustive over all significands (semiconvergents of a continued
   fraction), not sampled.

Layout of the main table: for k in [K_MIN, K_MAX], G[k - K_MIN] = {hi, lo} is the 128-bit
integer g(k) = floor(10^-k * 2^-r) + 1 with r chosen so that 2^127 <= 10^-k * 2^-r < 2^128,
i.e. r = floor(log2(10^-k)) - 127.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction

# binary64 parameters: v = c * 2^q, c < 2^53
Q_MIN = -1074  # subnormals and the smallest binade
Q_MAX = 2046 - 1075  # largest finite binade
C_MIN = 1 << 52


def floor_log10_pow2(q: int) -> int:
    """Exact floor(log10(2^q))."""
    x = Fraction(2) ** q
    k = math.floor(q * math.log10(2))  # may be off by one; fix exactly below
    while Fraction(10) ** k > x:
        k -= 1
    while Fraction(10) ** (k + 1) <= x:
        k += 1
    return k


def floor_log10_three_quarters_pow2(q: int) -> int:
    """Exact floor(log10(3/4 * 2^q))."""
    x = Fraction(3, 4) * Fraction(2) ** q
    k = math.floor(math.log10(0.75) + q * math.log10(2))
    while Fraction(10) ** k > x:
        k -= 1
    while Fraction(10) ** (k + 1) <= x:
        k += 1
    return k


def floor_log2_pow10(e: int) -> int:
    """Exact floor(log2(10^e))."""
    if e >= 0:
        return (10**e).bit_length() - 1
    p = 10 ** (-e)  # 10^e = 1/p, p not a power of two for e < 0
    return -p.bit_length()


def pick_mul_shift(exact, args, ratio: float, offset: float, max_shift: int = 24):
    """Find (mul, add, shift) with floor((a*mul + add) / 2^shift) == exact(a) for all args.

    Returns the smallest shift that works, so the products stay well inside int32."""
    for shift in range(10, max_shift + 1):
        mul = round(ratio * (1 << shift))
        for add in (
            math.floor(offset * (1 << shift)),
            math.floor(offset * (1 << shift)) + 1,
            math.floor(offset * (1 << shift)) - 1,
        ):
            if all((a * mul + add) >> shift == exact(a) for a in args):
                return mul, add, shift
    raise SystemExit("no multiplier/shift found")


def min_residue(a: int, m: int, n: int) -> int:
    """min over 1 <= x <= n of (a*x) mod m, by walking the best one-sided approximations
    (semiconvergents) of a/m: O(log m) steps."""
    a %= m
    if a == 0:
        return 0
    lx, lr = 1, a  # a*lx ==  lr (mod m): smallest residue seen so far
    hx, hs = 0, m  # a*hx == -hs (mod m): largest residue seen so far, as m - residue
    while True:
        if lr < hs:
            t = (hs - 1) // lr
            hx += t * lx
            hs -= t * lr
        elif hs < lr:
            t = (lr - 1) // hs
            lim = (n - lx) // hx
            if lim < t:
                return lr - lim * hs
            lx += t * hx
            lr -= t * hs
        else:
            return 0 if lx + hx <= n else lr


def self_test_min_residue() -> None:
    import random

    rnd = random.Random(12345)
    for _ in range(3000):
        m = rnd.randint(1, 200)
        a = rnd.randint(0, 3 * m)
        n = rnd.randint(1, 300)
        assert min_residue(a, m, n) == min((a * x) % m for x in range(1, n + 1))


def g_of(k: int) -> int:
    if k <= 0:
        p = 10 ** (-k)
        b = p.bit_length() - 1  # floor(log2(10^-k))
        if b <= 127:
            g = (p << (127 - b)) + 1
        else:
            g = (p >> (b - 127)) + 1
    else:
        p = 10**k
        b = p.bit_length()  # floor(log2(10^-k)) = -b
        g = (1 << (b + 127)) // p + 1
    assert (1 << 127) < g < (1 << 128), k
    return g


def check_precision(ks_for_q) -> None:
    """dtoa.c computes, for cb in {4c-2, 4c-1, 4c, 4c+2} (so 0 < cb < 2^55) and h in [1, 4],
    the exact 192-bit product P = g * cp with cp = cb << h < 2^59, and returns
    y1 | (F > cp) where y1 = floor(P / 2^128) and F = P mod 2^128.

    Write E = cb * 2^q * 10^-k (the exact scaled value) and g = 10^-k 2^-r + d, 0 < d <= 1.
    Then P / 2^128 = E + eps with eps = cp * d / 2^128, 0 < eps < 2^-69.
    If E is an integer: y1 = E and F = cp * d <= cp, so the result is E, exactly.
    Otherwise, with phi = frac(E): if 2^-69 <= phi < 1 - 2^-69 then y1 = floor(E) and
    F = 2^128 phi + cp d > cp, so the result is floor(E) | 1: round-to-odd of E, exactly.
    phi = (cb*N mod D)/D with E/cb = N/D in lowest terms; when D <= 2^64 both bounds are
    trivial, otherwise D > 2^55 so cb*N mod D is never 0 for cb < 2^55 and we bound the
    smallest and largest residue over all 1 <= cb <= 2^55 with the semiconvergent walk."""
    X = 1 << 55
    worst_lo = worst_hi = None
    for q, ks in ks_for_q.items():
        for k in ks:
            a = Fraction(2) ** q / Fraction(10) ** k
            n, d = a.numerator, a.denominator
            if d <= (1 << 64):
                continue
            lo = min_residue(n, d, X)  # smallest fractional part * D
            hi = min_residue(d - n % d, d, X)  # D - largest fractional part * D
            assert lo > 0 and hi > 0
            if (lo << 69) < d or (hi << 69) < d:
                raise SystemExit(f"precision check failed for q={q} k={k}")
            rl, rh = Fraction(lo, d), Fraction(hi, d)
            if worst_lo is None or rl < worst_lo:
                worst_lo = rl
            if worst_hi is None or rh < worst_hi:
                worst_hi = rh
    if worst_lo is not None:
        sys.stderr.write(
            "precision ok (need 2^-69): min frac(E) = 2^%.2f, "
            "max frac(E) = 1 - 2^%.2f\n" % (math.log2(worst_lo), math.log2(worst_hi))
        )


def main() -> None:
    self_test_min_residue()
    qs = range(Q_MIN, Q_MAX + 1)
    # k actually used per q (dtoa.c: regular spacing everywhere except c == 2^52, q > Q_MIN)
    ks_for_q = {q: {floor_log10_pow2(q)} | ({floor_log10_three_quarters_pow2(q)} if q > Q_MIN else set()) for q in qs}
    all_k = set().union(*ks_for_q.values())
    k_min, k_max = min(all_k), max(all_k)

    # 1. floor-log approximations, checked over a margin around the needed ranges
    wide_q = range(Q_MIN - 8, Q_MAX + 9)
    l10 = pick_mul_shift(floor_log10_pow2, wide_q, math.log10(2), 0.0)
    l10t = pick_mul_shift(floor_log10_three_quarters_pow2, wide_q, math.log10(2), math.log10(0.75))
    l2 = pick_mul_shift(floor_log2_pow10, range(-k_max - 8, -k_min + 9), math.log2(10), 0.0)
    for mul, add, _shift in (l10, l10t, l2):
        assert abs(mul) * 2100 + abs(add) < (1 << 31)

    # the left shift h = q + floor(log2(10^-k)) + 1 must stay in [1, 4] (cb << h < 2^60)
    hs = {q + floor_log2_pow10(-k) + 1 for q, ks in ks_for_q.items() for k in ks}
    assert min(hs) >= 1 and max(hs) <= 4, hs

    # 2. the table and its precision
    check_precision(ks_for_q)
    rows = []
    for k in range(k_min, k_max + 1):
        g = g_of(k)
        rows.append("    {0x%016xu, 0x%016xu}, /* %d */" % (g >> 64, g & ((1 << 64) - 1), k))

    # decimal_length() in dtoa.c: t = (bits * 1233) >> 12, n = t + (d >= 10^t), d < 10^17
    for d in [10**m + o for m in range(18) for o in (-1, 0, 1)] + [(1 << b) + o for b in range(57) for o in (-1, 0)]:
        if 0 < d < 10**17:
            t = (d.bit_length() * 1233) >> 12
            assert t <= 17 and t + (d >= 10**t) == len(str(d)), d

    # strip_zeros() in dtoa.c: m divisible by 10^j iff rotr64(m * 5^-j mod 2^64, j) <= B_j,
    # and then that value is m / 10^j (exact division by an odd number is a multiplication)
    inv5 = {j: pow(5**j, -1, 1 << 64) for j in (1, 2, 4, 8)}
    bound = {j: ((1 << 64) - 1) // 10**j for j in (1, 2, 4, 8)}

    def rotr_div(m: int, j: int):
        x = (m * inv5[j]) & ((1 << 64) - 1)
        x = ((x >> j) | (x << (64 - j))) & ((1 << 64) - 1)
        return x if x <= bound[j] else None

    import random

    rnd = random.Random(99)
    for _ in range(20000):
        j = rnd.choice((1, 2, 4, 8))
        m = rnd.randrange(1, 10**16)
        if rnd.random() < 0.5:
            m = m // 10**j * 10**j or 10**j
        assert rotr_div(m, j) == (m // 10**j if m % 10**j == 0 else None), (m, j)

    pairs = "".join("%02d" % i for i in range(100))
    out = []
    out.append("/* Generated by csrc/gen_dtoa_table.py -- do not edit.")
    out.append(" * Regenerate: python csrc/gen_dtoa_table.py > csrc/dtoa_table.h */")
    out.append("#ifndef ISS_DTOA_TABLE_H")
    out.append("#define ISS_DTOA_TABLE_H")
    out.append("")
    out.append("#include <stdint.h>")
    out.append("")
    out.append("/* floor(q*log10(2)) == (q*M + A) >> S, exact for q in [%d, %d] */" % (wide_q.start, wide_q.stop - 1))
    out.append("#define DTOA_L10_MUL %d" % l10[0])
    out.append("#define DTOA_L10_ADD %d" % l10[1])
    out.append("#define DTOA_L10_SHIFT %d" % l10[2])
    out.append("/* floor(q*log10(2) + log10(3/4)) == (q*M + A) >> S, same range */")
    out.append("#define DTOA_L10TQ_MUL %d" % l10t[0])
    out.append("#define DTOA_L10TQ_ADD %d" % l10t[1])
    out.append("#define DTOA_L10TQ_SHIFT %d" % l10t[2])
    out.append("/* floor(e*log2(10)) == (e*M + A) >> S, exact for e in [%d, %d] */" % (-k_max - 8, -k_min + 8))
    out.append("#define DTOA_L2_MUL %d" % l2[0])
    out.append("#define DTOA_L2_ADD %d" % l2[1])
    out.append("#define DTOA_L2_SHIFT %d" % l2[2])
    out.append("")
    out.append("#define DTOA_K_MIN (%d)" % k_min)
    out.append("#define DTOA_K_MAX %d" % k_max)
    out.append("")
    out.append("/* g(k) = floor(10^-k * 2^-r) + 1, 2^127 < g(k) < 2^128, as {high, low} */")
    out.append("static const uint64_t dtoa_g[%d][2] = {" % (k_max - k_min + 1))
    out.extend(rows)
    out.append("};")
    out.append("")
    out.append("/* 5^-j mod 2^64 and floor((2^64 - 1) / 10^j), for exact division by 10^j */")
    for j in (1, 2, 4, 8):
        out.append("#define DTOA_INV5P%d UINT64_C(0x%016x)" % (j, inv5[j]))
        out.append("#define DTOA_MAXQ10P%d UINT64_C(%d)" % (j, bound[j]))
    out.append("")
    out.append("static const uint64_t dtoa_pow10[18] = {")
    for i in range(0, 18, 3):
        out.append("    " + " ".join("%du," % (10**j) for j in range(i, i + 3)))
    out.append("};")
    out.append("")
    out.append("static const char dtoa_pairs[201] =")
    for i in range(0, 200, 40):
        out.append('    "%s"' % pairs[i : i + 40])
    out[-1] += ";"
    out.append("")
    out.append("#endif")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
