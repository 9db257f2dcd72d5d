/*
 * Fuzz target (a): iss_encode_batch on arbitrary segment bytes, head and start position.
 *
 * Input (little-endian; short inputs are zero-extended to the 37-byte preamble):
 *   0  u8  flags   bit 0: hostile header (fields 17..36 used); bits 1-3: k, the segment's data
 *                  size is ISS_SEG_DATA_MIN + 8*k
 *   1  u64 from    position the encoder starts at
 *   9  u32 delta   head = from + delta (mod 2^64)
 *   13 u16 max_events
 *   15 u16 out_extra  out_cap = the encoder's minimum + out_extra
 *   17 u32 nsegs, 21 u32 seg_data_size, 25 u32 nbuckets, 29 u32 seg_index, 33 u32 map_size
 *          (hostile header only: the header claims these, the mapping really has
 *           4096 + map_size % 262144 bytes; head is written where the segment would be)
 *   37...  payload: copied into the data area starting at from % seg_data_size (wrapping), or
 *          (hostile header) over everything after the ring header.
 * Normal mode maps 2 segments and encodes the last one, so the data area ends exactly where the
 * allocation ends: any read past it is an ASan report.
 *
 * Checks: no crash, no out-of-bounds access (ASan), no UB (UBSan); the output fits out_cap and
 * is a strict JSON event array with exactly `nevents` events; `end` stays in [from, head] on
 * 8-byte boundaries (head when corrupt); the encoder always makes progress on a non-empty,
 * well-placed range. tests/test_fuzz_regressions.py replays these inputs through cffi.
 */
#include "../isstreamer.h"
#include "json_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREAMBLE 37u
#define OUT_MIN (96u + 6u * ISS_KEY_MAX + 6u * ISS_STR_MAX + 2u)

static uint64_t rd(const uint8_t *b, size_t off, size_t n)
{
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++)
        v |= (uint64_t)b[off + k] << (8 * k);
    return v;
}

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "fuzz_encode: check failed: %s (line %d)\n", #cond, __LINE__);       \
            abort();                                                                              \
        }                                                                                         \
    } while (0)

static jc_event g_ev;

static void check_output(const char *out, int64_t rc, size_t out_cap, const iss_batch *info)
{
    CHECK(rc >= 2 && (uint64_t)rc <= out_cap);
    long n = jc_check_batch(out, (size_t)rc, &g_ev, NULL, NULL);
    if (n < 0) {
        fprintf(stderr, "fuzz_encode: invalid JSON (%lld bytes): %.*s\n", (long long)rc,
                (int)(rc < 2000 ? rc : 2000), out);
        abort();
    }
    CHECK((uint64_t)n == info->nevents);
}

static void run_hostile(const uint8_t *hdr, const uint8_t *payload, size_t plen)
{
    size_t map_size = ISS_HDR_SIZE + ((size_t)rd(hdr, 33, 4) % 262144u);
    map_size &= ~(size_t)7u;
    uint8_t *base = malloc(map_size);
    if (base == NULL)
        return;
    memset(base, 0, map_size);
    for (size_t k = ISS_HDR_SIZE; k < map_size && plen > 0; k++)
        base[k] = payload[(k - ISS_HDR_SIZE) % plen];
    iss_ring_hdr *h = (iss_ring_hdr *)base;
    h->magic = ISS_MAGIC;
    h->version = ISS_LAYOUT_VERSION;
    h->hdr_size = ISS_HDR_SIZE;
    h->nsegs = (uint32_t)rd(hdr, 17, 4);
    h->seg_data_size = (uint32_t)rd(hdr, 21, 4);
    h->nbuckets = (uint32_t)rd(hdr, 25, 4);
    h->bucket_size = ISS_BUCKET_SIZE;
    uint32_t seg_index = (uint32_t)rd(hdr, 29, 4);
    /* publish head = from + delta where the (wrapping) layout arithmetic puts the segment */
    uint64_t seg_off = (uint64_t)ISS_HDR_SIZE + (uint64_t)h->nbuckets * ISS_BUCKET_SIZE +
                       (uint64_t)seg_index * ((uint64_t)ISS_SEG_HDR_SIZE + h->seg_data_size);
    if (seg_off <= map_size - ISS_SEG_HDR_SIZE && map_size >= ISS_SEG_HDR_SIZE)
        memcpy(base + seg_off + 64, &(uint64_t){rd(hdr, 1, 8) + rd(hdr, 9, 4)}, 8);
    size_t out_cap = OUT_MIN + (size_t)rd(hdr, 15, 2);
    char *out = malloc(out_cap);
    iss_batch info;
    if (out != NULL) {
        int64_t rc = iss_encode_batch(base, map_size, seg_index, rd(hdr, 1, 8),
                                      (uint32_t)rd(hdr, 13, 2), out, out_cap, &info);
        if (rc != ISS_EINVAL)
            check_output(out, rc, out_cap, &info);
    }
    free(out);
    free(base);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t hdr[PREAMBLE];
    memset(hdr, 0, sizeof hdr);
    memcpy(hdr, data, size < PREAMBLE ? size : PREAMBLE);
    const uint8_t *payload = size > PREAMBLE ? data + PREAMBLE : NULL;
    size_t plen = size > PREAMBLE ? size - PREAMBLE : 0;
    if (hdr[0] & 1u) {
        run_hostile(hdr, payload, plen);
        return 0;
    }
    const uint32_t ds = ISS_SEG_DATA_MIN + 8u * ((hdr[0] >> 1) & 7u);
    const uint32_t nsegs = 2, nbuckets = 1, seg = 1;
    const uint64_t map_size = iss_layout_size(nsegs, ds, nbuckets);
    uint8_t *base = calloc(1, (size_t)map_size);
    size_t out_cap = OUT_MIN + (size_t)rd(hdr, 15, 2);
    char *out = malloc(out_cap);
    if (base == NULL || out == NULL) {
        free(base);
        free(out);
        return 0;
    }
    CHECK(iss_ring_init(base, map_size, nsegs, ds, nbuckets) == ISS_OK);
    const uint64_t from = rd(hdr, 1, 8);
    const uint64_t head = from + rd(hdr, 9, 4);
    const uint32_t max_events = (uint32_t)rd(hdr, 13, 2);
    uint64_t seg_off = (uint64_t)ISS_HDR_SIZE + (uint64_t)nbuckets * ISS_BUCKET_SIZE +
                       (uint64_t)seg * (ISS_SEG_HDR_SIZE + ds);
    iss_seg_hdr *sh = (iss_seg_hdr *)(base + seg_off);
    uint8_t *d = base + seg_off + ISS_SEG_HDR_SIZE;
    for (size_t k = 0; k < plen && k < ds; k++)
        d[(from + k) % ds] = payload[k];
    __atomic_store_n(&sh->head, head, __ATOMIC_RELEASE);
    __atomic_store_n(&sh->tail, from, __ATOMIC_RELEASE);

    iss_batch info;
    int64_t rc = iss_encode_batch(base, map_size, seg, from, max_events, out, out_cap, &info);
    CHECK(rc != ISS_EINVAL);
    check_output(out, rc, out_cap, &info);
    CHECK(info.nevents <= max_events);
    if (info.corrupt) {
        CHECK(info.end == head);
        CHECK(info.nevents == 0);
    } else {
        CHECK(info.end >= from && info.end <= head);
        CHECK(info.end % 8u == 0);
        /* a non-empty, well-placed range always moves forward */
        if (from < head && max_events > 0)
            CHECK(info.end > from);
    }
    free(out);
    free(base);
    return 0;
}
