/* Shortest round-trip double -> decimal text, formatted like Python's repr(float).
 *
 * Algorithm: Schubfach (R. Giulietti, "The Schubfach way to render doubles", 2020/2021),
 * written from the paper.  For finite v = c * 2^q > 0 the rounding interval R of v (all
 * reals that round to v) is [v - 2^(q-1), v + 2^(q-1)], or [v - 2^(q-2), v + 2^(q-1)] when
 * c is the smallest significand of a binade above the first; its ends belong to R iff c is
 * even.  Pick k = floor(log10(width of R)) so that R holds at least one multiple of 10^k and
 * at most one multiple of 10^(k+1).  With s = floor(v / 10^k):
 *   - if a multiple of 10^(k+1) (10*floor(s/10) or that + 10) lies in R, it is the unique
 *     shortest decimal in R;
 *   - otherwise the answer is s*10^k or (s+1)*10^k: whichever lies in R, and if both do,
 *     the one closer to v, the even one on a tie.
 * That is exactly the decimal Python's repr() prints (David Gay's dtoa mode 0).
 * All of v/10^k and the interval ends are scaled by 4 (two fraction bits) and computed as
 * "round to odd" of an exact product with a 128-bit approximation g(k) of 10^-k: rounding to
 * odd keeps floor(x/4) and every comparison of x against an even integer exact.
 * gen_dtoa_table.py generates g(k) and proves (exhaustively over all significands, via
 * continued fractions) that the computed round-to-odd equals that of the exact value.
 *
 * C11, no undefined behaviour, no floating-point arithmetic, no __int128 required. */
#include "dtoa.h"

#include <stdint.h>
#include <string.h>

#include "dtoa_table.h"

#define C_MIN ((uint64_t)1 << 52)

/* 64x64 -> 128 bit product: returns the low half, stores the high half. */
static inline uint64_t mul_64x64(uint64_t a, uint64_t b, uint64_t *hi)
{
#if defined(__SIZEOF_INT128__) && !defined(ISS_DTOA_NO_INT128)
    __extension__ typedef unsigned __int128 dtoa_u128;
    dtoa_u128 p = (dtoa_u128)a * b;
    *hi = (uint64_t)(p >> 64);
    return (uint64_t)p;
#else
    uint64_t a0 = (uint32_t)a, a1 = a >> 32, b0 = (uint32_t)b, b1 = b >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (uint32_t)p01 + (uint32_t)p10; /* < 3 * 2^32 */
    *hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
    return (mid << 32) | (uint32_t)p00;
#endif
}

/* Round-to-odd of cp * g / 2^128 where g = g[0]:g[1] (see gen_dtoa_table.py): the exact
 * 192-bit product P is (y1, F) with y1 = P >> 128, F = P mod 2^128.  Since g exceeds the
 * exact 10^-k * 2^-r by at most 1, F <= cp means "the exact value is the integer y1". */
static inline uint64_t round_to_odd(const uint64_t g[2], uint64_t cp)
{
    uint64_t x_hi, y_hi;
    uint64_t x_lo = mul_64x64(g[1], cp, &x_hi);
    uint64_t y_lo = mul_64x64(g[0], cp, &y_hi);
    uint64_t mid = y_lo + x_hi; /* F = mid:x_lo */
    y_hi += (uint64_t)(mid < x_hi);
    return y_hi | (uint64_t)(mid != 0 || x_lo > cp);
}

/* floor((a * mul + add) / 2^shift) for a in the range checked by the generator; biased so
 * the shifted value is never negative (right shift of negatives is implementation-defined). */
#define DTOA_FLOOR_BIAS 4096
static inline int floor_mul_shift(int a, int32_t mul, int32_t add, unsigned shift)
{
    int64_t x = (int64_t)a * mul + add + ((int64_t)DTOA_FLOOR_BIAS << shift);
    return (int)((uint64_t)x >> shift) - DTOA_FLOOR_BIAS;
}

static inline void put_pair(char *p, uint32_t x) /* x < 100 */
{
    memcpy(p, dtoa_pairs + 2u * x, 2);
}

/* Exactly 8 digits of x < 10^8 at p[0..7]; two independent halves for a short dependency
 * chain. */
static inline void put_8(char *p, uint32_t x)
{
    const uint32_t hi = x / 10000u, lo = x - hi * 10000u;
    const uint32_t h1 = hi / 100u, l1 = lo / 100u;
    put_pair(p, h1);
    put_pair(p + 2, hi - h1 * 100u);
    put_pair(p + 4, l1);
    put_pair(p + 6, lo - l1 * 100u);
}

