/*
 * isstreamer ring: layout, producer side, and atomics for the Python side.
 * See isstreamer.h for the layout. C11, no dynamic allocation, every access bounds-checked.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "isstreamer.h"
#include "atomics.h"
#include "platform.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(iss_ring_hdr) <= ISS_HDR_SIZE, "ring header too large");
_Static_assert(sizeof(iss_ring_hdr) == 512, "ring header layout changed");
_Static_assert(sizeof(iss_bucket) == ISS_BUCKET_SIZE, "bucket slot layout changed");
_Static_assert(sizeof(iss_seg_hdr) == ISS_SEG_HDR_SIZE, "segment header layout changed");
_Static_assert(sizeof(iss_rec) == ISS_REC_HDR_SIZE, "record header layout changed");
_Static_assert(offsetof(iss_ring_hdr, sender_pid) == 40, "sender_pid offset");
_Static_assert(offsetof(iss_ring_hdr, flush_seq) == 64, "flush_seq offset");
_Static_assert(offsetof(iss_ring_hdr, nbuckets_used) == 80, "nbuckets_used offset");
_Static_assert(offsetof(iss_ring_hdr, counters) == 128, "counters offset");
_Static_assert(offsetof(iss_ring_hdr, drops) == 384, "drops offset");
_Static_assert(offsetof(iss_seg_hdr, head) == 64, "head offset");
_Static_assert(offsetof(iss_seg_hdr, drops) == 80, "seg drops offset");
_Static_assert(offsetof(iss_seg_hdr, tail) == 256, "tail offset");
_Static_assert(offsetof(iss_rec, epoch) == 16, "epoch offset");
_Static_assert(sizeof(iss_slot) == ISS_SLOT_SIZE, "slot layout changed");
_Static_assert(offsetof(iss_ring_hdr, nslots_used) == 88, "nslots_used offset");
_Static_assert(offsetof(iss_ring_hdr, closing) == 48, "closing offset");
_Static_assert(offsetof(iss_ring_hdr, sleeping) == 56, "sleeping offset");
_Static_assert(offsetof(iss_ring_hdr, close_by) == 72, "close_by offset");
_Static_assert(offsetof(iss_ring_hdr, cut_seq) == 104, "cut_seq offset");
_Static_assert(offsetof(iss_seg_hdr, reserved) == 208, "reserved offset");
_Static_assert(offsetof(iss_seg_hdr, rel_end) == 272, "rel_end offset");
_Static_assert(offsetof(iss_seg_hdr, rel_consumed) == 280, "rel_consumed offset");
_Static_assert(offsetof(iss_seg_hdr, lost) == 288, "lost offset");
_Static_assert(ISS_DROP_NO_SPACE < ISS_NDROPS, "drop reason index");

/* ---- interned keys: a process-local table, chunks never move once allocated ---- */
typedef struct {
    uint16_t len;
    char bytes[];
} iss_key;

static iss_key **keytab[ISS_KEYTAB_CHUNKS];
static uint32_t keytab_n;
static uint32_t keytab_lock;

#define LOAD_ACQ(p) ISS_LOAD_ACQ(p)
#define LOAD_RLX(p) ISS_LOAD_RLX(p)
#define STORE_REL(p, v) ISS_STORE_REL(p, v)

uint64_t iss_layout_size(uint32_t nsegs, uint32_t seg_data_size, uint32_t nbuckets)
{
    /* UINT64_MAX when the dimensions overflow: no mapping can hold that, so checks refuse it */
    uint64_t segs, total;
    if (iss_mul_overflow_u64((uint64_t)nsegs, (uint64_t)ISS_SEG_HDR_SIZE + seg_data_size, &segs) ||
        iss_add_overflow_u64(segs, (uint64_t)ISS_HDR_SIZE + (uint64_t)nbuckets * ISS_BUCKET_SIZE, &total))
        return UINT64_MAX;
    return total;
}

static uint64_t seg_offset(const iss_ring_hdr *h, uint32_t i)
{
    return (uint64_t)ISS_HDR_SIZE + (uint64_t)h->nbuckets * ISS_BUCKET_SIZE +
           (uint64_t)i * ((uint64_t)ISS_SEG_HDR_SIZE + h->seg_data_size);
}

