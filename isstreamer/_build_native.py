"""cffi build script (API / out-of-line mode) for ``isstreamer._native``.

Used by ``setup.py`` through ``cffi_modules``; run it directly to build in place. Extra
compiler flags come from ``ISSTREAMER_CFLAGS`` (CI uses it for the sanitizer build).
"""
from __future__ import annotations

import os
import shlex

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")

CDEF = """
typedef struct {
    uint8_t *base; uint64_t map_size; uint64_t data_size; uint64_t cached_tail;
    uint32_t bucket; uint32_t seg_index;
    ...;
} iss_producer;
typedef struct {
    uint64_t end; uint32_t nevents; uint32_t bucket; uint32_t corrupt; uint32_t skipped;
} iss_batch;

uint64_t iss_layout_size(uint32_t nsegs, uint32_t seg_data_size, uint32_t nbuckets);
int iss_ring_init(uint8_t *base, uint64_t map_size, uint32_t nsegs, uint32_t seg_data_size,
                  uint32_t nbuckets);
int iss_ring_check(const uint8_t *base, uint64_t map_size);
int iss_producer_attach(iss_producer *p, uint8_t *base, uint64_t map_size, uint32_t seg_index);
int iss_put_f64(iss_producer *p, const char *key, size_t keylen, double v, double epoch);
int iss_put_i64(iss_producer *p, const char *key, size_t keylen, int64_t v, double epoch);
int iss_put_bool(iss_producer *p, const char *key, size_t keylen, int v, double epoch);
int iss_put_str(iss_producer *p, const char *key, size_t keylen, const char *s, size_t slen,
                double epoch);
void iss_count_drop(iss_producer *p, uint32_t reason);
int32_t iss_key_intern(const char *key, size_t keylen);
int iss_log_f64(iss_producer *p, uint32_t key_id, double v);
int iss_log_i64(iss_producer *p, uint32_t key_id, int64_t v);
int iss_log_bool(iss_producer *p, uint32_t key_id, int v);
int iss_log_str(iss_producer *p, uint32_t key_id, const char *s, size_t slen);
int iss_log_f64_at(iss_producer *p, uint32_t key_id, double v, double epoch);
int iss_log_i64_at(iss_producer *p, uint32_t key_id, int64_t v, double epoch);
int iss_log_bool_at(iss_producer *p, uint32_t key_id, int v, double epoch);
int iss_log_str_at(iss_producer *p, uint32_t key_id, const char *s, size_t slen, double epoch);
uint64_t iss_load64(const uint8_t *base, uint64_t map_size, uint64_t off);
void iss_store64(uint8_t *base, uint64_t map_size, uint64_t off, uint64_t v);
uint64_t iss_add64(uint8_t *base, uint64_t map_size, uint64_t off, uint64_t v);
int iss_cas64(uint8_t *base, uint64_t map_size, uint64_t off, uint64_t expected,
              uint64_t desired);
uint64_t iss_now_monotonic_ns(void);
int64_t iss_encode_batch(const uint8_t *base, uint64_t map_size, uint32_t seg_index,
                         uint64_t from, uint32_t max_events, char *out, size_t out_cap,
                         iss_batch *info);
size_t iss_format_double(double v, char *out, size_t cap);
size_t iss_dtoa(double v, char *out, size_t cap);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
_extra = shlex.split(os.environ.get("ISSTREAMER_CFLAGS", ""))
ffibuilder.set_source(
    "isstreamer._native",
    '#include "isstreamer.h"\n#include "dtoa.h"',
    sources=[os.path.relpath(os.path.join(CSRC, f)) for f in ("ring.c", "encode.c", "dtoa.c")],
    include_dirs=[os.path.relpath(CSRC)],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra"] + _extra,
    extra_link_args=[f for f in _extra if f.startswith("-fsanitize")],
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
