/*
 * isstreamer encoder: turns the records of one ring segment into a JSON array that the
 * Initial State events API accepts: [{"key":"k","value":21.5,"epoch":1764270000.123456},...]
 *
 * Strict JSON only: strings are escaped and invalid UTF-8 becomes U+FFFD; non-finite numbers
 * never appear (such a record is skipped and counted); floats are printed with the shortest
 * precision that round-trips exactly, epochs too (the float given, not rounded).
 * Every read of the mapping is bounds-checked against the segment and the published head, and
 * the segment against the mapping (the header is not trusted: its sizes may wrap 64 bits).
 * Positions are compared as differences (head - pos), never as sums that could wrap near 2^64.
 */
#include "isstreamer.h"
#include "dtoa.h"
#include "encode_filter.h"
#include "atomics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOAD_ACQ(p) ISS_LOAD_ACQ(p)

static const char HEX[] = "0123456789abcdef";

/* Escaped size bound of n input bytes: 6 output bytes per input byte at most. */
#define ESC_BOUND(n) ((size_t)(n) * 6u)
/* Bound of one encoded event besides its key and string: punctuation, a number, an epoch. */
#define EVENT_OVERHEAD 96u

static size_t utf8_seq_len(const uint8_t *s, size_t n)
{
    /* Length of a valid UTF-8 sequence at s (n bytes available), 0 if invalid. */
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && s[1] < 0xA0)
            return 0; /* overlong */
        if (c == 0xED && s[1] >= 0xA0)
            return 0; /* surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && s[1] < 0x90)
            return 0; /* overlong */
        if (c == 0xF4 && s[1] >= 0x90)
            return 0; /* > U+10FFFF */
        return 4;
    }
    return 0;
}

/* Write a JSON string (with quotes). out must have ESC_BOUND(n) + 2 bytes free. */
static size_t put_json_string(char *out, const uint8_t *s, size_t n)
{
    size_t w = 0;
    out[w++] = '"';
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            out[w++] = (char)c;
            i++;
            continue;
        }
        if (c < 0x80) {
            out[w++] = '\\';
            switch (c) {
            case '"': out[w++] = '"'; break;
            case '\\': out[w++] = '\\'; break;
            case '\n': out[w++] = 'n'; break;
            case '\r': out[w++] = 'r'; break;
            case '\t': out[w++] = 't'; break;
            case '\b': out[w++] = 'b'; break;
            case '\f': out[w++] = 'f'; break;
            default:
                out[w++] = 'u';
                out[w++] = '0';
                out[w++] = '0';
                out[w++] = HEX[c >> 4];
                out[w++] = HEX[c & 15];
            }
            i++;
            continue;
        }
        size_t len = utf8_seq_len(s + i, n - i);
        if (len == 0) {
            memcpy(out + w, "\\ufffd", 6);
            w += 6;
            i++;
        } else {
            memcpy(out + w, s + i, len);
            w += len;
            i += len;
        }
    }
    out[w++] = '"';
    return w;
}