/* Writes the decimal digits of d (0 < d < 10^17) ending just before end; returns start. */
static inline char *write_digits(char *end, uint64_t d)
{
    uint32_t x;
    if (d >= 100000000u) {
        uint64_t hi = d / 100000000u;
        end -= 8;
        put_8(end, (uint32_t)(d - hi * 100000000u));
        if (hi >= 100000000u) {
            const uint64_t top = hi / 100000000u; /* d < 10^17: a single digit */
            end -= 8;
            put_8(end, (uint32_t)(hi - top * 100000000u));
            hi = top;
        }
        x = (uint32_t)hi;
    } else {
        x = (uint32_t)d;
    }
    if (x >= 10000u) {
        const uint32_t hi = x / 10000u, lo = x - hi * 10000u, l1 = lo / 100u;
        end -= 4;
        put_pair(end, l1);
        put_pair(end + 2, lo - l1 * 100u);
        x = hi;
    }
    if (x >= 100u) {
        const uint32_t hi = x / 100u;
        end -= 2;
        put_pair(end, x - hi * 100u);
        x = hi;
    }
    if (x >= 10u) {
        end -= 2;
        put_pair(end, x);
    } else {
        *--end = (char)('0' + x);
    }
    return end;
}

/* If 10^j divides *m, divide it and return 1 (Granlund-Montgomery: for odd 5^j, m * 5^-j
 * mod 2^64 is m / 5^j when exact and large otherwise; rotating right by j also demands j
 * low zero bits).  The rotation count j is 1, 2, 4 or 8, never 0 or 64. */
static inline unsigned div_exact_pow10(uint64_t *m, uint64_t inv5j, unsigned j, uint64_t maxq)
{
    uint64_t x = *m * inv5j;
    x = (x >> j) | (x << (64u - j));
    if (x > maxq)
        return 0;
    *m = x;
    return 1;
}

/* m * 10^*e with the trailing decimal zeros of m (0 < m < 10^16) moved into *e. */
static inline uint64_t strip_zeros(uint64_t m, int *e)
{
    /* at most 15 zeros: remove 8, 4, 2, 1 of them as present */
    unsigned z = 8u * div_exact_pow10(&m, DTOA_INV5P8, 8, DTOA_MAXQ10P8);
    z += 4u * div_exact_pow10(&m, DTOA_INV5P4, 4, DTOA_MAXQ10P4);
    z += 2u * div_exact_pow10(&m, DTOA_INV5P2, 2, DTOA_MAXQ10P2);
    z += div_exact_pow10(&m, DTOA_INV5P1, 1, DTOA_MAXQ10P1);
    *e += (int)z;
    return m;
}

/* Shortest decimal d * 10^*e10 in the rounding interval of c * 2^q (c > 0). */
static uint64_t schubfach(uint64_t c, int q, int irregular, int *e10)
{
    const uint64_t cb = c << 2, cbr = cb + 2;
    uint64_t cbl;
    int k;
    if (!irregular) {
        cbl = cb - 2;
        k = floor_mul_shift(q, DTOA_L10_MUL, DTOA_L10_ADD, DTOA_L10_SHIFT);
    } else {
        cbl = cb - 1;
        k = floor_mul_shift(q, DTOA_L10TQ_MUL, DTOA_L10TQ_ADD, DTOA_L10TQ_SHIFT);
    }
    /* h in [1, 4] so that cb << h < 2^59 and the product lands on the 2^128 boundary */
    const unsigned h = (unsigned)(q + floor_mul_shift(-k, DTOA_L2_MUL, DTOA_L2_ADD,
                                                      DTOA_L2_SHIFT) + 1);
    const uint64_t *g = dtoa_g[k - DTOA_K_MIN];
    const uint64_t vb = round_to_odd(g, cb << h);   /* 4 v   / 10^k, rounded to odd */
    const uint64_t vbl = round_to_odd(g, cbl << h); /* 4 low / 10^k */
    const uint64_t vbr = round_to_odd(g, cbr << h); /* 4 up  / 10^k */
    /* 4*d*10^k lies in R iff lo <= 4*d <= hi (ends excluded when c is odd) */
    const uint64_t odd = c & 1u;
    const uint64_t lo = vbl + odd, hi = vbr - odd;
    const uint64_t s = vb >> 2;

    const uint64_t s10 = s / 10u;
    const uint64_t sp = s10 * 10u, tp = sp + 10u;
    const int sp_in = 4u * sp >= lo, tp_in = 4u * tp <= hi;
    if (sp_in != tp_in) {
        /* the only multiple of 10^(k+1) in R: shortest; it may have more trailing zeros */
        *e10 = k + 1;
        return strip_zeros(s10 + (uint64_t)tp_in, e10);
    }
    /* no multiple of 10^(k+1) in R, so neither s nor t below ends in a zero */
    *e10 = k;
    /* s*10^k if it alone is in R, (s+1)*10^k if it alone is; if both are, the closer, and
     * the even one on a tie (at least one is in R: R is at least 10^k wide) */
    const uint64_t s_in = 4u * s >= lo, t_in = 4u * (s + 1u) <= hi;
    const uint64_t mid = 4u * s + 2u;
    const uint64_t closer_up = (uint64_t)(vb > mid) | ((uint64_t)(vb == mid) & s);
    return s + ((s_in ^ 1u) | (t_in & closer_up & 1u));
}

/* Copies len <= 16 bytes with fixed-size moves only (no library call); every byte is loaded
 * before any is stored, so dst and src may overlap. */
