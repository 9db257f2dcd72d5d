/*
 * Strict checker for the encoder's output, for the fuzz targets (header-only, no allocation).
 *
 * Accepts exactly RFC 8259 JSON of the shape the events API takes from isstreamer:
 *   [ {"key": <string>, "value": <string|number|true|false>, "epoch": <number>?}, ... ]
 * (whitespace allowed anywhere JSON allows it, members in any order, no duplicates, no other
 * members). Strings must be valid UTF-8 with no raw control characters, escapes well formed and
 * no lone surrogates; numbers must match the JSON grammar and be finite as doubles.
 * Decoded strings are handed back so a target can compare them with what it wrote.
 */
#ifndef ISS_JSON_CHECK_H
#define ISS_JSON_CHECK_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define JC_STR_CAP 65536u /* decoded bytes kept per string (more than any key or value) */

enum { JC_NONE = 0, JC_STRING, JC_NUMBER, JC_TRUE, JC_FALSE };

typedef struct {
    uint8_t key[JC_STR_CAP];
    size_t keylen;
    int vkind;             /* JC_STRING, JC_NUMBER, JC_TRUE, JC_FALSE */
    uint8_t sval[JC_STR_CAP];
    size_t slen;
    double num;            /* value as a double (JC_NUMBER) */
    char numtext[64];      /* value's number literal, NUL-terminated (truncated if longer) */
    int num_is_integer;    /* literal had no fraction and no exponent */
    int has_epoch;
    double epoch;
} jc_event;

typedef struct {
    const char *s;
    size_t n, i;
} jc_parser;

static void jc_ws(jc_parser *p)
{
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
                           p->s[p->i] == '\r'))
        p->i++;
}

static int jc_lit(jc_parser *p, const char *lit)
{
    size_t k = strlen(lit);
    if (p->n - p->i < k || memcmp(p->s + p->i, lit, k) != 0)
        return 0;
    p->i += k;
    return 1;
}

static int jc_hex4(jc_parser *p, unsigned *out)
{
    unsigned v = 0;
    if (p->n - p->i < 4)
        return 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->i++];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return 0;
    }
    *out = v;
    return 1;
}

static size_t jc_put_utf8(uint8_t *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the well-formed UTF-8 sequence at s (Unicode table 3-7), 0 if ill-formed. */
static size_t jc_utf8_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    uint8_t lo = 0x80, hi = 0xBF;
    size_t len;
    if (c <= 0x7F)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c == 0xE0) {
        len = 3;
        lo = 0xA0;
    } else if (c == 0xED) {
        len = 3;
        hi = 0x9F;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
        len = 3;
    else if (c == 0xF0) {
        len = 4;
        lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3)
        len = 4;
    else if (c == 0xF4) {
        len = 4;
        hi = 0x8F;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k < len; k++)
        if (s[k] < 0x80 || s[k] > 0xBF)
            return 0;
    return len;
}

/* A JSON string at p (starting at its quote), decoded into out (cap bytes; extra is dropped). */
static int jc_string(jc_parser *p, uint8_t *out, size_t cap, size_t *outlen)
{
    size_t w = 0;
    uint8_t tmp[4];
    if (p->i >= p->n || p->s[p->i] != '"')
        return 0;
    p->i++;
    for (;;) {
        if (p->i >= p->n)
            return 0;
        uint8_t c = (uint8_t)p->s[p->i];
        size_t len = 0;
        const uint8_t *src = tmp;
        if (c == '"') {
            p->i++;
            break;
        }
        if (c < 0x20)
            return 0; /* raw control character */
        if (c == '\\') {
            unsigned cp;
            p->i++;
            if (p->i >= p->n)
                return 0;
            char e = p->s[p->i++];
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (!jc_hex4(p, &cp))
                    return 0;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return 0; /* lone low surrogate */
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (!jc_lit(p, "\\u") || !jc_hex4(p, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return 0; /* lone high surrogate */
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                break;
            default: return 0;
            }
            len = jc_put_utf8(tmp, cp);
        } else {
            len = jc_utf8_len((const uint8_t *)p->s + p->i, p->n - p->i);
            if (len == 0)
                return 0; /* invalid UTF-8 in the output */
            src = (const uint8_t *)p->s + p->i;
            p->i += len;
        }
        for (size_t k = 0; k < len; k++, w++)
            if (w < cap)
                out[w] = src[k];
    }
    *outlen = w < cap ? w : cap;
    return 1;
}

/* A JSON number: grammar checked, parsed with strtod (C locale), must be finite. */
static int jc_number(jc_parser *p, double *out, char *text, size_t textcap, int *is_integer)
{
    size_t start = p->i;
    int integer = 1;
    if (p->i < p->n && p->s[p->i] == '-')
        p->i++;
    if (p->i >= p->n)
        return 0;
    if (p->s[p->i] == '0') {
        p->i++;
    } else if (p->s[p->i] >= '1' && p->s[p->i] <= '9') {
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
            p->i++;
    } else {
        return 0;
    }
    if (p->i < p->n && p->s[p->i] == '.') {
        integer = 0;
        p->i++;
        size_t d = p->i;
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
            p->i++;
        if (p->i == d)
            return 0;
    }
    if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
        integer = 0;
        p->i++;
        if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-'))
            p->i++;
        size_t d = p->i;
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
            p->i++;
        if (p->i == d)
            return 0;
    }
    char buf[512];
    size_t len = p->i - start;
    if (len >= sizeof buf)
        return 0; /* the encoder never writes literals this long */
    memcpy(buf, p->s + start, len);
    buf[len] = 0;
    double v = strtod(buf, NULL);
    if (!isfinite(v))
        return 0;
    *out = v;
    *is_integer = integer;
    if (text != NULL && textcap > 0) {
        size_t k = len < textcap - 1 ? len : textcap - 1;
        memcpy(text, buf, k);
        text[k] = 0;
    }
    return 1;
}

