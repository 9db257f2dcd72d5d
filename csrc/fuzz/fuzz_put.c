/*
 * Fuzz target (b): iss_put_* with fuzzed keys, values, lengths, epochs and buckets, then
 * iss_encode_batch; every event put must come back, in order, exactly once, with the same
 * key (invalid UTF-8 replaced by U+FFFD per bad byte), type and value (floats bit-exact,
 * -0.0 included), and the epoch to the microsecond (omitted when it is <= 0 or not finite).
 *
 * Input: a sequence of operations, each 20 bytes (a short last one is zero-extended):
 *   0  u8  op   op % 8: 0 f64, 1 i64, 2 bool, 3 str, 4 set bucket, 5 drain (max_events = u16 at 2),
 *              6 f64 with a non-finite value or epoch taken from `bits`, 7 str of length len2
 *   1  u8  aux  bucket for op 4; bool value (bit 0); bit 7: log through an interned key
 *              (iss_key_intern + iss_log_*_at); bit 6: also try ids nobody interned
 *   2  u16 len  key length % 1100 (so 0 and > ISS_KEY_MAX occur)
 *   4  u16 len2 string length % 8400 (op 3: % 64, so short strings dominate)
 *   6  u64 bits value bits (f64/i64)
 *   14 u16 esel epoch selector: 0 NaN (now), 1 0.0, 2 -1.0, 3 +inf, 4 from `bits`, else a
 *              plausible epoch 1.7e9 + esel * 0.123457
 *   16 u32 pos  offset into the input where key then string bytes are taken (cyclically)
 * The segment is the minimum size, so it wraps every few large records; when a put returns
 * ISS_FULL the target drains (as the sender would) and the retry must succeed.
 */
#include "../isstreamer.h"
#include "json_check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OP_SIZE 20u
#define NBUCKETS 4u
#define OUT_CAP (96u + 6u * ISS_KEY_MAX + 6u * ISS_STR_MAX + 2u + 4096u)

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "fuzz_put: check failed: %s (line %d)\n", #cond, __LINE__);          \
            abort();                                                                              \
        }                                                                                         \
    } while (0)

typedef struct {
    uint8_t type;
    uint32_t bucket;
    uint8_t *key; /* sanitized (expected) key */
    size_t keylen;
    uint8_t *str; /* sanitized (expected) string */
    size_t slen;
    uint64_t bits;
    double epoch;
    int epoch_now; /* NaN epoch: the producer stamps the current time */
} expect;

typedef struct {
    expect *q;
    size_t head, count, cap;
    uint32_t batch_bucket;
} state;

static uint64_t rd(const uint8_t *b, size_t off, size_t n)
{
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++)
        v |= (uint64_t)b[off + k] << (8 * k);
    return v;
}

/* Independent reference for the encoder's policy: well-formed sequences are kept, every byte
 * that does not start one becomes U+FFFD. Returns a malloc'd buffer. */
static uint8_t *sanitize(const uint8_t *s, size_t n, size_t *outlen)
{
    uint8_t *o = malloc(n * 3u + 1u);
    size_t w = 0, i = 0;
    CHECK(o != NULL);
    while (i < n) {
        size_t len = jc_utf8_len(s + i, n - i);
        if (len == 0) {
            o[w++] = 0xEF;
            o[w++] = 0xBF;
            o[w++] = 0xBD;
            i++;
        } else {
            memcpy(o + w, s + i, len);
            w += len;
            i += len;
        }
    }
    *outlen = w;
    return o;
}

static void take(const uint8_t *data, size_t size, size_t pos, uint8_t *dst, size_t n)
{
    for (size_t k = 0; k < n; k++)
        dst[k] = data[(pos + k) % size];
}