int iss_ring_init(uint8_t *base, uint64_t map_size, uint32_t nsegs, uint32_t seg_data_size,
                  uint32_t nbuckets)
{
    if (base == NULL || nsegs == 0 || nbuckets == 0 || nbuckets > 65535u ||
        seg_data_size < ISS_SEG_DATA_MIN || seg_data_size % 8u != 0)
        return ISS_EINVAL;
    uint64_t need = iss_layout_size(nsegs, seg_data_size, nbuckets);
    if (need > map_size)
        return ISS_EINVAL;
    iss_ring_hdr *h = (iss_ring_hdr *)base;
    h->version = ISS_LAYOUT_VERSION;
    h->hdr_size = ISS_HDR_SIZE;
    h->nsegs = nsegs;
    h->seg_data_size = seg_data_size;
    h->nbuckets = nbuckets;
    h->bucket_size = ISS_BUCKET_SIZE;
    h->total_size = need;
    STORE_REL(&h->magic, ISS_MAGIC);
    return ISS_OK;
}

int iss_ring_check(const uint8_t *base, uint64_t map_size)
{
    if (base == NULL || map_size < ISS_HDR_SIZE)
        return ISS_EINVAL;
    const iss_ring_hdr *h = (const iss_ring_hdr *)base;
    if (LOAD_ACQ(&h->magic) != ISS_MAGIC || h->version != ISS_LAYOUT_VERSION ||
        h->hdr_size != ISS_HDR_SIZE || h->bucket_size != ISS_BUCKET_SIZE || h->nsegs == 0 ||
        h->nbuckets == 0 || h->nbuckets > 65535u || h->seg_data_size < ISS_SEG_DATA_MIN ||
        h->seg_data_size % 8u != 0)
        return ISS_EINVAL;
    if (iss_layout_size(h->nsegs, h->seg_data_size, h->nbuckets) > map_size)
        return ISS_EINVAL;
    return ISS_OK;
}

int iss_producer_attach(iss_producer *p, uint8_t *base, uint64_t map_size, uint32_t seg_index)
{
    if (p == NULL || iss_ring_check(base, map_size) != ISS_OK)
        return ISS_EINVAL;
    const iss_ring_hdr *h = (const iss_ring_hdr *)base;
    if (seg_index >= h->nsegs)
        return ISS_EINVAL;
    uint64_t off = seg_offset(h, seg_index);
    p->base = base;
    p->map_size = map_size;
    p->seg = (iss_seg_hdr *)(base + off);
    p->data = base + off + ISS_SEG_HDR_SIZE;
    p->data_size = h->seg_data_size;
    p->cached_tail = LOAD_ACQ(&p->seg->tail);
    p->seg_index = seg_index;
    p->dropping = 0;
    p->reserve = 0;
    p->wake = NULL;
    p->woke = 0;
    p->own_guard.lock = 0;
    p->own_guard.closed = 0;
    p->guard = &p->own_guard;
    p->cached_reserved = 0;
    p->check_every = 0;
    p->check_at = 0;
    p->retry_ns = 0;
    p->retry_at = 0;
    if (p->bucket > 65535u) /* records carry a u16 index into the table's buckets */
        p->bucket = 0;
    return ISS_OK;
}

/* The key table's lock is process-local: fork() copies it in whatever state another thread left
 * it. Taking it around fork (the before / after hooks, registered with os.register_at_fork)
 * means no child starts with it held and the table is never copied half-updated. */
void iss_before_fork(void)
{
    while (ISS_XCHG_ACQ(&keytab_lock, 1u) != 0)
        iss_yield();
}

void iss_after_fork_parent(void) { STORE_REL(&keytab_lock, 0u); }

void iss_after_fork_child(void) { STORE_REL(&keytab_lock, 0u); }

/* The guard's lock: held only inside a C call (never across Python code, so a Python signal
 * handler never waits for it), for the few hundred nanoseconds of one put. */
static void guard_lock(iss_guard *g)
{
    unsigned spins = 0;
    while (ISS_XCHG_ACQ(&g->lock, (uint64_t)1) != 0) {
        while (LOAD_RLX(&g->lock) != 0) {
            if (++spins >= 64u) {
                iss_yield();
                spins = 0;
            }
        }
    }
}

static void guard_unlock(iss_guard *g) { STORE_REL(&g->lock, (uint64_t)0); }

void iss_guard_close(iss_guard *g)
{
    if (g == NULL)
        return;
    guard_lock(g); /* waits for a put in progress: after this, none touches the segment */
    ISS_STORE_RLX(&g->closed, (uint64_t)1);
    guard_unlock(g);
}

/* Append one record. num: the 8 value bytes of F64/I64, or NULL.
 *
 * Under the guard's lock: refuse if closed; room (tail) and reserved pages (reserved) ahead of
 * head, else ISS_FULL / ISS_RESERVE (or, in a drop episode, count the drop: ISS_DROPPED); write
 * the record; publish head (release: the consumer's acquire load of head sees the record);
 * then the Dekker check of the sender's `sleeping` word (ISS_WAKE) and the liveness interval
 * (ISS_CHECK). Nothing is read or written outside the lock: see iss_guard. */
