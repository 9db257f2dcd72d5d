/*
 * Self-checking test of csrc/ for every target we build for, natively or under qemu-user
 * (.ci/arm.sh runs it on x86-64, aarch64 and armv7 / armhf):
 *
 *   native_check                 ring + encoder + dtoa checks; prints "native_check: ok ..."
 *   native_check --dtoa-dump N   N lines "<16 hex digits of the double's bits> <iss_dtoa text>"
 *                                for pseudo-random doubles: .ci/arm.sh compares them with
 *                                Python's repr() on the host (the oracle iss_dtoa copies)
 *
 * The checks: exact JSON bytes of iss_encode_batch for known events (numbers, strings with
 * escapes and invalid UTF-8, epochs, booleans, refusals); batches split by bucket; a wrapping
 * segment drained 100,000 events in order; a forked producer process logging through interned
 * keys into a MAP_SHARED mapping while this process drains it concurrently (the protocol the
 * Python sender uses); iss_add64 from two processes at once (LDREXD/STREXD on armv7); iss_dtoa
 * on a table of Python repr() strings and a strtod round trip on a million values.
 * Any failure prints the check and exits 1.
 *
 *   gcc -std=c11 -O2 -Icsrc csrc/test/native_check.c csrc/dtoa.c csrc/encode.c csrc/ring.c -lm
 */
#define _GNU_SOURCE
#include "../dtoa.h"
#include "../isstreamer.h"

#include <inttypes.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t child_pid; /* the forked producer of check_two_processes, killed on failure */

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "native_check: FAIL: %s (line %d)\n", #cond, __LINE__);              \
            if (child_pid > 0)                                                                    \
                kill(child_pid, SIGKILL);                                                         \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

#define OUT_CAP (1u << 20)
static char out[OUT_CAP];

static uint64_t rng_state = UINT64_C(0x9E3779B97F4A7C15);
static uint64_t rng(void) /* xorshift64*: the same sequence on every target */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}

static uint8_t *map_ring(uint32_t nsegs, uint32_t ds, uint32_t nbuckets, uint64_t *size)
{
    *size = iss_layout_size(nsegs, ds, nbuckets);
    void *m = mmap(NULL, (size_t)*size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED);
    CHECK(iss_ring_init(m, *size, nsegs, ds, nbuckets) == ISS_OK);
    return m;
}

static iss_seg_hdr *seg_of(iss_producer *p) { return p->seg; }

/* Encode everything published in segment `seg` from its tail; release it; return the JSON. */
static const char *drain(uint8_t *base, uint64_t size, uint32_t seg, iss_seg_hdr *sh,
                         iss_batch *info)
{
    uint64_t tail = __atomic_load_n(&sh->tail, __ATOMIC_ACQUIRE);
    int64_t n = iss_encode_batch(base, size, seg, tail, 100000, out, OUT_CAP - 1, info);
    CHECK(n >= 2);
    CHECK(!info->corrupt);
    out[n] = '\0';
    __atomic_store_n(&sh->tail, info->end, __ATOMIC_RELEASE);
    return out;
}

