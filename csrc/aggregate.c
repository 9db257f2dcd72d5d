/*
 * isstreamer aggregation kernel (see aggregate.h). Process-local to the sender: no shared state.
 * Every allocation is checked; on allocation failure a record is passed through unchanged
 * (encoded as if it had no rule) rather than lost. Sizes are checked before every write.
 */
#include "aggregate.h"
#include "dtoa.h"
#include "encode_filter.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EVENT_OVERHEAD 96u /* punctuation, a number and an epoch of one emitted event */
#define SUFFIX_MAX 8u      /* "_first", "_count"... */

/* A float sum that would overflow is kept as sum * 2^-64 from then on: exact (a power of two)
 * for every term above 2^-958, with room for 2^64 terms of the largest double. */
#define SCALE_UP 18446744073709551616.0 /* 2^64 (no hex float literal: MSVC) */
#define SCALE_DOWN (1.0 / SCALE_UP)

typedef union {
    double f;
    int64_t i;
} agg_num;

typedef struct {
    double s, c; /* Neumaier: the sum is s + c, times SCALE_UP when scaled */
    uint32_t scaled;
} agg_sum;

typedef struct {
    double end;
    double touched; /* the caller's clock (`now`) at the last event folded in */
    double first_ep, last_ep;
    agg_sum fsum;                  /* the floats */
    uint64_t ilo, ihi;             /* the integers: an exact two's complement 128-bit sum */
    agg_num min, max, first, last; /* .i while the window holds only integers (floats == 0) */
    uint64_t count;
    uint32_t ent;   /* its key (index in ents); while the slot is free: the next free slot + 1 */
    uint8_t stats;  /* the statistics to send: its rule's when it opened */
    uint8_t ints;   /* it holds integers */
    uint8_t floats; /* it holds floats */
} agg_win;

/* A window in the due heap (ordered by due, end, key) or in the list iss_agg_close sorts. */
typedef struct {
    double due;
    double end;
    uint32_t ent;
    uint32_t win;
} agg_ref;

typedef struct {
    uint8_t *key;
    uint32_t keylen;
    uint32_t bucket;
    int32_t rule;
    uint32_t cur; /* the window folded into last (slot + 1; 0: none open) */
    uint64_t hash;
    /* report by exception / on change: the last value sent */
    uint32_t have_sent;
    uint8_t last_type;
    double last_num;
    int64_t last_int;
    double last_ep;
    uint8_t *last_str;
    uint32_t last_len, last_cap;
} agg_entry;

typedef struct {
    uint32_t kind, stats;
    double seconds, absolute, relative, heartbeat;
} agg_rule;

typedef struct {
    char *buf; /* items: u32 length, then that many bytes of one JSON event */
    size_t rd, len, cap;
    uint32_t n;
} agg_out;

struct iss_agg {
    agg_rule *rules;
    uint32_t nrules, caprules;
    agg_entry *ents;
    uint32_t nents, capents;
    uint32_t *table; /* keys, open addressing: entry index + 1, 0 empty; size a power of two */
    uint32_t tsize;
    agg_win *wins; /* window slots: nwins ever used, the free ones chained from free_win */
    uint32_t nwins, capwins, free_win;
    uint32_t *wtab; /* open windows by (key, end), open addressing: slot + 1, 0 empty */
    uint32_t wtsize;
    agg_ref *heap; /* open windows, a min-heap by due time (capwins long) */
    uint32_t nheap;
    agg_ref *closing; /* scratch of iss_agg_close (capwins long) */
    agg_out *outs;    /* per bucket */
    uint32_t nouts;
    iss_agg_counters c;
    iss_agg_overflow ovf; /* the last statistic counted in c.overflow */
    int ovf_new;
};

static const char *const STAT_SUFFIX[7] = {"", "_min", "_max", "_last", "_first", "_count", "_sum"};

static uint64_t key_hash(uint32_t bucket, const uint8_t *key, size_t n)
{
    uint64_t h = UINT64_C(1469598103934665603) ^ bucket;
    for (size_t i = 0; i < n; i++) {
        h ^= key[i];
        h *= UINT64_C(1099511628211);
    }
    return h ^ (h >> 29);
}

iss_agg *iss_agg_new(void)
{
    iss_agg *a = calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    a->tsize = 1024;
    a->table = calloc(a->tsize, sizeof *a->table);
    if (a->table == NULL) {
        free(a);
        return NULL;
    }
    return a;
}