static int put(iss_producer *p, uint8_t type, const char *key, size_t keylen, const void *num,
               const char *s, size_t slen, double epoch)
{
    if (p == NULL || p->seg == NULL || p->guard == NULL || key == NULL)
        return ISS_EINVAL;
    if (keylen == 0 || keylen > ISS_KEY_MAX || slen > ISS_STR_MAX || (slen > 0 && s == NULL))
        return ISS_ETOOBIG;
    size_t body = ISS_REC_HDR_SIZE + (num != NULL ? 8u : 0u) + keylen + slen;
    uint64_t size = ((uint64_t)body + 7u) & ~(uint64_t)7u;
    if (isnan(epoch))
        epoch = iss_now_realtime();

    iss_guard *g = p->guard;
    guard_lock(g);
    if (LOAD_RLX(&g->closed)) {
        guard_unlock(g);
        return ISS_CLOSED;
    }
    iss_seg_hdr *seg = p->seg;
    const uint64_t ds = p->data_size;
    uint64_t head = LOAD_RLX(&seg->head);
    uint64_t off = head % ds;
    uint64_t contig = ds - off;
    uint64_t need = size <= contig ? size : contig + size;
    if (head + need - p->cached_tail > ds) {
        p->cached_tail = LOAD_ACQ(&seg->tail);
        if (head + need - p->cached_tail > ds) {
            int rc = ISS_FULL;
            if (p->dropping) { /* one wait per full episode; after it, drops cost a put */
                ISS_ADD_RLX(&seg->drops[ISS_DROP_RING_FULL], (uint64_t)1);
                rc = ISS_DROPPED;
            }
            guard_unlock(g);
            return rc;
        }
    }
    if (p->reserve && head + need > p->cached_reserved) {
        p->cached_reserved = LOAD_ACQ(&seg->reserved);
        if (head + need > p->cached_reserved) {
            int rc = ISS_RESERVE;
            if (p->dropping) { /* no space to reserve: drops cost a put, a retry once per retry_ns */
                uint64_t now = iss_now_mono_ns();
                if (now < p->retry_at) {
                    ISS_ADD_RLX(&seg->drops[ISS_DROP_NO_SPACE], (uint64_t)1);
                    rc = ISS_DROPPED;
                } else {
                    p->retry_at = now + p->retry_ns;
                }
            }
            guard_unlock(g);
            return rc;
        }
    }
    p->dropping = 0;
    uint8_t *d = p->data;
    if (size > contig) {
        /* pad to the end of the data area; contig >= 8 since everything is 8-aligned */
        uint32_t padsize = (uint32_t)contig;
        uint8_t padtype = ISS_T_PAD;
        memcpy(d + off, &padsize, 4);
        memcpy(d + off + 4, &padtype, 1);
        memset(d + off + 5, 0, 3);
        head += contig;
        off = 0;
    }
    iss_rec r;
    memset(&r, 0, sizeof r);
    r.size = (uint32_t)size;
    r.type = type;
    r.bucket = (uint16_t)p->bucket;
    r.keylen = (uint16_t)keylen;
    r.vallen = (uint32_t)slen;
    r.epoch = epoch;
    uint8_t *w = d + off;
    memcpy(w, &r, sizeof r);
    w += sizeof r;
    if (num != NULL) {
        memcpy(w, num, 8);
        w += 8;
    }
    memcpy(w, key, keylen);
    w += keylen;
    if (slen > 0) {
        memcpy(w, s, slen);
        w += slen;
    }
    size_t padbytes = (size_t)(size - body);
    if (padbytes > 0)
        memset(w, 0, padbytes);
    /* publish: pairs with the consumer's acquire load of head (encode.c) */
    STORE_REL(&seg->head, head + size);
    STORE_REL(&seg->logged, LOAD_RLX(&seg->logged) + 1u);
    int rc = ISS_OK;
    if (p->wake != NULL) {
        /* Dekker with the sender: it stores `sleeping` then loads every head; we store head then
         * load `sleeping`. The full fences order each store before the other side's load, so
         * at least one of us sees the other: an idle sender is never left asleep on an event. */
        ISS_FENCE_SEQ();
        uint64_t sleep = LOAD_RLX(p->wake);
        if (sleep != 0 && sleep != p->woke) { /* ring once per sleep, not on every put */
            p->woke = sleep;
            rc = ISS_WAKE;
        }
    }
    if (rc == ISS_OK && p->check_every != 0) {
        uint64_t now = iss_now_mono_ns();
        if (now >= p->check_at) {
            p->check_at = now + p->check_every;
            rc = ISS_CHECK;
        }
    }
    guard_unlock(g);
    return rc;
}

