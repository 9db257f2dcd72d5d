/*
 * Fuzz target (c): the aggregation kernel (aggregate.c) folding fuzzed records of a few keys under
 * fuzzed rules, with fuzzed clocks, closes and takes. Checked: every batch the encoder pass
 * writes and every set of emitted events taken is strict JSON; a batch read again (fold_from at
 * its end) takes the same records and folds none twice; every numeric record of a key under a
 * window rule is counted in exactly one window (the "_count" statistics sent add up to them);
 * once every window is closed none is open.
 *
 * Input: 8 bytes of rules, then operations of 16 bytes (a short last one is zero-extended).
 *   rules: 4 x (u8 kind, u8 arg): kind % 4: 0 none, 1 window (seconds SECONDS[arg % 8], the
 *          statistics arg | count), 2 deadband (absolute / relative from arg), 3 on change;
 *          key k<i> (NKEYS keys) takes rule i % 4 (rule 0 of "none": no rule)
 *   op:    0 u8  op % 8: 0 f64, 1 i64, 2 str or bool, 3 encode a batch (fold), 4 close the
 *                windows due by the clock, 5 close all, 6 move the clock, 7 take emitted events
 *          1 u8  aux: key index (records), max events (3, 7; bit 7 of 3: read the batch again),
 *                milliseconds * 16 (6)
 *          2 u16 esel: epoch: 0 NaN (the clock's), 1 0.0, 2 1e300, 3 5e-324, else 1.7e9 + esel / 64
 *          4 u64 bits: the value (f64 bits, the first ones special when op 0 and bits < 8; i64)
 *          12 u32 pos: unused bytes of the input (a string's bytes come from there)
 */
#include "../aggregate.h"
#include "../atomics.h"
#include "json_check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OP_SIZE 16u
#define NKEYS 6u
#define OUT_CAP (1u << 17)

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "fuzz_aggregate: check failed: %s (line %d)\n", #cond, __LINE__);    \
            abort();                                                                              \
        }                                                                                         \
    } while (0)

static const double SECONDS[8] = {0.25, 1.0, 0.001, 60.0, 1e-300, 3.0, 0.1, 86400.0};
static const double SPECIALS[8] = {0.0, -0.0, 1.5e308, -1.7976931348623157e308, 5e-324, 1e308, -1e308, 2.5};

typedef struct {
    iss_agg *a;
    uint8_t *base;
    uint64_t map_size;
    iss_seg_hdr *sh;
    int32_t rule_of[NKEYS];   /* kernel rule index of each key, -1: none */
    int window[NKEYS];        /* the key is under a window rule */
    uint64_t window_records;  /* numeric records put under a window rule */
    uint64_t counted;         /* the "_count" statistics taken */
    uint64_t folded_from;     /* position up to which records were folded */
    double now;
} state;

static char g_out[OUT_CAP];
static jc_event g_ev;

static uint64_t rd(const uint8_t *b, size_t off, size_t n)
{
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++)
        v |= (uint64_t)b[off + k] << (8 * k);
    return v;
}

static int key_index(const uint8_t *key, size_t n)
{
    return (n == 2 && key[0] == 'k' && key[1] >= '0' && key[1] < (int)('0' + NKEYS)) ? key[1] - '0' : -1;
}

static int count_event(void *ctx, size_t index, const jc_event *ev)
{
    state *st = ctx;
    (void)index;
    CHECK(ev->keylen >= 2);
    static const char suffix[] = "_count";
    if (ev->keylen == 8 && memcmp(ev->key + 2, suffix, 6) == 0) {
        CHECK(key_index(ev->key, 2) >= 0 && st->window[key_index(ev->key, 2)]);
        CHECK(ev->vkind == JC_NUMBER && ev->num_is_integer && ev->num >= 1.0);
        st->counted += (uint64_t)strtoull(ev->numtext, NULL, 10);
    }
    return 0;
}

static int pass_event(void *ctx, size_t index, const jc_event *ev)
{
    (void)ctx;
    (void)index;
    CHECK(ev->keylen == 2 && key_index(ev->key, 2) >= 0); /* a record passed through unchanged */
    return 0;
}