void iss_agg_free(iss_agg *a)
{
    if (a == NULL)
        return;
    for (uint32_t i = 0; i < a->nents; i++) {
        free(a->ents[i].key);
        free(a->ents[i].last_str);
    }
    for (uint32_t i = 0; i < a->nouts; i++)
        free(a->outs[i].buf);
    free(a->ents);
    free(a->table);
    free(a->wins);
    free(a->wtab);
    free(a->heap);
    free(a->closing);
    free(a->outs);
    free(a->rules);
    free(a);
}

int32_t iss_agg_add_rule(iss_agg *a, uint32_t kind, uint32_t stats, double seconds, double absolute,
                         double relative, double heartbeat)
{
    if (a == NULL || kind < ISS_AGG_WINDOW || kind > ISS_AGG_CHANGE || a->nrules >= 65536u)
        return ISS_EINVAL;
    if (kind == ISS_AGG_WINDOW && (!(seconds > 0.0) || !isfinite(seconds) || (stats & 127u) == 0))
        return ISS_EINVAL;
    if (!(absolute >= 0.0) || !(relative >= 0.0) || !(heartbeat >= 0.0) || !isfinite(absolute) ||
        !isfinite(relative) || !isfinite(heartbeat))
        return ISS_EINVAL;
    if (a->nrules == a->caprules) {
        uint32_t cap = a->caprules ? a->caprules * 2u : 8u;
        agg_rule *r = realloc(a->rules, (size_t)cap * sizeof *r);
        if (r == NULL)
            return ISS_EINVAL;
        a->rules = r;
        a->caprules = cap;
    }
    agg_rule *r = &a->rules[a->nrules];
    r->kind = kind;
    r->stats = stats & 127u;
    r->seconds = seconds;
    r->absolute = absolute;
    r->relative = relative;
    r->heartbeat = heartbeat;
    return (int32_t)a->nrules++;
}

static int32_t find_entry(const iss_agg *a, uint32_t bucket, const uint8_t *key, size_t n, uint64_t h)
{
    uint32_t mask = a->tsize - 1u;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1u) & mask) {
        uint32_t v = a->table[i];
        if (v == 0)
            return -1;
        const agg_entry *e = &a->ents[v - 1u];
        if (e->hash == h && e->bucket == bucket && e->keylen == n && memcmp(e->key, key, n) == 0)
            return (int32_t)(v - 1u);
    }
}

static int grow_table(iss_agg *a)
{
    uint32_t size = a->tsize * 2u;
    uint32_t *t = calloc(size, sizeof *t);
    if (t == NULL)
        return -1;
    for (uint32_t k = 0; k < a->nents; k++) {
        uint32_t i = (uint32_t)a->ents[k].hash & (size - 1u);
        while (t[i] != 0)
            i = (i + 1u) & (size - 1u);
        t[i] = k + 1u;
    }
    free(a->table);
    a->table = t;
    a->tsize = size;
    return 0;
}

int iss_agg_bind(iss_agg *a, uint32_t bucket, const char *key, size_t keylen, int32_t rule)
{
    if (a == NULL || key == NULL || keylen == 0 || keylen > ISS_KEY_MAX || rule < -1 ||
        (rule >= 0 && (uint32_t)rule >= a->nrules) || bucket > 65535u)
        return ISS_EINVAL;
    const uint8_t *k = (const uint8_t *)key;
    uint64_t h = key_hash(bucket, k, keylen);
    int32_t found = find_entry(a, bucket, k, keylen, h);
    if (found >= 0) {
        a->ents[found].rule = rule;
        return ISS_OK;
    }
    if (a->nents >= ISS_AGG_MAX_KEYS)
        return ISS_FULL;
    if ((uint64_t)(a->nents + 1u) * 2u > a->tsize && grow_table(a) != 0)
        return ISS_FULL;
    if (a->nents == a->capents) {
        uint32_t cap = a->capents ? a->capents * 2u : 64u;
        agg_entry *e = realloc(a->ents, (size_t)cap * sizeof *e);
        if (e == NULL)
            return ISS_FULL;
        a->ents = e;
        a->capents = cap;
    }
    uint8_t *copy = malloc(keylen);
    if (copy == NULL)
        return ISS_FULL;
    memcpy(copy, k, keylen);
    agg_entry *e = &a->ents[a->nents];
    memset(e, 0, sizeof *e);
    e->key = copy;
    e->keylen = (uint32_t)keylen;
    e->bucket = bucket;
    e->rule = rule;
    e->hash = h;
    uint32_t mask = a->tsize - 1u;
    uint32_t i = (uint32_t)h & mask;
    while (a->table[i] != 0)
        i = (i + 1u) & mask;
    a->table[i] = ++a->nents;
    return ISS_OK;
}

/* ---- output ------------------------------------------------------------------------------ */

