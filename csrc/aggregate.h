/*
 * isstreamer aggregation kernel: per-key downsampling done by the sender while it drains.
 *
 * Records whose (bucket, key) is bound to a rule are taken out of the batch the encoder writes
 * and folded into per-key state: window statistics (mean, min, max, last, first, count, sum over
 * windows aligned to multiples of W seconds of the epoch), report by exception (deadband plus
 * heartbeat) or send-on-change. What the rules emit is kept per bucket as JSON events until
 * iss_agg_take() hands it over. Keys are bound by the caller (which matches the rule patterns):
 * a record of a key never bound stops the batch and is reported in iss_agg_info.miss_*.
 *
 * Cost: folding a record is O(1) expected (a hash of the open windows by key and window, the
 * last window of each key first); opening a window and closing one are O(log n) for n open
 * windows (a heap ordered by due time; the window due first is found without a scan).
 *
 * Arithmetic: integers are summed exactly (128 bits); floats with Neumaier's compensated sum,
 * kept scaled by 2^-64 from the first term that would overflow it, so a mean or a sum that is
 * representable is sent even when a partial sum is not. min/max/first/last/count are exact and
 * keep their type: a window that held only integers sends integers. A statistic that is not
 * representable is not sent and counted (iss_agg_counters.overflow).
 */
#ifndef ISS_AGGREGATE_H
#define ISS_AGGREGATE_H

#include "isstreamer.h"

#include <stddef.h>
#include <stdint.h>

#define ISS_AGG_WINDOW 1u
#define ISS_AGG_DEADBAND 2u
#define ISS_AGG_CHANGE 3u

/* statistics of a window rule (bit i: isstreamer.rules.STATS[i]) */
#define ISS_ST_MEAN 1u
#define ISS_ST_MIN 2u
#define ISS_ST_MAX 4u
#define ISS_ST_LAST 8u
#define ISS_ST_FIRST 16u
#define ISS_ST_COUNT 32u
#define ISS_ST_SUM 64u

#define ISS_AGG_MAX_KEYS (1u << 20)     /* keys beyond this many pass through unchanged */
#define ISS_AGG_MAX_WINDOWS (1u << 24) /* open windows beyond this many: their events pass through */

typedef struct iss_agg iss_agg;

/* What one iss_agg_encode_batch call did besides the iss_batch it fills. */
typedef struct {
    uint32_t taken;       /* records taken by a rule (folded now, or before fold_from) */
    uint32_t miss;        /* 1: stopped before a record whose key is not bound yet */
    uint32_t miss_bucket;
    uint32_t miss_keylen;
    char miss_key[ISS_KEY_MAX];
} iss_agg_info;

/* counters of iss_agg_counts() */
typedef struct {
    uint64_t folded;    /* records folded into a rule's state */
    uint64_t windows;   /* windows closed */
    uint64_t emitted;   /* events emitted (window statistics, deadband and change reports) */
    uint64_t overflow;  /* window statistics not emitted: not representable (a sum beyond 1.8e308) */
    uint64_t no_memory; /* events not emitted: no memory to keep them until they are taken */
    uint64_t open;      /* windows open now */
} iss_agg_counters;

/* The last statistic counted in iss_agg_counters.overflow (stat: its bit index, see ISS_ST_*). */
typedef struct {
    uint32_t bucket;
    uint32_t stat;
    double end;
    uint32_t keylen;
    char key[ISS_KEY_MAX];
} iss_agg_overflow;

iss_agg *iss_agg_new(void);
void iss_agg_free(iss_agg *a);
int32_t iss_agg_add_rule(iss_agg *a, uint32_t kind, uint32_t stats, double seconds, double absolute,
                         double relative, double heartbeat);
int iss_agg_bind(iss_agg *a, uint32_t bucket, const char *key, size_t keylen, int32_t rule);
int64_t iss_agg_encode_batch(iss_agg *a, const uint8_t *base, uint64_t map_size, uint32_t seg_index,
                             uint64_t from, uint32_t max_events, char *out, size_t out_cap,
                             iss_batch *info, uint64_t fold_from, uint32_t fold_only,
                             uint32_t max_taken, double now, iss_agg_info *ai);
/* Emit and close the windows whose end and last fold (the `now` of the encode call) are both
 * <= cutoff (INFINITY: every window), in order of window end (then of key binding); returns
 * how many. */
uint32_t iss_agg_close(iss_agg *a, double cutoff);
/* No window is due before this (INFINITY: none open); a window folded into since it was
 * opened may be due later than this says (iss_agg_close then finds it not due yet). */
double iss_agg_next_due(const iss_agg *a);
uint32_t iss_agg_nbuckets(const iss_agg *a);
uint32_t iss_agg_pending(const iss_agg *a, uint32_t bucket);
int64_t iss_agg_take(iss_agg *a, uint32_t bucket, uint32_t max_events, char *out, size_t out_cap,
                     uint32_t *nevents);
void iss_agg_counts(const iss_agg *a, iss_agg_counters *c);
/* 1 and *o filled when a statistic was counted in overflow since the last call, else 0. */
int iss_agg_last_overflow(iss_agg *a, iss_agg_overflow *o);

#endif