/* 1. Known events -> the exact bytes the events API receives. */
static void check_exact_json(void)
{
    uint64_t size;
    uint8_t *base = map_ring(2, ISS_SEG_DATA_MIN, 4, &size);
    iss_producer p;
    memset(&p, 0, sizeof p);
    CHECK(iss_producer_attach(&p, base, size, 0) == ISS_OK);
    CHECK(iss_put_f64(&p, "temp", 4, 21.5, 1764270000.5) == ISS_OK);
    CHECK(iss_put_i64(&p, "count", 5, INT64_MIN, 1764270000.25) == ISS_OK);
    CHECK(iss_put_bool(&p, "ok", 2, 1, 0.0) == ISS_OK); /* epoch <= 0: none sent */
    CHECK(iss_put_bool(&p, "no", 2, 0, 1764270001.0) == ISS_OK);
    const char s[] = "h\xc3\xa9llo \"q\"\\\n\x01";
    CHECK(iss_put_str(&p, "msg", 3, s, sizeof s - 1, 1764270002.000001) == ISS_OK);
    CHECK(iss_put_str(&p, "k\xff", 2, "\xe2\x82", 2, 1764270003.5) == ISS_OK); /* bad UTF-8 */
    CHECK(iss_put_f64(&p, "f", 1, 0.1, 1.5) == ISS_OK);
    CHECK(iss_put_f64(&p, "f", 1, 1e16, 1.5) == ISS_OK);
    CHECK(iss_put_f64(&p, "f", 1, -0.0, 1.5) == ISS_OK);
    CHECK(iss_put_f64(&p, "f", 1, 5e-324, 1.5) == ISS_OK);
    CHECK(iss_put_f64(&p, "f", 1, 3.0, 1.5) == ISS_OK);
    /* refused, nothing written */
    CHECK(iss_put_f64(&p, "f", 1, NAN, 1.5) == ISS_EINVAL);
    CHECK(iss_put_f64(&p, "f", 1, INFINITY, 1.5) == ISS_EINVAL);
    CHECK(iss_put_i64(&p, "", 0, 1, 1.5) == ISS_ETOOBIG);
    iss_batch info;
    const char *json = drain(base, size, 0, seg_of(&p), &info);
    const char *want =
        "[{\"key\":\"temp\",\"value\":21.5,\"epoch\":1764270000.5},"
        "{\"key\":\"count\",\"value\":-9223372036854775808,\"epoch\":1764270000.25},"
        "{\"key\":\"ok\",\"value\":true},"
        "{\"key\":\"no\",\"value\":false,\"epoch\":1764270001.0},"
        "{\"key\":\"msg\",\"value\":\"h\xc3\xa9llo \\\"q\\\"\\\\\\n\\u0001\",\"epoch\":1764270002.000001},"
        "{\"key\":\"k\\ufffd\",\"value\":\"\\ufffd\\ufffd\",\"epoch\":1764270003.5},"
        "{\"key\":\"f\",\"value\":0.1,\"epoch\":1.5},"
        "{\"key\":\"f\",\"value\":1e+16,\"epoch\":1.5},"
        "{\"key\":\"f\",\"value\":-0.0,\"epoch\":1.5},"
        "{\"key\":\"f\",\"value\":5e-324,\"epoch\":1.5},"
        "{\"key\":\"f\",\"value\":3.0,\"epoch\":1.5}]";
    if (strcmp(json, want) != 0) {
        fprintf(stderr, "got:  %s\nwant: %s\n", json, want);
        CHECK(!"encoded batch differs");
    }
    CHECK(info.nevents == 11 && info.bucket == 0 && info.skipped == 0);
    CHECK(__atomic_load_n(&seg_of(&p)->logged, __ATOMIC_ACQUIRE) == 11);
    munmap(base, size);
}

/* 2. A batch holds one bucket: a bucket change ends it. */
static void check_buckets(void)
{
    uint64_t size;
    uint8_t *base = map_ring(1, ISS_SEG_DATA_MIN, 4, &size);
    iss_producer p;
    memset(&p, 0, sizeof p);
    CHECK(iss_producer_attach(&p, base, size, 0) == ISS_OK);
    for (uint32_t b = 1; b <= 3; b++) {
        p.bucket = b;
        for (int i = 0; i < 5; i++)
            CHECK(iss_put_i64(&p, "x", 1, i, 2.0) == ISS_OK);
    }
    for (uint32_t b = 1; b <= 3; b++) {
        iss_batch info;
        drain(base, size, 0, seg_of(&p), &info);
        CHECK(info.bucket == b && info.nevents == 5);
    }
    munmap(base, size);
}

/* Parse the "value" of every event of a batch of integers; check they continue `*next`. */
static void expect_sequence(const char *json, int64_t *next)
{
    const char *at = json;
    while ((at = strstr(at, "\"value\":")) != NULL) {
        at += 8;
        char *end;
        long long v = strtoll(at, &end, 10);
        CHECK(end != at);
        if (v != *next) {
            fprintf(stderr, "expected %" PRId64 ", got %lld\n", *next, v);
            CHECK(!"events out of order or lost");
        }
        (*next)++;
        at = end;
    }
}