static agg_out *out_for(iss_agg *a, uint32_t bucket)
{
    if (bucket >= a->nouts) {
        uint32_t n = bucket + 1u;
        agg_out *o = realloc(a->outs, (size_t)n * sizeof *o);
        if (o == NULL)
            return NULL;
        memset(o + a->nouts, 0, (size_t)(n - a->nouts) * sizeof *o);
        a->outs = o;
        a->nouts = n;
    }
    return &a->outs[bucket];
}

/* Room for `need` more bytes in o (compacting what was taken, else growing). */
static int out_reserve(agg_out *o, size_t need)
{
    if (o->rd > 0 && o->rd == o->len) {
        o->rd = o->len = 0;
    }
    if (o->cap - o->len >= need)
        return 0;
    if (o->rd > 0) {
        memmove(o->buf, o->buf + o->rd, o->len - o->rd);
        o->len -= o->rd;
        o->rd = 0;
        if (o->cap - o->len >= need)
            return 0;
    }
    size_t cap = o->cap ? o->cap : 4096u;
    while (cap - o->len < need) {
        if (cap > SIZE_MAX / 2u)
            return -1;
        cap *= 2u;
    }
    char *b = realloc(o->buf, cap);
    if (b == NULL)
        return -1;
    o->buf = b;
    o->cap = cap;
    return 0;
}

/* value kinds of emit() */
enum { V_F64, V_I64, V_U64, V_STR, V_TRUE, V_FALSE };

/* Append {"key":key+suffix,"value":v,"epoch":ep} (epoch left out when not positive finite). */
static void emit(iss_agg *a, uint32_t bucket, const uint8_t *key, uint32_t keylen, const char *suffix,
                 int kind, double fv, int64_t iv, uint64_t uv, const uint8_t *s, uint32_t slen, double ep)
{
    agg_out *o = out_for(a, bucket);
    size_t sl = strlen(suffix);
    size_t need = 4u + EVENT_OVERHEAD + 6u * ((size_t)keylen + sl) + 6u * (size_t)slen;
    if (o == NULL || out_reserve(o, need) != 0) {
        a->c.no_memory++;
        return;
    }
    char *w0 = o->buf + o->len;
    char *w = w0 + 4;
    memcpy(w, "{\"key\":", 7);
    w += 7;
    if (sl == 0) {
        w += iss_json_string(w, key, keylen);
    } else {
        /* the key then the suffix inside one JSON string (the suffix is plain ASCII) */
        size_t n = iss_json_string(w, key, keylen);
        w += n - 1u; /* over the closing quote */
        memcpy(w, suffix, sl);
        w += sl;
        *w++ = '"';
    }
    memcpy(w, ",\"value\":", 9);
    w += 9;
    switch (kind) {
    case V_F64: w += iss_dtoa(fv, w, ISS_DTOA_MAX_LEN); break;
    case V_I64: w += iss_json_i64(w, iv); break;
    case V_U64: w += iss_json_i64(w, uv > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)uv); break;
    case V_TRUE: memcpy(w, "true", 4); w += 4; break;
    case V_FALSE: memcpy(w, "false", 5); w += 5; break;
    default: w += iss_json_string(w, s, slen); break;
    }
    if (isfinite(ep) && ep > 0.0) {
        memcpy(w, ",\"epoch\":", 9);
        w += 9;
        w += iss_dtoa(ep, w, ISS_DTOA_MAX_LEN);
    }
    *w++ = '}';
    uint32_t len = (uint32_t)(w - w0 - 4);
    memcpy(w0, &len, 4);
    o->len += 4u + len;
    o->n++;
    a->c.emitted++;
}

uint32_t iss_agg_nbuckets(const iss_agg *a)
{
    return a == NULL ? 0 : a->nouts;
}

uint32_t iss_agg_pending(const iss_agg *a, uint32_t bucket)
{
    return (a == NULL || bucket >= a->nouts) ? 0 : a->outs[bucket].n;
}

int64_t iss_agg_take(iss_agg *a, uint32_t bucket, uint32_t max_events, char *out, size_t out_cap,
                     uint32_t *nevents)
{
    if (a == NULL || out == NULL || nevents == NULL || out_cap < 2u)
        return ISS_EINVAL;
    *nevents = 0;
    size_t w = 0;
    out[w++] = '[';
    if (bucket < a->nouts) {
        agg_out *o = &a->outs[bucket];
        while (o->n > 0 && *nevents < max_events && o->len - o->rd >= 4u) {
            uint32_t len;
            memcpy(&len, o->buf + o->rd, 4);
            if (len > o->len - o->rd - 4u)
                break; /* cannot happen: items are written whole */
            if (w + len + 2u > out_cap) {
                if (*nevents == 0)
                    return ISS_ETOOBIG;
                break;
            }
            if (*nevents > 0)
                out[w++] = ',';
            memcpy(out + w, o->buf + o->rd + 4, len);
            w += len;
            o->rd += 4u + len;
            o->n--;
            (*nevents)++;
        }
        if (o->n == 0)
            o->rd = o->len = 0;
    }
    out[w++] = ']';
    return (int64_t)w;
}