int iss_put_f64(iss_producer *p, const char *key, size_t keylen, double v, double epoch)
{
    if (!isfinite(v))
        return ISS_EINVAL;
    return put(p, ISS_T_F64, key, keylen, &v, NULL, 0, epoch);
}

int iss_put_i64(iss_producer *p, const char *key, size_t keylen, int64_t v, double epoch)
{
    return put(p, ISS_T_I64, key, keylen, &v, NULL, 0, epoch);
}

int iss_put_bool(iss_producer *p, const char *key, size_t keylen, int v, double epoch)
{
    return put(p, v ? ISS_T_TRUE : ISS_T_FALSE, key, keylen, NULL, NULL, 0, epoch);
}

int iss_put_str(iss_producer *p, const char *key, size_t keylen, const char *s, size_t slen,
                double epoch)
{
    return put(p, ISS_T_STR, key, keylen, NULL, s, slen, epoch);
}

int32_t iss_key_intern(const char *key, size_t keylen)
{
    if (key == NULL || keylen == 0 || keylen > ISS_KEY_MAX)
        return ISS_ETOOBIG;
    iss_key *k = malloc(sizeof(iss_key) + keylen);
    if (k == NULL)
        return ISS_EINVAL;
    k->len = (uint16_t)keylen;
    memcpy(k->bytes, key, keylen);
    while (ISS_XCHG_ACQ(&keytab_lock, 1u) != 0)
        iss_yield();
    int32_t id = ISS_EINVAL;
    uint32_t n = keytab_n;
    if (n < ISS_KEYTAB_CHUNK * ISS_KEYTAB_CHUNKS) {
        uint32_t c = n / ISS_KEYTAB_CHUNK;
        if (keytab[c] == NULL)
            keytab[c] = calloc(ISS_KEYTAB_CHUNK, sizeof(iss_key *));
        if (keytab[c] != NULL) {
            STORE_REL(&keytab[c][n % ISS_KEYTAB_CHUNK], k);
            STORE_REL(&keytab_n, n + 1u);
            id = (int32_t)n;
        }
    }
    STORE_REL(&keytab_lock, 0u);
    if (id < 0)
        free(k);
    return id;
}

static const iss_key *key_get(uint32_t id)
{
    if (id >= LOAD_ACQ(&keytab_n))
        return NULL;
    iss_key **chunk = keytab[id / ISS_KEYTAB_CHUNK];
    return chunk ? LOAD_ACQ(&chunk[id % ISS_KEYTAB_CHUNK]) : NULL;
}

int iss_log_f64_at(iss_producer *p, uint32_t key_id, double v, double epoch)
{
    const iss_key *k = key_get(key_id);
    if (k == NULL || !isfinite(v))
        return ISS_EINVAL;
    return put(p, ISS_T_F64, k->bytes, k->len, &v, NULL, 0, epoch);
}

int iss_log_i64_at(iss_producer *p, uint32_t key_id, int64_t v, double epoch)
{
    const iss_key *k = key_get(key_id);
    if (k == NULL)
        return ISS_EINVAL;
    return put(p, ISS_T_I64, k->bytes, k->len, &v, NULL, 0, epoch);
}

int iss_log_bool_at(iss_producer *p, uint32_t key_id, int v, double epoch)
{
    const iss_key *k = key_get(key_id);
    if (k == NULL)
        return ISS_EINVAL;
    return put(p, v ? ISS_T_TRUE : ISS_T_FALSE, k->bytes, k->len, NULL, NULL, 0, epoch);
}

int iss_log_str_at(iss_producer *p, uint32_t key_id, const char *s, size_t slen, double epoch)
{
    const iss_key *k = key_get(key_id);
    if (k == NULL)
        return ISS_EINVAL;
    return put(p, ISS_T_STR, k->bytes, k->len, NULL, s, slen, epoch);
}

/* ---- 64-bit atomics at a byte offset of the mapping (bounds and alignment checked) ---- */

static uint64_t *field(const uint8_t *base, uint64_t map_size, uint64_t off)
{
    if (base == NULL || off % 8u != 0 || map_size < 8u || off > map_size - 8u)
        return NULL;
    return (uint64_t *)(uintptr_t)(base + off);
}

uint64_t iss_load64(const uint8_t *base, uint64_t map_size, uint64_t off)
{
    uint64_t *f = field(base, map_size, off);
    return f ? LOAD_ACQ(f) : 0;
}

void iss_store64(uint8_t *base, uint64_t map_size, uint64_t off, uint64_t v)
{
    uint64_t *f = field(base, map_size, off);
    if (f)
        STORE_REL(f, v);
}

uint64_t iss_add64(uint8_t *base, uint64_t map_size, uint64_t off, uint64_t v)
{
    uint64_t *f = field(base, map_size, off);
    return f ? ISS_ADD_ACQREL(f, v) : 0;
}