/* One event object into ev. */
static int jc_event_obj(jc_parser *p, jc_event *ev)
{
    int seen_key = 0, seen_value = 0, seen_epoch = 0;
    uint8_t name[16];
    size_t namelen;
    ev->keylen = ev->slen = 0;
    ev->vkind = JC_NONE;
    ev->has_epoch = 0;
    jc_ws(p);
    if (!jc_lit(p, "{"))
        return 0;
    jc_ws(p);
    if (jc_lit(p, "}"))
        return 0; /* key and value are required */
    for (;;) {
        jc_ws(p);
        if (!jc_string(p, name, sizeof name, &namelen))
            return 0;
        jc_ws(p);
        if (!jc_lit(p, ":"))
            return 0;
        jc_ws(p);
        if (namelen == 3 && memcmp(name, "key", 3) == 0) {
            if (seen_key++)
                return 0;
            if (!jc_string(p, ev->key, sizeof ev->key, &ev->keylen))
                return 0;
        } else if (namelen == 5 && memcmp(name, "value", 5) == 0) {
            if (seen_value++)
                return 0;
            if (p->i < p->n && p->s[p->i] == '"') {
                ev->vkind = JC_STRING;
                if (!jc_string(p, ev->sval, sizeof ev->sval, &ev->slen))
                    return 0;
            } else if (jc_lit(p, "true")) {
                ev->vkind = JC_TRUE;
            } else if (jc_lit(p, "false")) {
                ev->vkind = JC_FALSE;
            } else {
                ev->vkind = JC_NUMBER;
                if (!jc_number(p, &ev->num, ev->numtext, sizeof ev->numtext, &ev->num_is_integer))
                    return 0;
            }
        } else if (namelen == 5 && memcmp(name, "epoch", 5) == 0) {
            int isint;
            if (seen_epoch++)
                return 0;
            if (!jc_number(p, &ev->epoch, NULL, 0, &isint))
                return 0;
            ev->has_epoch = 1;
        } else {
            return 0;
        }
        jc_ws(p);
        if (jc_lit(p, ","))
            continue;
        if (jc_lit(p, "}"))
            break;
        return 0;
    }
    return seen_key && seen_value && ev->keylen > 0;
}

/*
 * Check a whole batch. For each event, cb(ctx, index, ev) is called (cb may be NULL); a non-zero
 * return from cb stops with that value. Returns the number of events (>= 0), or -1 if the text
 * is not an event array, or cb's value (< -1 by convention).
 */
typedef int (*jc_event_cb)(void *ctx, size_t index, const jc_event *ev);

static long jc_check_batch(const char *s, size_t n, jc_event *scratch, jc_event_cb cb, void *ctx)
{
    jc_parser p = {s, n, 0};
    long count = 0;
    jc_ws(&p);
    if (!jc_lit(&p, "["))
        return -1;
    jc_ws(&p);
    if (!jc_lit(&p, "]")) {
        for (;;) {
            if (!jc_event_obj(&p, scratch))
                return -1;
            if (cb != NULL) {
                int r = cb(ctx, (size_t)count, scratch);
                if (r != 0)
                    return r;
            }
            count++;
            jc_ws(&p);
            if (jc_lit(&p, ","))
                continue;
            if (jc_lit(&p, "]"))
                break;
            return -1;
        }
    }
    jc_ws(&p);
    return p.i == p.n ? count : -1;
}

#endif
