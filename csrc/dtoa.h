/* Shortest round-trip formatting of binary64 values (Schubfach), Python repr() style. */
#ifndef ISS_DTOA_H
#define ISS_DTOA_H

#include <stddef.h>

/* Longest output of iss_dtoa, e.g. "-2.2250738585072014e-308" (no terminating NUL). */
#define ISS_DTOA_MAX_LEN 24

/* Writes the text of Python's repr(v) for finite v (the shortest decimal that reads back
 * as v, closest to v, ties to even digit; fixed notation for 1e-4 <= |v| < 1e16 with at
 * least one fractional digit, otherwise d.ddde[+-]XX): valid JSON numbers.  No NUL is
 * written.  Returns the length, or 0 when v is NaN/inf, out is NULL or cap is too small
 * (nothing is written then).  Thread-safe, no allocation, no locale. */
size_t iss_dtoa(double v, char *out, size_t cap);

#endif