void iss_agg_counts(const iss_agg *a, iss_agg_counters *c)
{
    if (a == NULL || c == NULL)
        return;
    *c = a->c;
}

double iss_agg_next_due(const iss_agg *a)
{
    return (a == NULL || a->nheap == 0) ? INFINITY : a->heap[0].due;
}

int iss_agg_last_overflow(iss_agg *a, iss_agg_overflow *o)
{
    if (a == NULL || o == NULL || !a->ovf_new)
        return 0;
    *o = a->ovf;
    a->ovf_new = 0;
    return 1;
}

/* ---- window arithmetic ----------------------------------------------------------------------- */

/* Add x to a compensated sum (Neumaier); from the first term that would overflow it, the sum is
 * kept scaled by 2^-64 (the terms are finite, so an infinite partial sum is an overflow). */
static void sum_add(agg_sum *s, double x)
{
    double y = s->scaled ? x * SCALE_DOWN : x;
    double t = s->s + y;
    if (!s->scaled && !isfinite(t)) {
        s->scaled = 1;
        s->s *= SCALE_DOWN;
        s->c *= SCALE_DOWN;
        y = x * SCALE_DOWN;
        t = s->s + y;
    }
    if (fabs(s->s) >= fabs(y))
        s->c += (s->s - t) + y;
    else
        s->c += (y - t) + s->s;
    s->s = t;
}

/* (hi, lo) += v: a two's complement 128-bit sum (exact for up to 2^64 terms of int64). */
static void i128_add(uint64_t *hi, uint64_t *lo, int64_t v)
{
    uint64_t u = (uint64_t)v;
    uint64_t l = *lo + u;
    *hi += (uint64_t)(l < u) + (v < 0 ? UINT64_MAX : 0u);
    *lo = l;
}

/* The 128-bit integer (hi, lo) correctly rounded to a double (ties to even), as Python's float(). */
static double i128_to_double(uint64_t hi, uint64_t lo)
{
    const int neg = (hi >> 63) != 0;
    if (neg) {
        lo = ~lo + 1u;
        hi = ~hi + (lo == 0 ? 1u : 0u);
    }
    double m;
    if (hi == 0) {
        m = (double)lo;
    } else {
        unsigned n = 0; /* the bit length of hi: the value is top * 2^n plus what is below */
        while (n < 64u && (hi >> n) != 0)
            n++;
        uint64_t top = n == 64u ? hi : (hi << (64u - n)) | (lo >> n);
        uint64_t rest = n == 64u ? lo : lo << (64u - n);
        /* bit 0 of top is far below the 53 bits a double keeps: the sticky bit keeps the
         * rounding of (double)top that of the whole value */
        top |= rest != 0 ? 1u : 0u;
        m = ldexp((double)top, (int)n);
    }
    return neg ? -m : m;
}

/* Fold one value (an integer iv, else the float fv) of epoch ep into a window. */
static void win_add(agg_win *w, int is_int, double fv, int64_t iv, double ep)
{
    if (w->count == 0) {
        if (is_int)
            w->min.i = w->max.i = w->first.i = w->last.i = iv;
        else
            w->min.f = w->max.f = w->first.f = w->last.f = fv;
        w->first_ep = w->last_ep = ep;
    } else if (is_int && !w->floats) { /* integers only so far: compared as integers */
        if (iv < w->min.i)
            w->min.i = iv;
        if (iv > w->max.i)
            w->max.i = iv;
        if (ep < w->first_ep) {
            w->first.i = iv;
            w->first_ep = ep;
        }
        if (ep >= w->last_ep) {
            w->last.i = iv;
            w->last_ep = ep;
        }
    } else {
        if (!w->floats) { /* the first float of a window of integers: it sends floats */
            w->min.f = (double)w->min.i;
            w->max.f = (double)w->max.i;
            w->first.f = (double)w->first.i;
            w->last.f = (double)w->last.i;
        }
        double x = is_int ? (double)iv : fv;
        if (x < w->min.f)
            w->min.f = x;
        if (x > w->max.f)
            w->max.f = x;
        if (ep < w->first_ep) {
            w->first.f = x;
            w->first_ep = ep;
        }
        if (ep >= w->last_ep) {
            w->last.f = x;
            w->last_ep = ep;
        }
    }
    w->count++;
    if (is_int) {
        i128_add(&w->ihi, &w->ilo, iv);
        w->ints = 1;
    } else {
        sum_add(&w->fsum, fv);
        w->floats = 1;
    }
}