/* One encoder pass from the tail (binding the key it stops at), optionally read again. */
static void encode_once(state *st, uint32_t max_events, int reread)
{
    uint64_t tail = ISS_LOAD_ACQ(&st->sh->tail);
    uint64_t head = ISS_LOAD_ACQ(&st->sh->head);
    for (;;) {
        iss_batch info;
        iss_agg_info ai;
        uint64_t fold_from = st->folded_from > tail ? st->folded_from : tail;
        int64_t n = iss_agg_encode_batch(st->a, st->base, st->map_size, 0, tail, max_events, g_out, sizeof g_out,
                                         &info, fold_from, 0, 1u << 16, st->now, &ai);
        CHECK(n >= 2 && (size_t)n <= sizeof g_out && !info.corrupt);
        CHECK(info.end >= tail && info.end <= head);
        CHECK(jc_check_batch(g_out, (size_t)n, &g_ev, pass_event, st) == (long)info.nevents);
        if (info.end > st->folded_from)
            st->folded_from = info.end;
        if (ai.miss) {
            int k = key_index((const uint8_t *)ai.miss_key, ai.miss_keylen);
            CHECK(k >= 0);
            CHECK(iss_agg_bind(st->a, ai.miss_bucket, ai.miss_key, ai.miss_keylen, st->rule_of[k]) == ISS_OK);
            if (info.end == tail && info.nevents == 0)
                continue;
        }
        if (reread && info.end > tail && !ai.miss) {
            iss_agg_counters before, after;
            iss_batch again;
            iss_agg_info ai2;
            iss_agg_counts(st->a, &before);
            int64_t m = iss_agg_encode_batch(st->a, st->base, st->map_size, 0, tail, max_events, g_out,
                                             sizeof g_out, &again, st->folded_from, 0, 1u << 16, st->now, &ai2);
            iss_agg_counts(st->a, &after);
            CHECK(m == n && again.end == info.end && ai2.taken == ai.taken && after.folded == before.folded);
        }
        ISS_STORE_REL(&st->sh->tail, info.end);
        return;
    }
}

static void take_all(state *st, uint32_t max_events)
{
    for (uint32_t b = 0; b < iss_agg_nbuckets(st->a); b++) {
        while (iss_agg_pending(st->a, b) > 0) {
            uint32_t got = 0;
            int64_t n = iss_agg_take(st->a, b, max_events, g_out, sizeof g_out, &got);
            CHECK(n >= 2 && (size_t)n <= sizeof g_out && got >= 1);
            CHECK(jc_check_batch(g_out, (size_t)n, &g_ev, count_event, st) == (long)got);
        }
    }
    iss_agg_overflow o;
    if (iss_agg_last_overflow(st->a, &o)) { /* a mean or a sum of a window key */
        CHECK(o.keylen == 2 && key_index((const uint8_t *)o.key, 2) >= 0 && st->window[o.key[1] - '0']);
        CHECK(o.stat == 0 || o.stat == 6);
        CHECK(!iss_agg_last_overflow(st->a, &o));
    }
}

static void add_rules(state *st, const uint8_t *r)
{
    int32_t idx[4];
    for (uint32_t i = 0; i < 4u; i++) {
        uint8_t kind = r[2u * i] % 4u, arg = r[2u * i + 1u];
        idx[i] = -1;
        if (kind == 1)
            idx[i] = iss_agg_add_rule(st->a, ISS_AGG_WINDOW, (arg & 127u) | ISS_ST_COUNT, SECONDS[arg % 8u], 0, 0, 0);
        else if (kind == 2)
            idx[i] = iss_agg_add_rule(st->a, ISS_AGG_DEADBAND, 0, 0, (arg & 3u) * 0.5, (arg >> 2 & 3u) * 0.01,
                                      (arg >> 4) * 0.25);
        else if (kind == 3)
            idx[i] = iss_agg_add_rule(st->a, ISS_AGG_CHANGE, 0, 0, 0, 0, (arg >> 4) * 0.25);
        CHECK(kind == 0 || idx[i] >= 0);
        for (uint32_t k = i; k < NKEYS; k += 4u) {
            st->rule_of[k] = idx[i];
            st->window[k] = kind == 1;
        }
    }
}

