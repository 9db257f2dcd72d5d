/*
 * isstreamer aggregation kernel: per-key downsampling done by the sender while it drains.
 *
 * Records whose (bucket, key) is bound to a rule are taken out of the batch the encoder writes
 * and folded into per-key state: window statistics (mean, min, max, last, first, count, sum over
 * windows aligned to multiples of W seconds of the epoch), report by exception (deadband plus
 * heartbeat) or send-on-change. What the rules emit is kept per bucket as JSON events until
 * iss_agg_take() hands it over. Keys are bound by the caller (which matches the rule patterns):
 * a record of a key never bound stops the batch and is reported in iss_agg_info.miss_*.
 * Sums use Neumaier's compensated summation; min/max/first/last/count are exact.
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

#define ISS_AGG_MAX_KEYS (1u << 20) /* keys beyond this many pass through unchanged */

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
    uint64_t folded;  /* records folded into a rule's state */
    uint64_t windows; /* windows closed */
    uint64_t emitted; /* events emitted (window statistics, deadband and change reports) */
    uint64_t dropped; /* window statistics not emitted: not finite (a sum overflowed) */
    uint64_t open;    /* windows open now */
} iss_agg_counters;

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
 * <= cutoff (INFINITY: every window); returns how many. */
uint32_t iss_agg_close(iss_agg *a, double cutoff);
double iss_agg_next_due(const iss_agg *a);
uint32_t iss_agg_nbuckets(const iss_agg *a);
uint32_t iss_agg_pending(const iss_agg *a, uint32_t bucket);
int64_t iss_agg_take(iss_agg *a, uint32_t bucket, uint32_t max_events, char *out, size_t out_cap,
                     uint32_t *nevents);
void iss_agg_counts(const iss_agg *a, iss_agg_counters *c);

#endif
