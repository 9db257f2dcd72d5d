/*
 * Internal to the extension (not part of the cffi interface): the encoder loop of encode.c with a
 * per-record filter, and the JSON writers the aggregation kernel (aggregate.c) shares with it.
 */
#ifndef ISS_ENCODE_FILTER_H
#define ISS_ENCODE_FILTER_H

#include "isstreamer.h"

#include <stddef.h>
#include <stdint.h>

/* What the filter says of a record: */
#define ISS_FILTER_ENCODE 0 /* encode it into the batch as usual */
#define ISS_FILTER_TAKE 1   /* taken by the filter: not encoded, released with the batch */
#define ISS_FILTER_SKIP 2   /* not encoded (a pass that only folds; its batch is discarded) */
#define ISS_FILTER_STOP 3   /* stop the batch before this record */

/* Called once per valid record (non-finite numbers are skipped before); `key` has r->keylen
 * bytes, `sval` r->vallen bytes (strings); fv / iv hold the number of F64 / I64 records. */
typedef int (*iss_rec_filter)(void *ctx, const iss_rec *r, const uint8_t *key, const uint8_t *sval,
                              double fv, int64_t iv, uint64_t pos);

int64_t iss_encode_batch_filtered(const uint8_t *base, uint64_t map_size, uint32_t seg_index,
                                  uint64_t from, uint32_t max_events, char *out, size_t out_cap,
                                  iss_batch *info, iss_rec_filter filter, void *ctx);

/* JSON writers: a string with quotes (out needs 6 * n + 2 bytes), a signed integer (21 bytes). */
size_t iss_json_string(char *out, const uint8_t *s, size_t n);
size_t iss_json_i64(char *out, int64_t v);

#endif