static size_t put_u64(char *out, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + (v % 10u));
        v /= 10u;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static size_t put_i64(char *out, int64_t v)
{
    if (v < 0) {
        out[0] = '-';
        /* negate in unsigned arithmetic: defined for INT64_MIN too */
        return 1 + put_u64(out + 1, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(out, (uint64_t)v);
}

size_t iss_format_double(double v, char *out, size_t cap)
{
    /* Python repr(v): shortest digits that round-trip (Schubfach, csrc/dtoa.c). */
    return iss_dtoa(v, out, cap);
}

/* Epoch seconds as the float given: the shortest decimal that reads back as exactly that
 * double (as values are, and as Python's repr(); the fallback encoder writes the same text). */
static size_t put_epoch(char *out, double epoch)
{
    return iss_format_double(epoch, out, ISS_DTOA_MAX_LEN);
}

/* Offset of segment i when all of it (header and data) lies inside the mapping, else 0.
 * Overflow-safe: a hostile header can claim sizes whose product wraps 64 bits. */
static uint64_t seg_in_map(const iss_ring_hdr *h, uint64_t map_size, uint32_t i)
{
    const uint64_t first = (uint64_t)ISS_HDR_SIZE + (uint64_t)h->nbuckets * ISS_BUCKET_SIZE;
    const uint64_t stride = (uint64_t)ISS_SEG_HDR_SIZE + h->seg_data_size;
    if (i >= h->nsegs || first > map_size || stride > map_size - first)
        return 0;
    if ((uint64_t)i >= (map_size - first) / stride)
        return 0;
    return first + (uint64_t)i * stride;
}

size_t iss_json_string(char *out, const uint8_t *s, size_t n)
{
    return put_json_string(out, s, n);
}

size_t iss_json_i64(char *out, int64_t v)
{
    return put_i64(out, v);
}

int64_t iss_encode_batch(const uint8_t *base, uint64_t map_size, uint32_t seg_index,
                         uint64_t from, uint32_t max_events, char *out, size_t out_cap,
                         iss_batch *info)
{
    return iss_encode_batch_filtered(base, map_size, seg_index, from, max_events, out, out_cap,
                                     info, NULL, NULL);
}

/* The encoder loop; `filter` (may be NULL) decides per record (see encode_filter.h). */
int64_t iss_encode_batch_filtered(const uint8_t *base, uint64_t map_size, uint32_t seg_index,
                                  uint64_t from, uint32_t max_events, char *out, size_t out_cap,
                                  iss_batch *info, iss_rec_filter filter, void *ctx)
{
    if (info == NULL || out == NULL || iss_ring_check(base, map_size) != ISS_OK)
        return ISS_EINVAL;
    memset(info, 0, sizeof *info);
    info->end = from;
    const iss_ring_hdr *h = (const iss_ring_hdr *)base;
    const uint64_t off0 = seg_in_map(h, map_size, seg_index);
    if (off0 == 0)
        return ISS_EINVAL;
    /* one event of the largest size must always fit, with the brackets */
    const size_t worst = EVENT_OVERHEAD + ESC_BOUND(ISS_KEY_MAX) + ESC_BOUND(ISS_STR_MAX);
    if (out_cap < worst + 2u)
        return ISS_EINVAL;
    const iss_seg_hdr *seg = (const iss_seg_hdr *)(base + off0);
    const uint8_t *d = base + off0 + ISS_SEG_HDR_SIZE;
    const uint64_t ds = h->seg_data_size;
    const uint64_t head = LOAD_ACQ(&seg->head);

    if (from > head || head - from > ds || from % 8u != 0) {
        info->corrupt = 1;
        info->end = head;
        out[0] = '[';
        out[1] = ']';
        return 2;
    }

    size_t w = 0;
    out[w++] = '[';
    uint64_t pos = from;
    uint32_t n = 0;
    int have_bucket = 0;
    while (pos < head && n < max_events) {
        uint64_t off = pos % ds;
        uint64_t contig = ds - off;
        uint32_t size;
        uint8_t type;
        memcpy(&size, d + off, 4);
        memcpy(&type, d + off + 4, 1);
        if (type == ISS_T_PAD) {
            /* compare with head - pos (pos <= head): pos + size can wrap near 2^64 */
            if (size != contig || contig > head - pos)
                goto corrupt;
            pos += contig;
            continue;
        }
        if (size < ISS_REC_HDR_SIZE || size % 8u != 0 || size > contig || size > ISS_REC_MAX ||
            size > head - pos)
            goto corrupt;
        iss_rec r;
        memcpy(&r, d + off, sizeof r);
        int numeric = (r.type == ISS_T_F64 || r.type == ISS_T_I64);
        size_t body = ISS_REC_HDR_SIZE + (numeric ? 8u : 0u) + (size_t)r.keylen + r.vallen;
        if (r.type < ISS_T_F64 || r.type > ISS_T_FALSE || r.keylen == 0 ||
            r.keylen > ISS_KEY_MAX || r.vallen > ISS_STR_MAX || body > size ||
            (r.type != ISS_T_STR && r.vallen != 0))
            goto corrupt;
        const uint8_t *p = d + off + ISS_REC_HDR_SIZE;
        double fv = 0.0;
        int64_t iv = 0;
        if (numeric) {
            memcpy(r.type == ISS_T_F64 ? (void *)&fv : (void *)&iv, p, 8);
            if (r.type == ISS_T_F64 && !isfinite(fv)) {
                /* never produce NaN/Infinity: skip this one record, count it */
                info->skipped++;
                pos += size;
                continue;
            }
        }
        if (filter != NULL) {
            const uint8_t *kp = p + (numeric ? 8u : 0u);
            int fr = filter(ctx, &r, kp, kp + r.keylen, fv, iv, pos);
            if (fr == ISS_FILTER_STOP)
                break;
            if (fr == ISS_FILTER_TAKE || fr == ISS_FILTER_SKIP) {
                pos += size;
                continue;
            }
        }
        if (have_bucket && r.bucket != info->bucket)
            break;
        if (w + worst + 1u > out_cap)
            break;
        if (numeric)
            p += 8;
        if (!have_bucket) {
            info->bucket = r.bucket;
            have_bucket = 1;
        }
        if (n > 0)
            out[w++] = ',';
        memcpy(out + w, "{\"key\":", 7);
        w += 7;
        w += put_json_string(out + w, p, r.keylen);
        p += r.keylen;
        memcpy(out + w, ",\"value\":", 9);
        w += 9;
        switch (r.type) {
        case ISS_T_F64: w += iss_format_double(fv, out + w, 40); break;
        case ISS_T_I64: w += put_i64(out + w, iv); break;
        case ISS_T_TRUE: memcpy(out + w, "true", 4); w += 4; break;
        case ISS_T_FALSE: memcpy(out + w, "false", 5); w += 5; break;
        default: w += put_json_string(out + w, p, r.vallen); break;
        }
        if (isfinite(r.epoch) && r.epoch > 0.0) {
            memcpy(out + w, ",\"epoch\":", 9);
            w += 9;
            w += put_epoch(out + w, r.epoch);
        }
        out[w++] = '}';
        n++;
        pos += size;
    }
    out[w++] = ']';
    info->end = pos;
    info->nevents = n;
    return (int64_t)w;

corrupt:
    if (n > 0) {
        /* deliver what was good; the next call starts at the bad record */
        out[w++] = ']';
        info->end = pos;
        info->nevents = n;
        return (int64_t)w;
    }
    info->corrupt = 1;
    info->end = head;
    out[0] = '[';
    out[1] = ']';
    return 2;
}