/* The sum of a window's values as t * 2^(64 * *scaled) (t is finite unless even that overflows). */
static double win_total(const agg_win *w, int *scaled)
{
    agg_sum s = w->fsum;
    if (w->ints)
        sum_add(&s, i128_to_double(w->ihi, w->ilo));
    double t = s.s + s.c;
    if (!s.scaled && !isfinite(t)) {
        t = s.s * SCALE_DOWN + s.c * SCALE_DOWN;
        s.scaled = 1;
    }
    *scaled = (int)s.scaled;
    return t;
}

/* ---- windows: slots, the index by (key, end), the due heap ---------------------------------- */

/* A window is due once its end has passed and no event came for it since (a backlog of past
 * epochs keeps its window open while it is being folded): the later of the two. */
static double win_due(const agg_win *w)
{
    return w->end > w->touched ? w->end : w->touched;
}

static uint64_t win_hash(uint32_t ent, double end)
{
    uint64_t h;
    memcpy(&h, &end, sizeof h);
    h ^= (uint64_t)ent * UINT64_C(0x9E3779B97F4A7C15);
    h ^= h >> 31;
    h *= UINT64_C(0xBF58476D1CE4E5B9);
    return h ^ (h >> 29);
}

/* The slot of key ent's open window ending at end, UINT32_MAX when none. */
static uint32_t win_find(const iss_agg *a, uint32_t ent, double end, uint64_t h)
{
    if (a->wtsize == 0)
        return UINT32_MAX;
    uint32_t mask = a->wtsize - 1u;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1u) & mask) {
        uint32_t v = a->wtab[i];
        if (v == 0)
            return UINT32_MAX;
        const agg_win *w = &a->wins[v - 1u];
        if (w->ent == ent && w->end == end)
            return v - 1u;
    }
}

static void wtab_put(uint32_t *t, uint32_t size, uint64_t h, uint32_t slot)
{
    uint32_t i = (uint32_t)h & (size - 1u);
    while (t[i] != 0)
        i = (i + 1u) & (size - 1u);
    t[i] = slot + 1u;
}

static int wtab_grow(iss_agg *a)
{
    uint32_t size = a->wtsize ? a->wtsize * 2u : 16u;
    uint32_t *t = calloc(size, sizeof *t);
    if (t == NULL)
        return -1;
    for (uint32_t i = 0; i < a->wtsize; i++) {
        uint32_t v = a->wtab[i];
        if (v != 0)
            wtab_put(t, size, win_hash(a->wins[v - 1u].ent, a->wins[v - 1u].end), v - 1u);
    }
    free(a->wtab);
    a->wtab = t;
    a->wtsize = size;
    return 0;
}

/* Remove a slot from the index (linear probing: the entries after it move back into the gap). */
static void wtab_remove(iss_agg *a, uint32_t slot)
{
    uint32_t mask = a->wtsize - 1u;
    const agg_win *w = &a->wins[slot];
    uint32_t i = (uint32_t)win_hash(w->ent, w->end) & mask;
    while (a->wtab[i] != slot + 1u)
        i = (i + 1u) & mask;
    a->wtab[i] = 0;
    for (uint32_t j = (i + 1u) & mask; a->wtab[j] != 0; j = (j + 1u) & mask) {
        const agg_win *o = &a->wins[a->wtab[j] - 1u];
        uint32_t home = (uint32_t)win_hash(o->ent, o->end) & mask;
        /* it stays when its home lies cyclically in (i, j] */
        int stays = i < j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            a->wtab[i] = a->wtab[j];
            a->wtab[j] = 0;
            i = j;
        }
    }
}

static int ref_before(const agg_ref *x, const agg_ref *y)
{
    if (x->due != y->due)
        return x->due < y->due;
    if (x->end != y->end)
        return x->end < y->end;
    return x->ent < y->ent;
}

static void heap_push(iss_agg *a, agg_ref r)
{
    uint32_t i = a->nheap++;
    while (i > 0) {
        uint32_t p = (i - 1u) / 2u;
        if (!ref_before(&r, &a->heap[p]))
            break;
        a->heap[i] = a->heap[p];
        i = p;
    }
    a->heap[i] = r;
}

static agg_ref heap_pop(iss_agg *a)
{
    agg_ref top = a->heap[0];
    agg_ref last = a->heap[--a->nheap];
    uint32_t n = a->nheap, i = 0;
    if (n == 0)
        return top;
    for (;;) {
        uint32_t l = 2u * i + 1u;
        if (l >= n)
            break;
        uint32_t m = (l + 1u < n && ref_before(&a->heap[l + 1u], &a->heap[l])) ? l + 1u : l;
        if (!ref_before(&a->heap[m], &last))
            break;
        a->heap[i] = a->heap[m];
        i = m;
    }
    a->heap[i] = last;
    return top;
}

