/*
 * isstreamer: what the C code needs of the operating system, in one place: yielding the CPU in a
 * spinlock, the wall clock (an event's epoch) and a coarse monotonic clock (intervals), and
 * overflow-checked arithmetic on sizes. POSIX (Linux, macOS, the BSDs) and Windows (mingw-w64,
 * MSVC).
 */
#ifndef ISSTREAMER_PLATFORM_H
#define ISSTREAMER_PLATFORM_H

#include <stdint.h>

#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef _WIN32_WINNT
#define _WIN32_WINNT 0x0602 /* Windows 8: GetSystemTimePreciseAsFileTime */
#endif
#include <windows.h>

static inline void iss_yield(void) { (void)SwitchToThread(); }

/* seconds since 1970 (UTC), sub-microsecond resolution */
static inline double iss_now_realtime(void)
{
    FILETIME ft;
    GetSystemTimePreciseAsFileTime(&ft); /* 100 ns ticks since 1601 */
    uint64_t t = ((uint64_t)ft.dwHighDateTime << 32) | ft.dwLowDateTime;
    return (double)(t - UINT64_C(116444736000000000)) * 1e-7;
}

/* nanoseconds of a monotonic clock, millisecond resolution (intervals of a second or so) */
static inline uint64_t iss_now_mono_ns(void) { return (uint64_t)GetTickCount64() * UINT64_C(1000000); }

#else
#include <sched.h>
#include <time.h>

static inline void iss_yield(void) { (void)sched_yield(); }

static inline double iss_now_realtime(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint64_t iss_now_mono_ns(void)
{
    struct timespec ts;
#ifdef CLOCK_MONOTONIC_COARSE /* Linux: a few ns through the vDSO, tick resolution */
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
#else
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
#endif
        return 0;
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}
#endif

/* a * b and a + b on uint64_t; 1 (and *out untouched) when the result does not fit */
static inline int iss_mul_overflow_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a)
        return 1;
    *out = a * b;
    return 0;
}

static inline int iss_add_overflow_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    if (b > UINT64_MAX - a)
        return 1;
    *out = a + b;
    return 0;
}

#endif