/* 3. A minimum-size segment wraps hundreds of times; every event comes back once, in order. */
static void check_wrap(void)
{
    uint64_t size;
    uint8_t *base = map_ring(1, ISS_SEG_DATA_MIN, 1, &size);
    iss_producer p;
    memset(&p, 0, sizeof p);
    CHECK(iss_producer_attach(&p, base, size, 0) == ISS_OK);
    const int64_t n = 100000;
    int64_t next = 0;
    char pad[200];
    memset(pad, 'k', sizeof pad);
    for (int64_t i = 0; i < n; i++) {
        size_t keylen = 1 + (size_t)(i % 150); /* varying record sizes exercise the padding */
        int rc = iss_put_i64(&p, pad, keylen, i, 1764270000.0 + (double)i);
        if (rc == ISS_FULL) {
            iss_batch info;
            expect_sequence(drain(base, size, 0, seg_of(&p), &info), &next);
            rc = iss_put_i64(&p, pad, keylen, i, 1764270000.0 + (double)i);
        }
        CHECK(rc == ISS_OK);
    }
    while (next < n) {
        iss_batch info;
        expect_sequence(drain(base, size, 0, seg_of(&p), &info), &next);
        CHECK(info.nevents > 0);
    }
    CHECK(__atomic_load_n(&seg_of(&p)->head, __ATOMIC_ACQUIRE) > 100u * ISS_SEG_DATA_MIN);
    munmap(base, size);
}

/* 4. A forked producer logs through interned keys while this process drains (SPSC across
 * processes on a MAP_SHARED mapping), and both add to one 64-bit counter. */
static void check_two_processes(void)
{
    uint64_t size;
    uint8_t *base = map_ring(2, ISS_SEG_DATA_MIN, 1, &size);
    const int64_t n = 200000;
    const uint64_t counter_off = 128; /* iss_ring_hdr.counters[0] */
    const uint64_t adds = 100000;
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a failed parent */
        iss_producer p;
        memset(&p, 0, sizeof p);
        if (iss_producer_attach(&p, base, size, 1) != ISS_OK)
            _exit(2);
        int32_t id = iss_key_intern("seq", 3);
        if (id < 0)
            _exit(3);
        for (int64_t i = 0; i < n; i++) {
            int rc;
            while ((rc = iss_log_i64_at(&p, (uint32_t)id, i, NAN)) == ISS_FULL)
                sched_yield();
            if (rc != ISS_OK)
                _exit(4);
            if ((uint64_t)i < adds)
                iss_add64(base, size, counter_off, 1);
        }
        _exit(0);
    }
    child_pid = pid;
    iss_producer view; /* only to find segment 1 */
    memset(&view, 0, sizeof view);
    CHECK(iss_producer_attach(&view, base, size, 1) == ISS_OK);
    int64_t next = 0;
    uint64_t added = 0;
    while (next < n) {
        iss_batch info;
        expect_sequence(drain(base, size, 1, seg_of(&view), &info), &next);
        if (added < adds) {
            iss_add64(base, size, counter_off, 1);
            added++;
        }
        if (info.nevents == 0)
            sched_yield();
    }
    while (added < adds) {
        iss_add64(base, size, counter_off, 1);
        added++;
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    child_pid = 0;
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(iss_load64(base, size, counter_off) == 2 * adds);
    CHECK(__atomic_load_n(&seg_of(&view)->logged, __ATOMIC_ACQUIRE) == (uint64_t)n);
    munmap(base, size);
}