/* Room for one more window slot (the slots, the heap and the close scratch grow together). */
static int wins_grow(iss_agg *a)
{
    if (a->capwins >= ISS_AGG_MAX_WINDOWS)
        return -1;
    uint32_t cap = a->capwins ? a->capwins * 2u : 64u;
    agg_win *w = realloc(a->wins, (size_t)cap * sizeof *w);
    if (w == NULL)
        return -1;
    a->wins = w;
    agg_ref *h = realloc(a->heap, (size_t)cap * sizeof *h);
    if (h == NULL)
        return -1;
    a->heap = h;
    agg_ref *c = realloc(a->closing, (size_t)cap * sizeof *c);
    if (c == NULL)
        return -1;
    a->closing = c;
    a->capwins = cap; /* only once all three hold cap */
    return 0;
}

/* Open key ent's window ending at end: its slot, or UINT32_MAX when out of memory. */
static uint32_t win_open(iss_agg *a, uint32_t ent, double end, uint64_t h, uint32_t stats, double now)
{
    if ((a->c.open + 1u) * 2u > a->wtsize && wtab_grow(a) != 0)
        return UINT32_MAX;
    uint32_t slot;
    if (a->free_win != 0) {
        slot = a->free_win - 1u;
        a->free_win = a->wins[slot].ent;
    } else {
        if (a->nwins == a->capwins && wins_grow(a) != 0)
            return UINT32_MAX;
        slot = a->nwins++;
    }
    agg_win *w = &a->wins[slot];
    memset(w, 0, sizeof *w);
    w->end = end;
    w->touched = now;
    w->ent = ent;
    w->stats = (uint8_t)stats;
    wtab_put(a->wtab, a->wtsize, h, slot);
    agg_ref r = {win_due(w), end, ent, slot};
    heap_push(a, r);
    a->c.open++;
    return slot;
}

static void win_free(iss_agg *a, uint32_t slot)
{
    wtab_remove(a, slot);
    agg_entry *e = &a->ents[a->wins[slot].ent];
    if (e->cur == slot + 1u)
        e->cur = 0;
    a->wins[slot].ent = a->free_win;
    a->free_win = slot + 1u;
    a->c.open--;
}

/* ---- closing ------------------------------------------------------------------------------- */

static void count_overflow(iss_agg *a, const agg_entry *e, uint32_t stat, double end)
{
    a->c.overflow++;
    a->ovf.bucket = e->bucket;
    a->ovf.stat = stat;
    a->ovf.end = end;
    a->ovf.keylen = e->keylen; /* <= ISS_KEY_MAX: checked by iss_agg_bind */
    memcpy(a->ovf.key, e->key, e->keylen);
    a->ovf_new = 1;
}

static void emit_window(iss_agg *a, const agg_win *w)
{
    const agg_entry *e = &a->ents[w->ent];
    int scaled = 0;
    double total = (w->stats & (ISS_ST_MEAN | ISS_ST_SUM)) ? win_total(w, &scaled) : 0.0;
    for (uint32_t i = 0; i < 7u; i++) {
        if (!(w->stats & (1u << i)))
            continue;
        const char *suffix = STAT_SUFFIX[i];
        if (i >= 1u && i <= 4u) { /* min / max / last / first: a value folded in, of its type */
            const agg_num *v = i == 1u ? &w->min : i == 2u ? &w->max : i == 3u ? &w->last : &w->first;
            if (w->floats)
                emit(a, e->bucket, e->key, e->keylen, suffix, V_F64, v->f, 0, 0, NULL, 0, w->end);
            else
                emit(a, e->bucket, e->key, e->keylen, suffix, V_I64, 0.0, v->i, 0, NULL, 0, w->end);
            continue;
        }
        if (i == 5u) {
            emit(a, e->bucket, e->key, e->keylen, suffix, V_U64, 0.0, 0, w->count, NULL, 0, w->end);
            continue;
        }
        double v = i == 0u ? total / (double)w->count : total; /* the mean, the sum */
        if (scaled)
            v *= SCALE_UP;
        if (!isfinite(v)) {
            count_overflow(a, e, i, w->end);
            continue;
        }
        emit(a, e->bucket, e->key, e->keylen, suffix, V_F64, v, 0, 0, NULL, 0, w->end);
    }
    a->c.windows++;
}