static int put(state *st, iss_producer *p, const uint8_t *op, const uint8_t *data, size_t size)
{
    char key[2] = {'k', (char)('0' + op[1] % NKEYS)};
    uint16_t esel = (uint16_t)rd(op, 2, 2);
    uint64_t bits = rd(op, 4, 8);
    double epoch = esel == 0 ? NAN : esel == 1 ? 0.0 : esel == 2 ? 1e300 : esel == 3 ? 5e-324 : 1.7e9 + esel / 64.0;
    switch (op[0] % 8u) {
    case 0: {
        double f;
        if (bits < 8u)
            f = SPECIALS[bits];
        else
            memcpy(&f, &bits, 8);
        int rc = iss_put_f64(p, key, 2, f, epoch);
        if (rc == ISS_OK && st->window[op[1] % NKEYS])
            st->window_records++;
        return isfinite(f) ? rc : ISS_OK;
    }
    case 1: {
        int64_t i;
        memcpy(&i, &bits, 8);
        int rc = iss_put_i64(p, key, 2, i, epoch);
        if (rc == ISS_OK && st->window[op[1] % NKEYS])
            st->window_records++;
        return rc;
    }
    default:
        if (bits & 1u)
            return iss_put_bool(p, key, 2, (int)(bits >> 1 & 1u), epoch);
        size_t at = (size_t)rd(op, 12, 4) % size, n = (size_t)(bits >> 8) % 4u;
        char s[4];
        for (size_t k = 0; k < n; k++)
            s[k] = (char)('a' + data[(at + k) % size] % 3u);
        return iss_put_str(p, key, 2, s, n, epoch);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8u)
        return 0;
    const uint32_t ds = ISS_SEG_DATA_MIN;
    state st;
    memset(&st, 0, sizeof st);
    st.map_size = iss_layout_size(1, ds, 1);
    st.base = calloc(1, (size_t)st.map_size);
    st.a = iss_agg_new();
    CHECK(st.base != NULL && st.a != NULL);
    CHECK(iss_ring_init(st.base, st.map_size, 1, ds, 1) == ISS_OK);
    iss_producer p;
    memset(&p, 0, sizeof p);
    CHECK(iss_producer_attach(&p, st.base, st.map_size, 0) == ISS_OK);
    st.sh = p.seg;
    st.now = 1.7e9;
    add_rules(&st, data);

    for (size_t at = 8u; at < size; at += OP_SIZE) {
        uint8_t op[OP_SIZE];
        memset(op, 0, sizeof op);
        memcpy(op, data + at, size - at < OP_SIZE ? size - at : OP_SIZE);
        switch (op[0] % 8u) {
        case 3: encode_once(&st, op[1] & 127u, op[1] >> 7); break;
        case 4:
            iss_agg_close(st.a, st.now - 0.25);
            CHECK(!(iss_agg_next_due(st.a) <= st.now - 0.25)); /* nothing left that is due */
            break;
        case 5: iss_agg_close(st.a, INFINITY); break;
        case 6: st.now += op[1] * 0.016; break;
        case 7: take_all(&st, op[1] + 1u); break;
        default: {
            int rc = put(&st, &p, op, data, size);
            if (rc == ISS_FULL) { /* as the sender would: drain, then the put goes in */
                while (ISS_LOAD_ACQ(&st.sh->tail) != ISS_LOAD_ACQ(&st.sh->head))
                    encode_once(&st, 1000, 0);
                rc = put(&st, &p, op, data, size);
            }
            CHECK(rc == ISS_OK);
        }
        }
    }
    while (ISS_LOAD_ACQ(&st.sh->tail) != ISS_LOAD_ACQ(&st.sh->head))
        encode_once(&st, 1000, 0);
    iss_agg_close(st.a, INFINITY);
    take_all(&st, 1000);
    iss_agg_counters c;
    iss_agg_counts(st.a, &c);
    CHECK(c.open == 0 && c.no_memory == 0);
    CHECK(st.counted == st.window_records);
    iss_agg_free(st.a);
    free(st.base);
    return 0;
}
