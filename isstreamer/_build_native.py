"""cffi build script (API / out-of-line mode) for ``isstreamer._native``.

Used by ``setup.py`` through ``cffi_modules``; run it directly to build in place. Extra
compiler flags come from ``ISSTREAMER_CFLAGS`` (CI uses it for the sanitizer build).
"""

from __future__ import annotations

import os
import re
import shlex
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")

# Structs the Python side allocates or reads; the functions come from the headers.
CDEF_TYPES = """
typedef struct { uint64_t lock; uint64_t closed; } iss_guard;
typedef struct {
    uint8_t *base; uint64_t map_size; uint64_t data_size; uint64_t cached_tail;
    uint32_t bucket; uint32_t seg_index; uint32_t dropping; uint32_t reserve; const uint64_t *wake; uint64_t woke;
    iss_guard *guard; uint64_t cached_reserved; uint64_t check_every; uint64_t check_at; uint64_t retry_ns;
    uint64_t retry_at;
    ...;
} iss_producer;
typedef struct {
    uint64_t magic; uint32_t version; uint32_t hdr_size; uint32_t nsegs; uint32_t seg_data_size;
    uint32_t nbuckets; uint32_t bucket_size; uint64_t total_size; uint64_t sender_pid; uint64_t closing; uint64_t sleeping; uint64_t close_by;
    uint64_t flush_seq; uint64_t nbuckets_used; uint64_t nslots_used; uint64_t flush_done; uint64_t cut_seq;
    uint64_t counters[32]; uint64_t drops[16];
    ...;
} iss_ring_hdr;
typedef struct {
    uint64_t head; uint64_t logged; uint64_t drops[16]; uint64_t reserved; uint64_t tail; uint64_t consumed;
    uint64_t rel_end; uint64_t rel_consumed; uint64_t lost;
    ...;
} iss_seg_hdr;
typedef struct { uint64_t state; uint64_t seg_id; uint64_t owner_pid; uint64_t data_size; ...; } iss_slot;
typedef struct {
    uint32_t size; uint8_t type; uint8_t flags; uint16_t bucket; uint16_t keylen; uint32_t vallen;
    double epoch;
    ...;
} iss_rec;
typedef struct {
    uint64_t end; uint32_t nevents; uint32_t bucket; uint32_t corrupt; uint32_t skipped;
} iss_batch;
typedef struct iss_agg iss_agg;
typedef struct {
    uint32_t taken; uint32_t miss; uint32_t miss_bucket; uint32_t miss_keylen; char miss_key[1024];
} iss_agg_info;
typedef struct {
    uint64_t folded; uint64_t windows; uint64_t emitted; uint64_t overflow; uint64_t no_memory; uint64_t open;
} iss_agg_counters;
typedef struct {
    uint32_t bucket; uint32_t stat; double end; uint32_t keylen; char key[1024];
} iss_agg_overflow;

"""


def _prototypes(*headers: str) -> str:
    """Every ``iss_*`` function declaration of the given headers (one source of truth)."""
    out = []
    for h in headers:
        with open(os.path.join(CSRC, h), encoding="utf-8") as f:
            text = f.read()
        out += re.findall(r"^[A-Za-z_][\w ]*?\**\s*iss_\w+\([^;{]*\);", text, re.M)
    return "\n".join(out)


CDEF = CDEF_TYPES + _prototypes("isstreamer.h", "dtoa.h", "aggregate.h", "py/hotpath.h")
ffibuilder = FFI()
ffibuilder.cdef(CDEF)
_extra = shlex.split(os.environ.get("ISSTREAMER_CFLAGS", ""))
# MSVC takes its own flags and has no separate libm; GCC and clang (mingw-w64 included) the usual
if sys.platform == "win32" and "GCC" not in sys.version:
    _COMPILE_ARGS, _LIBRARIES = ["/std:c11", "/O2", "/W3"], []
else:
    _COMPILE_ARGS, _LIBRARIES = ["-std=c11", "-O2", "-Wall", "-Wextra"], ["m"]
ffibuilder.set_source(
    "isstreamer._native",
    '#include "isstreamer.h"\n#include "dtoa.h"\n#include "aggregate.h"\n#include "py/hotpath.h"',
    # the portable core, and the CPython binding of the hot path (csrc/py/: needs Python.h)
    sources=[
        os.path.relpath(os.path.join(CSRC, f))
        for f in ("ring.c", "encode.c", "dtoa.c", "aggregate.c", os.path.join("py", "hotpath.c"))
    ],
    include_dirs=[os.path.relpath(CSRC)],
    extra_compile_args=_COMPILE_ARGS + _extra,
    extra_link_args=[f for f in _extra if f.startswith("-fsanitize")],
    libraries=_LIBRARIES,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