/* iss_agg_close's order: by window end, then by key binding (a key's windows in time order). */
static int ref_by_end(const void *x, const void *y)
{
    const agg_ref *p = x, *q = y;
    if (p->end != q->end)
        return p->end < q->end ? -1 : 1;
    return p->ent < q->ent ? -1 : p->ent > q->ent ? 1 : 0;
}

uint32_t iss_agg_close(iss_agg *a, double cutoff)
{
    if (a == NULL || a->nheap == 0 || !(a->heap[0].due <= cutoff))
        return 0;
    uint32_t m = 0;
    /* the heap's due is the window's when it opened or was last checked; a window folded into
     * since is due later: checked now and pushed back with its due time */
    while (a->nheap > 0 && a->heap[0].due <= cutoff) {
        agg_ref r = heap_pop(a);
        double due = win_due(&a->wins[r.win]);
        if (due <= cutoff) {
            a->closing[m++] = r; /* m <= open windows <= capwins */
        } else {
            r.due = due;
            heap_push(a, r);
        }
    }
    qsort(a->closing, m, sizeof *a->closing, ref_by_end);
    for (uint32_t i = 0; i < m; i++) {
        emit_window(a, &a->wins[a->closing[i].win]);
        win_free(a, a->closing[i].win);
    }
    return m;
}

/* Fold a value into key k's window of epoch ep: 0, or -1 when out of memory (the caller passes
 * the record on unchanged). The key's last window is tried first, then the index. */
static int fold_window(iss_agg *a, uint32_t k, const agg_rule *r, int is_int, double fv, int64_t iv, double ep,
                       double now)
{
    const double end = (floor(ep / r->seconds) + 1.0) * r->seconds;
    uint32_t cur = a->ents[k].cur;
    agg_win *w;
    if (cur != 0 && a->wins[cur - 1u].end == end) {
        w = &a->wins[cur - 1u];
    } else {
        uint64_t h = win_hash(k, end);
        uint32_t slot = win_find(a, k, end, h);
        if (slot == UINT32_MAX) {
            slot = win_open(a, k, end, h, r->stats, now);
            if (slot == UINT32_MAX)
                return -1;
        }
        a->ents[k].cur = slot + 1u;
        w = &a->wins[slot];
    }
    w->touched = now;
    win_add(w, is_int, fv, iv, ep);
    return 0;
}

/* ---- report by exception / on change ---------------------------------------------------------- */

static int same_as_sent(const agg_entry *e, const iss_rec *r, const uint8_t *s, double fv, int64_t iv)
{
    if (!e->have_sent || e->last_type != r->type)
        return 0;
    switch (r->type) {
    case ISS_T_F64: return fv == e->last_num;
    case ISS_T_I64: return iv == e->last_int;
    case ISS_T_STR: return e->last_len == r->vallen && (r->vallen == 0 || memcmp(e->last_str, s, r->vallen) == 0);
    default: return 1; /* true / false: the type is the value */
    }
}

/* d > x exactly, for an integer d and a finite double x >= 0 */
static int u64_above(uint64_t d, double x)
{
    if (!(x < 18446744073709551616.0)) /* 2^64 */
        return 0;
    return d > (uint64_t)floor(x);
}

/* i == f exactly */
static int i64_equals(int64_t i, double f)
{
    return f >= -9223372036854775808.0 && f < 9223372036854775808.0 && floor(f) == f && (int64_t)f == i;
}

/* Deadband: has the value (an integer iv, else the float fv) moved past the band around the last
 * number sent? Two integers are compared as integers (exact beyond 2^53), an integer and a float
 * exactly for equality and as doubles for a distance. */
static int moved(const agg_entry *e, const agg_rule *rule, int is_int, double fv, int64_t iv)
{
    const int last_int = e->last_type == ISS_T_I64;
    const int every = rule->absolute == 0.0 && rule->relative == 0.0; /* every change */
    if (is_int && last_int) {
        if (every)
            return iv != e->last_int;
        uint64_t d = iv >= e->last_int ? (uint64_t)iv - (uint64_t)e->last_int : (uint64_t)e->last_int - (uint64_t)iv;
        return (rule->absolute > 0.0 && u64_above(d, rule->absolute)) ||
               (rule->relative > 0.0 && u64_above(d, rule->relative * fabs((double)e->last_int)));
    }
    if (every)
        return is_int ? !i64_equals(iv, e->last_num) : last_int ? !i64_equals(e->last_int, fv) : fv != e->last_num;
    const double x = is_int ? (double)iv : fv;
    const double last = last_int ? (double)e->last_int : e->last_num;
    const double d = fabs(x - last);
    return (rule->absolute > 0.0 && d > rule->absolute) || (rule->relative > 0.0 && d > rule->relative * fabs(last));
}