static int compare_event(void *ctx, size_t index, const jc_event *ev)
{
    state *st = ctx;
    (void)index;
    CHECK(st->count > 0);
    expect *e = &st->q[st->head];
    CHECK(e->bucket == st->batch_bucket);
    CHECK(ev->keylen == e->keylen && memcmp(ev->key, e->key, e->keylen) == 0);
    switch (e->type) {
    case ISS_T_F64: {
        double want;
        memcpy(&want, &e->bits, 8);
        CHECK(ev->vkind == JC_NUMBER);
        CHECK(memcmp(&ev->num, &want, 8) == 0); /* bit-exact, sign of zero included */
        CHECK(!ev->num_is_integer);             /* a float stays a float: "3.0", not "3" */
        break;
    }
    case ISS_T_I64: {
        int64_t want;
        memcpy(&want, &e->bits, 8);
        CHECK(ev->vkind == JC_NUMBER && ev->num_is_integer);
        CHECK(strtoll(ev->numtext, NULL, 10) == want);
        break;
    }
    case ISS_T_TRUE: CHECK(ev->vkind == JC_TRUE); break;
    case ISS_T_FALSE: CHECK(ev->vkind == JC_FALSE); break;
    default:
        CHECK(ev->vkind == JC_STRING);
        CHECK(ev->slen == e->slen && memcmp(ev->sval, e->str, e->slen) == 0);
    }
    if (e->epoch_now) {
        CHECK(ev->has_epoch && ev->epoch > 1e9);
    } else if (isfinite(e->epoch) && e->epoch > 0.0) {
        CHECK(ev->has_epoch);
        double tol = 1e-6 + 4.0 * (nextafter(e->epoch, INFINITY) - e->epoch);
        if (e->epoch >= 1e11)
            CHECK(ev->epoch == e->epoch);
        else
            CHECK(fabs(ev->epoch - e->epoch) <= tol);
    } else {
        CHECK(!ev->has_epoch);
    }
    free(e->key);
    free(e->str);
    st->head = (st->head + 1) % st->cap;
    st->count--;
    return 0;
}

static jc_event g_ev;
static char g_out[OUT_CAP];

/* Encode one batch from the segment's tail, compare, release it. Returns events taken. */
static uint32_t drain_once(state *st, uint8_t *base, uint64_t map_size, iss_seg_hdr *sh,
                           uint32_t max_events)
{
    uint64_t tail = __atomic_load_n(&sh->tail, __ATOMIC_ACQUIRE);
    uint64_t head = __atomic_load_n(&sh->head, __ATOMIC_ACQUIRE);
    iss_batch info;
    int64_t rc = iss_encode_batch(base, map_size, 0, tail, max_events, g_out, sizeof g_out, &info);
    CHECK(rc >= 2 && (size_t)rc <= sizeof g_out);
    CHECK(!info.corrupt && info.skipped == 0);
    CHECK(info.end >= tail && info.end <= head);
    if (tail < head && max_events > 0)
        CHECK(info.end > tail);
    st->batch_bucket = info.bucket;
    long n = jc_check_batch(g_out, (size_t)rc, &g_ev, compare_event, st);
    CHECK(n >= 0 && (uint64_t)n == info.nevents);
    __atomic_store_n(&sh->tail, info.end, __ATOMIC_RELEASE);
    return info.nevents;
}

static void drain_all(state *st, uint8_t *base, uint64_t map_size, iss_seg_hdr *sh)
{
    while (__atomic_load_n(&sh->tail, __ATOMIC_ACQUIRE) != __atomic_load_n(&sh->head, __ATOMIC_ACQUIRE))
        drain_once(st, base, map_size, sh, 1000);
    CHECK(st->count == 0);
}

