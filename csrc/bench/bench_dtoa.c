/* Micro-benchmark: iss_dtoa (Schubfach) vs the previous snprintf("%.15g".."%.17g") + strtod
 * round-trip loop of iss_format_double.  Not part of the build: it lives in csrc/bench/ so
 * that globs of the library sources (the fuzz build) skip its main().  Run by hand from the
 * repository root:
 *
 *   gcc -std=c11 -O2 -Icsrc csrc/bench/bench_dtoa.c csrc/dtoa.c -lm -o /tmp/bench_dtoa && /tmp/bench_dtoa
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dtoa.h"

#define N 100000
#define ROUNDS 15

/* The old iss_format_double, verbatim apart from put_i64 -> snprintf("%lld"). */
static size_t old_format(double v, char *out, size_t cap)
{
    char buf[40];
    int n = 0;
    if (!isfinite(v) || out == NULL)
        return 0;
    if (v == 0.0) {
        n = snprintf(buf, sizeof buf, signbit(v) ? "-0.0" : "0.0");
    } else if (fabs(v) < 9007199254740992.0 && v == (double)(int64_t)v) {
        n = snprintf(buf, sizeof buf, "%lld.0", (long long)v);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            n = snprintf(buf, sizeof buf, "%.*g", prec, v);
            if (n <= 0 || (size_t)n >= sizeof buf)
                return 0;
            if (prec == 17 || strtod(buf, NULL) == v)
                break;
        }
        int plain = 1;
        for (int i = 0; i < n; i++)
            if (buf[i] == '.' || buf[i] == 'e' || buf[i] == 'E')
                plain = 0;
        if (plain && (size_t)n + 2 < sizeof buf) {
            buf[n++] = '.';
            buf[n++] = '0';
        }
    }
    if (n <= 0 || (size_t)n > cap)
        return 0;
    memcpy(out, buf, (size_t)n);
    return (size_t)n;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rng(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* CPU time: robust on a busy machine */
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double bench(size_t (*fn)(double, char *, size_t), const double *vals, size_t *sink)
{
    char out[64];
    double best = 1e300;
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now_ns();
        size_t total = 0;
        for (int i = 0; i < N; i++)
            total += fn(vals[i], out, sizeof out);
        double dt = (now_ns() - t0) / N;
        *sink += total + (size_t)out[0];
        if (dt < best)
            best = dt;
    }
    return best;
}

int main(void)
{
    static double sets[4][N];
    const char *names[4] = {"random bit patterns", "telemetry-like (21.5, 0.37, 1013.25)",
                            "17-digit values in [0,1)", "integers"};
    for (int i = 0; i < N; i++) {
        double v;
        do {
            uint64_t b = rng();
            memcpy(&v, &b, sizeof v);
        } while (!isfinite(v));
        sets[0][i] = v;
        /* a few significant digits: k / 10^j */
        sets[1][i] = (double)(rng() % 100000u) / (double)(uint64_t[]){1, 10, 100, 1000}[rng() % 4];
        sets[2][i] = (double)(rng() >> 11) / 9007199254740992.0;
        sets[3][i] = (double)(int64_t)(rng() % 1000000u);
    }
    /* sanity: both agree on everything that the old one printed in shortest form */
    size_t sink = 0;
    printf("%-40s %12s %12s %8s\n", "input set", "old ns/call", "new ns/call", "speedup");
    for (int s = 0; s < 4; s++) {
        double a = bench(old_format, sets[s], &sink);
        double b = bench(iss_dtoa, sets[s], &sink);
        printf("%-40s %12.1f %12.1f %7.1fx\n", names[s], a, b, a / b);
    }
    return sink == 42 ? 1 : 0;
}