/* 5. iss_dtoa: Python repr() strings, then shortest-or-not round trips through strtod. */
static double pick_double(void)
{
    uint64_t r = rng();
    double v;
    switch (r % 4u) {
    case 0: /* any finite bit pattern */
        do {
            uint64_t b = rng();
            memcpy(&v, &b, 8);
        } while (!isfinite(v));
        return v;
    case 1: /* integers, some beyond 2^53 */
        return (double)(int64_t)(rng() >> (r % 60u)) * ((r & 16u) ? -1.0 : 1.0);
    case 2: /* decimals as people type them: k / 10^j */
        return (double)(int64_t)(rng() % 1000000u) / pow(10.0, (double)(r % 12u));
    default: /* around the fixed/scientific switches 1e-4 and 1e16 */
        return ldexp((double)(rng() >> 11) / 9007199254740992.0 + 0.5, (int)(r % 120u) - 20);
    }
}

static void check_dtoa(void)
{
    static const struct {
        double v;
        const char *repr;
    } table[] = {
        {0.0, "0.0"}, {-0.0, "-0.0"}, {1.0, "1.0"}, {-1.5, "-1.5"}, {0.1, "0.1"},
        {0.3, "0.3"}, {0.1 + 0.2, "0.30000000000000004"}, {1e16, "1e+16"},
        {9999999999999998.0, "9999999999999998.0"}, {1e-4, "0.0001"}, {1e-5, "1e-05"},
        {123456789.125, "123456789.125"}, {5e-324, "5e-324"},
        {1.7976931348623157e308, "1.7976931348623157e+308"},
        {2.2250738585072014e-308, "2.2250738585072014e-308"}, {9007199254740993.0, "9007199254740992.0"},
        {1e22, "1e+22"}, {1e23, "1e+23"}, {21.5, "21.5"}, {-273.15, "-273.15"},
        {1764270000.123456, "1764270000.123456"}, {2.5e-5, "2.5e-05"}, {123e300, "1.23e+302"},
    };
    char buf[ISS_DTOA_MAX_LEN + 1];
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        size_t n = iss_dtoa(table[i].v, buf, sizeof buf);
        buf[n] = '\0';
        if (strcmp(buf, table[i].repr) != 0) {
            fprintf(stderr, "iss_dtoa(%.17g) = %s, Python repr: %s\n", table[i].v, buf, table[i].repr);
            CHECK(!"iss_dtoa differs from repr()");
        }
    }
    CHECK(iss_dtoa(NAN, buf, sizeof buf) == 0 && iss_dtoa(-INFINITY, buf, sizeof buf) == 0);
    CHECK(iss_dtoa(0.1, buf, 2) == 0); /* too small a buffer: nothing */
    for (int i = 0; i < 1000000; i++) {
        double v = pick_double();
        size_t n = iss_dtoa(v, buf, sizeof buf);
        CHECK(n > 0 && n <= ISS_DTOA_MAX_LEN);
        buf[n] = '\0';
        double back = strtod(buf, NULL);
        if (memcmp(&back, &v, 8) != 0) {
            fprintf(stderr, "iss_dtoa(%.17g) = %s reads back as %.17g\n", v, buf, back);
            CHECK(!"iss_dtoa does not round-trip");
        }
    }
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--dtoa-dump") == 0) {
        long n = strtol(argv[2], NULL, 10);
        char buf[ISS_DTOA_MAX_LEN + 1];
        for (long i = 0; i < n; i++) {
            double v = pick_double();
            uint64_t bits;
            memcpy(&bits, &v, 8);
            size_t len = iss_dtoa(v, buf, sizeof buf);
            buf[len] = '\0';
            printf("%016" PRIx64 " %s\n", bits, buf);
        }
        return 0;
    }
    CHECK(argc == 1);
    check_exact_json();
    check_buckets();
    check_wrap();
    check_two_processes();
    check_dtoa();
    const uint16_t one = 1;
    unsigned char low;
    memcpy(&low, &one, 1);
    printf("native_check: ok (%zu-bit, %s-endian): exact JSON, buckets, 100000 events through a "
           "wrapping segment, 200000 from a forked producer, cross-process atomic adds, dtoa\n",
           sizeof(void *) * 8, low ? "little" : "big");
    return 0;
}