static int do_put(iss_producer *p, uint8_t type, const uint8_t *key, size_t keylen, uint64_t bits,
                  const uint8_t *s, size_t slen, double epoch, int32_t key_id)
{
    double f;
    int64_t i;
    memcpy(&f, &bits, 8);
    memcpy(&i, &bits, 8);
    if (key_id >= 0) { /* the hot path: an interned key */
        uint32_t id = (uint32_t)key_id;
        switch (type) {
        case ISS_T_F64: return iss_log_f64_at(p, id, f, epoch);
        case ISS_T_I64: return iss_log_i64_at(p, id, i, epoch);
        case ISS_T_TRUE: return iss_log_bool_at(p, id, 1, epoch);
        case ISS_T_FALSE: return iss_log_bool_at(p, id, 0, epoch);
        default: return iss_log_str_at(p, id, (const char *)s, slen, epoch);
        }
    }
    switch (type) {
    case ISS_T_F64: return iss_put_f64(p, (const char *)key, keylen, f, epoch);
    case ISS_T_I64: return iss_put_i64(p, (const char *)key, keylen, i, epoch);
    case ISS_T_TRUE: return iss_put_bool(p, (const char *)key, keylen, 1, epoch);
    case ISS_T_FALSE: return iss_put_bool(p, (const char *)key, keylen, 0, epoch);
    default: return iss_put_str(p, (const char *)key, keylen, (const char *)s, slen, epoch);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const uint32_t ds = ISS_SEG_DATA_MIN;
    const uint64_t map_size = iss_layout_size(1, ds, NBUCKETS);
    uint8_t *base = calloc(1, (size_t)map_size);
    uint8_t *key = malloc(1100);
    uint8_t *str = malloc(8400);
    state st = {NULL, 0, 0, 0, 0};
    st.cap = size / OP_SIZE + 2u;
    st.q = calloc(st.cap, sizeof *st.q);
    CHECK(base && key && str && st.q);
    CHECK(iss_ring_init(base, map_size, 1, ds, NBUCKETS) == ISS_OK);
    iss_producer p;
    memset(&p, 0, sizeof p);
    CHECK(iss_producer_attach(&p, base, map_size, 0) == ISS_OK);
    iss_seg_hdr *sh = p.seg;
    uint64_t puts_ok = 0;

    for (size_t at = 0; at < size; at += OP_SIZE) {
        uint8_t op[OP_SIZE];
        memset(op, 0, sizeof op);
        memcpy(op, data + at, size - at < OP_SIZE ? size - at : OP_SIZE);
        uint8_t kind = op[0] % 8u;
        size_t keylen = (size_t)(rd(op, 2, 2) % 1100u);
        size_t slen = (size_t)(rd(op, 4, 2) % 8400u);
        uint64_t bits = rd(op, 6, 8);
        uint16_t esel = (uint16_t)rd(op, 14, 2);
        size_t pos = (size_t)rd(op, 16, 4);
        double epoch;
        if (kind == 4) {
            p.bucket = op[1] % NBUCKETS;
            continue;
        }
        if (kind == 5) {
            drain_once(&st, base, map_size, sh, (uint32_t)rd(op, 2, 2));
            continue;
        }
        switch (esel) {
        case 0: epoch = NAN; break;
        case 1: epoch = 0.0; break;
        case 2: epoch = -1.0; break;
        case 3: epoch = INFINITY; break;
        case 4: memcpy(&epoch, &bits, 8); break;
        default: epoch = 1.7e9 + (double)esel * 0.123457;
        }
        uint8_t type = ISS_T_STR;
        if (kind == 0 || kind == 6)
            type = ISS_T_F64;
        else if (kind == 1)
            type = ISS_T_I64;
        else if (kind == 2)
            type = (op[1] & 1u) ? ISS_T_TRUE : ISS_T_FALSE;
        else if (kind == 3)
            slen %= 64u;
        if (kind == 6) {
            const double specials[] = {NAN, INFINITY, -INFINITY, -0.0, 5e-324, 1.7976931348623157e308};
            double v = specials[op[1] % 6u];
            memcpy(&bits, &v, 8);
        }
        if (type != ISS_T_STR)
            slen = 0;
        take(data, size, pos, key, keylen);
        take(data, size, pos + keylen, str, slen);

        double fv;
        memcpy(&fv, &bits, 8);
        int want;
        if (type == ISS_T_F64 && !isfinite(fv))
            want = ISS_EINVAL;
        else if (keylen == 0 || keylen > ISS_KEY_MAX || slen > ISS_STR_MAX)
            want = ISS_ETOOBIG;
        else
            want = ISS_OK;
        int32_t key_id = -1;
        if (op[1] & 0x80u) {
            /* interned key: refused when empty or too long; EINVAL once the table is full */
            key_id = iss_key_intern((const char *)key, keylen);
            if (keylen == 0 || keylen > ISS_KEY_MAX)
                CHECK(key_id == ISS_ETOOBIG);
            else
                CHECK(key_id >= 0 || key_id == ISS_EINVAL);
            if (key_id < 0)
                key_id = -1;
            if (op[1] & 0x40u) {
                /* an id nobody interned writes nothing */
                uint64_t h0 = __atomic_load_n(&sh->head, __ATOMIC_ACQUIRE);
                CHECK(iss_log_f64_at(&p, 0xFFFFFFF0u, 1.0, epoch) == ISS_EINVAL);
                CHECK(iss_log_str_at(&p, (uint32_t)INT32_MAX, "x", 1, epoch) == ISS_EINVAL);
                CHECK(__atomic_load_n(&sh->head, __ATOMIC_ACQUIRE) == h0);
            }
        }
        int rc = do_put(&p, type, key, keylen, bits, str, slen, epoch, key_id);
        if (rc == ISS_FULL && want == ISS_OK) {
            drain_all(&st, base, map_size, sh);
            rc = do_put(&p, type, key, keylen, bits, str, slen, epoch, key_id);
        }
        CHECK(rc == want);
        if (rc != ISS_OK)
            continue;
        puts_ok++;
        CHECK(st.count < st.cap);
        expect *e = &st.q[(st.head + st.count) % st.cap];
        e->type = type;
        e->bucket = p.bucket;
        e->key = sanitize(key, keylen, &e->keylen);
        e->str = sanitize(str, slen, &e->slen);
        e->bits = bits;
        e->epoch = epoch;
        e->epoch_now = isnan(epoch);
        st.count++;
    }
    drain_all(&st, base, map_size, sh);
    CHECK(__atomic_load_n(&sh->logged, __ATOMIC_ACQUIRE) == puts_ok);
    free(st.q);
    free(str);
    free(key);
    free(base);
    return 0;
}