static inline void copy_upto16(char *dst, const char *src, size_t len)
{
    if (len >= 8) {
        uint64_t a, b;
        memcpy(&a, src, 8);
        memcpy(&b, src + len - 8, 8);
        memcpy(dst, &a, 8);
        memcpy(dst + len - 8, &b, 8);
    } else if (len >= 4) {
        uint32_t a, b;
        memcpy(&a, src, 4);
        memcpy(&b, src + len - 4, 4);
        memcpy(dst, &a, 4);
        memcpy(dst + len - 4, &b, 4);
    } else if (len >= 2) {
        uint16_t a, b;
        memcpy(&a, src, 2);
        memcpy(&b, src + len - 2, 2);
        memcpy(dst, &a, 2);
        memcpy(dst + len - 2, &b, 2);
    } else if (len == 1) {
        dst[0] = src[0];
    }
}

/* Number of decimal digits of d, 0 < d < 10^17. */
static inline size_t decimal_length(uint64_t d)
{
#if defined(__GNUC__) || defined(__clang__)
    /* t = floor(log10(2^bits)) up to one off, then fix it with one comparison */
    const unsigned bits = 64u - (unsigned)__builtin_clzll(d);
    const unsigned t = (bits * 1233u) >> 12;
    return t + (size_t)(d >= dtoa_pow10[t]);
#else
    size_t n = 1;
    while (n < 17 && d >= dtoa_pow10[n])
        n++;
    return n;
#endif
}

/* Python repr() text of d * 10^e10 (0 < d < 10^17) at p; returns its length (<= 23).
 * Writes exactly the returned number of bytes. */
static size_t format_repr(char *p, uint64_t d, int e10)
{
    static const char zeros[] = "0000000000000000";
    const size_t nd = decimal_length(d);
    /* value = 0.DIGITS * 10^decpt; repr uses the exponent form unless -4 < decpt <= 16 */
    const int decpt = (int)nd + e10;
    enum { SCI, SMALL, MIXED, WHOLE } form;
    size_t at; /* where the digits go */
    if (decpt > 16 || decpt <= -4) {
        form = SCI; /* d.ddde+XX: the first digit moves left over the '.' afterwards */
        at = 1;
    } else if (decpt <= 0) {
        form = SMALL; /* 0.000ddd */
        at = 2 + (size_t)-decpt;
    } else if ((size_t)decpt < nd) {
        form = MIXED; /* ddd.ddd: the integer part moves left afterwards */
        at = 1;
    } else {
        form = WHOLE; /* ddd000.0 */
        at = 0;
    }
    write_digits(p + at + nd, d);
    size_t n;
    if (form == SCI) {
        p[0] = p[1];
        n = 1;
        if (nd > 1) {
            p[1] = '.';
            n = nd + 1;
        }
        const int x = decpt - 1;
        p[n++] = 'e';
        p[n++] = x < 0 ? '-' : '+';
        unsigned ux = (unsigned)(x < 0 ? -x : x);
        if (ux >= 100u) {
            p[n++] = (char)('0' + ux / 100u);
            ux %= 100u;
        }
        put_pair(p + n, ux);
        return n + 2;
    }
    if (form == SMALL) {
        p[0] = '0';
        p[1] = '.';
        for (size_t i = 2; i < at; i++) /* at most 3 zeros */
            p[i] = '0';
        return at + nd;
    }
    if (form == MIXED) {
        copy_upto16(p, p + 1, (size_t)decpt);
        p[decpt] = '.';
        return nd + 1;
    }
    n = (size_t)decpt; /* WHOLE */
    copy_upto16(p + nd, zeros, n - nd);
    p[n] = '.';
    p[n + 1] = '0';
    return n + 2;
}

size_t iss_dtoa(double v, char *out, size_t cap)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    const unsigned bexp = (unsigned)(bits >> 52) & 0x7ffu;
    const uint64_t frac = bits & (C_MIN - 1u);
    if (bexp == 0x7ffu || out == NULL)
        return 0;

    char buf[32];
    char *p = cap >= sizeof buf ? out : buf; /* the longest text has ISS_DTOA_MAX_LEN bytes */
    size_t n = 0;
    if (bits >> 63)
        p[n++] = '-';
    if (bexp == 0 && frac == 0) {
        memcpy(p + n, "0.0", 3);
        n += 3;
    } else {
        uint64_t c, d;
        int q, e10;
        if (bexp != 0) {
            c = frac | C_MIN;
            q = (int)bexp - 1075;
        } else {
            c = frac;
            q = -1074;
        }
        if (q <= 0 && q >= -52 && (c & (((uint64_t)1 << -q) - 1u)) == 0) {
            d = c >> -q; /* integer below 2^53: its digits are the shortest (zeros kept) */
            e10 = 0;
        } else {
            d = schubfach(c, q, frac == 0 && bexp > 1, &e10);
        }
        n += format_repr(p + n, d, e10);
    }
    if (p == buf) {
        if (n > cap)
            return 0;
        memcpy(out, buf, n);
    }
    return n;
}