static int remember(agg_entry *e, const iss_rec *r, const uint8_t *s, double x, int64_t iv, double ep)
{
    if (r->type == ISS_T_STR) {
        if (r->vallen > e->last_cap) {
            uint8_t *b = realloc(e->last_str, r->vallen);
            if (b == NULL)
                return -1;
            e->last_str = b;
            e->last_cap = r->vallen;
        }
        if (r->vallen)
            memcpy(e->last_str, s, r->vallen);
        e->last_len = r->vallen;
    }
    e->have_sent = 1;
    e->last_type = r->type;
    e->last_num = x;
    e->last_int = iv;
    e->last_ep = ep;
    return 0;
}

static void emit_record(iss_agg *a, const agg_entry *e, const iss_rec *r, const uint8_t *s, double fv,
                        int64_t iv)
{
    int kind = r->type == ISS_T_F64 ? V_F64 : r->type == ISS_T_I64 ? V_I64 : r->type == ISS_T_STR ? V_STR
             : r->type == ISS_T_TRUE ? V_TRUE : V_FALSE;
    emit(a, e->bucket, e->key, e->keylen, "", kind, fv, iv, 0, s, r->vallen, r->epoch);
}

/* ---- the filter ------------------------------------------------------------------------------- */

typedef struct {
    iss_agg *a;
    uint64_t fold_from;
    uint32_t fold_only;
    uint32_t max_taken;
    double now;
    iss_agg_info *ai;
} agg_ctx;

static int agg_filter(void *vctx, const iss_rec *r, const uint8_t *key, const uint8_t *sval, double fv,
                      int64_t iv, uint64_t pos)
{
    agg_ctx *c = vctx;
    iss_agg *a = c->a;
    const int pass = c->fold_only ? ISS_FILTER_SKIP : ISS_FILTER_ENCODE;
    uint64_t h = key_hash(r->bucket, key, r->keylen);
    int32_t k = find_entry(a, r->bucket, key, r->keylen, h);
    if (k < 0) {
        if (a->nents >= ISS_AGG_MAX_KEYS)
            return pass;
        c->ai->miss = 1;
        c->ai->miss_bucket = r->bucket;
        c->ai->miss_keylen = r->keylen; /* <= ISS_KEY_MAX: checked by the encoder */
        memcpy(c->ai->miss_key, key, r->keylen);
        return ISS_FILTER_STOP;
    }
    agg_entry *e = &a->ents[k];
    if (e->rule < 0)
        return pass;
    if (c->ai->taken >= c->max_taken)
        return ISS_FILTER_STOP;
    if (pos < c->fold_from) {
        c->ai->taken++; /* folded by an earlier call whose batch was not released */
        return ISS_FILTER_TAKE;
    }
    const agg_rule *rule = &a->rules[e->rule];
    const int is_int = r->type == ISS_T_I64;
    const int numeric = is_int || r->type == ISS_T_F64;
    const double ep = (isfinite(r->epoch) && r->epoch > 0.0) ? r->epoch : c->now;
    if (numeric && rule->kind == ISS_AGG_WINDOW) {
        if (fold_window(a, (uint32_t)k, rule, is_int, fv, iv, ep, c->now) != 0)
            return pass;
    } else {
        int send;
        if (numeric && rule->kind == ISS_AGG_DEADBAND) {
            int was_num = e->last_type == ISS_T_F64 || e->last_type == ISS_T_I64;
            send = !e->have_sent || !was_num || moved(e, rule, is_int, fv, iv);
        } else {
            send = !same_as_sent(e, r, sval, fv, iv);
        }
        if (!send && rule->heartbeat > 0.0 && ep - e->last_ep >= rule->heartbeat)
            send = 1;
        if (send) {
            if (remember(e, r, sval, is_int ? (double)iv : fv, iv, ep) != 0)
                return pass;
            emit_record(a, e, r, sval, fv, iv);
        }
    }
    a->c.folded++;
    c->ai->taken++;
    return ISS_FILTER_TAKE;
}

int64_t iss_agg_encode_batch(iss_agg *a, const uint8_t *base, uint64_t map_size, uint32_t seg_index,
                             uint64_t from, uint32_t max_events, char *out, size_t out_cap,
                             iss_batch *info, uint64_t fold_from, uint32_t fold_only,
                             uint32_t max_taken, double now, iss_agg_info *ai)
{
    if (a == NULL || ai == NULL)
        return ISS_EINVAL;
    ai->taken = 0;
    ai->miss = 0;
    ai->miss_bucket = 0;
    ai->miss_keylen = 0;
    agg_ctx c = {a, fold_from, fold_only, max_taken, now, ai};
    return iss_encode_batch_filtered(base, map_size, seg_index, from, max_events, out, out_cap, info,
                                     agg_filter, &c);
}
