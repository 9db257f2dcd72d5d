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

typedef struct {
    double end;
    uint64_t count;
    double sum, comp; /* Neumaier: the sum is sum + comp */
    double min, max;
    double first, first_ep, last, last_ep;
    double touched; /* the caller's clock (`now`) at the last event folded in */
} agg_win;

typedef struct {
    uint8_t *key;
    uint32_t keylen;
    uint32_t bucket;
    int32_t rule;
    uint64_t hash;
    agg_win *win; /* open windows (events of several processes may straddle two) */
    uint32_t nwin, capwin;
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
    uint32_t *table; /* open addressing: entry index + 1, 0 empty; size a power of two */
    uint32_t tsize;
    agg_out *outs; /* per bucket */
    uint32_t nouts;
    double next_due;
    iss_agg_counters c;
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
    a->next_due = INFINITY;
    return a;
}

void iss_agg_free(iss_agg *a)
{
    if (a == NULL)
        return;
    for (uint32_t i = 0; i < a->nents; i++) {
        free(a->ents[i].key);
        free(a->ents[i].win);
        free(a->ents[i].last_str);
    }
    for (uint32_t i = 0; i < a->nouts; i++)
        free(a->outs[i].buf);
    free(a->ents);
    free(a->table);
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
        a->c.dropped++;
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
    return a == NULL ? INFINITY : a->next_due;
}

/* ---- windows ------------------------------------------------------------------------------- */

static void emit_window(iss_agg *a, const agg_entry *e, const agg_rule *r, const agg_win *w)
{
    double total = w->sum + w->comp;
    for (uint32_t i = 0; i < 7u; i++) {
        if (!(r->stats & (1u << i)))
            continue;
        double v;
        switch (i) {
        case 0: v = total / (double)w->count; break;
        case 1: v = w->min; break;
        case 2: v = w->max; break;
        case 3: v = w->last; break;
        case 4: v = w->first; break;
        case 5:
            emit(a, e->bucket, e->key, e->keylen, STAT_SUFFIX[i], V_U64, 0.0, 0, w->count, NULL, 0, w->end);
            continue;
        default: v = total; break;
        }
        if (!isfinite(v)) {
            a->c.dropped++;
            continue;
        }
        emit(a, e->bucket, e->key, e->keylen, STAT_SUFFIX[i], V_F64, v, 0, 0, NULL, 0, w->end);
    }
    a->c.windows++;
}

/* A window is due once its end has passed and no event came for it since (a backlog of past
 * epochs keeps its window open while it is being folded): the later of the two. */
static double win_due(const agg_win *w)
{
    return w->end > w->touched ? w->end : w->touched;
}

uint32_t iss_agg_close(iss_agg *a, double cutoff)
{
    if (a == NULL || !(a->next_due <= cutoff))
        return 0;
    uint32_t closed = 0;
    double due = INFINITY;
    for (uint32_t k = 0; k < a->nents; k++) {
        agg_entry *e = &a->ents[k];
        if (e->nwin == 0 || e->rule < 0)
            continue;
        const agg_rule *r = &a->rules[e->rule];
        /* oldest first, so that a key's windows are sent in time order */
        for (;;) {
            uint32_t best = UINT32_MAX;
            for (uint32_t j = 0; j < e->nwin; j++) {
                if (win_due(&e->win[j]) <= cutoff && (best == UINT32_MAX || e->win[j].end < e->win[best].end))
                    best = j;
            }
            if (best == UINT32_MAX)
                break;
            emit_window(a, e, r, &e->win[best]);
            e->win[best] = e->win[e->nwin - 1u];
            e->nwin--;
            closed++;
        }
        for (uint32_t j = 0; j < e->nwin; j++) {
            if (win_due(&e->win[j]) < due)
                due = win_due(&e->win[j]);
        }
    }
    a->next_due = due;
    a->c.open -= closed;
    return closed;
}

/* Fold x (epoch ep) into e's window; 0, or -1 when out of memory (the caller passes it on). */
static int fold_window(iss_agg *a, agg_entry *e, const agg_rule *r, double x, double ep, double now)
{
    double end = (floor(ep / r->seconds) + 1.0) * r->seconds;
    agg_win *w = NULL;
    for (uint32_t j = 0; j < e->nwin; j++) {
        if (e->win[j].end == end) {
            w = &e->win[j];
            break;
        }
    }
    if (w == NULL) {
        if (e->nwin == e->capwin) {
            uint32_t cap = e->capwin ? e->capwin * 2u : 2u;
            agg_win *nw = realloc(e->win, (size_t)cap * sizeof *nw);
            if (nw == NULL)
                return -1;
            e->win = nw;
            e->capwin = cap;
        }
        w = &e->win[e->nwin++];
        memset(w, 0, sizeof *w);
        w->end = end;
        w->min = w->max = w->first = w->last = x;
        w->first_ep = w->last_ep = ep;
        w->touched = now;
        if (win_due(w) < a->next_due)
            a->next_due = win_due(w);
        a->c.open++;
    } else {
        w->touched = now;
        if (x < w->min)
            w->min = x;
        if (x > w->max)
            w->max = x;
        if (ep < w->first_ep) {
            w->first = x;
            w->first_ep = ep;
        }
        if (ep >= w->last_ep) {
            w->last = x;
            w->last_ep = ep;
        }
    }
    w->count++;
    double t = w->sum + x;
    if (fabs(w->sum) >= fabs(x))
        w->comp += (w->sum - t) + x;
    else
        w->comp += (x - t) + w->sum;
    w->sum = t;
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
    const int numeric = r->type == ISS_T_F64 || r->type == ISS_T_I64;
    const double x = r->type == ISS_T_F64 ? fv : (double)iv;
    const double ep = (isfinite(r->epoch) && r->epoch > 0.0) ? r->epoch : c->now;
    if (numeric && rule->kind == ISS_AGG_WINDOW) {
        if (fold_window(a, e, rule, x, ep, c->now) != 0)
            return pass;
    } else {
        int send;
        if (numeric && rule->kind == ISS_AGG_DEADBAND) {
            int was_num = e->last_type == ISS_T_F64 || e->last_type == ISS_T_I64;
            double d = fabs(x - e->last_num);
            if (!e->have_sent || !was_num)
                send = 1;
            else if (rule->absolute == 0.0 && rule->relative == 0.0)
                send = x != e->last_num;
            else
                send = (rule->absolute > 0.0 && d > rule->absolute) ||
                       (rule->relative > 0.0 && d > rule->relative * fabs(e->last_num));
        } else {
            send = !same_as_sent(e, r, sval, fv, iv);
        }
        if (!send && rule->heartbeat > 0.0 && ep - e->last_ep >= rule->heartbeat)
            send = 1;
        if (send) {
            if (remember(e, r, sval, x, iv, ep) != 0)
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
