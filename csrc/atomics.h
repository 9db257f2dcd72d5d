/*
 * isstreamer: every atomic access and fence of the C code, in one place.
 *
 * The shared ring is read and written by several processes: 64-bit fields are accessed only
 * through these macros (lock-free on x86-64, aarch64 and ARMv7 with LDREXD/STREXD). GCC and
 * clang (mingw-w64 included) use the __atomic builtins; MSVC on x64 and ARM64 its intrinsics.
 *
 *   ISS_LOAD_ACQ / ISS_STORE_REL  acquire load / release store (publish / consume pairs)
 *   ISS_LOAD_RLX / ISS_STORE_RLX  relaxed (a field only one thread writes, or a hint)
 *   ISS_ADD_RLX / ISS_ADD_ACQREL  atomic add (counters / shared counters read by others)
 *   ISS_XCHG_ACQ                  exchange with acquire (spinlocks)
 *   ISS_FENCE_SEQ                 full fence (Dekker handshakes: store, fence, load)
 */
#ifndef ISSTREAMER_ATOMICS_H
#define ISSTREAMER_ATOMICS_H

#if defined(__GNUC__) || defined(__clang__)
#define ISS_LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define ISS_LOAD_RLX(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define ISS_STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define ISS_STORE_RLX(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define ISS_ADD_RLX(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#define ISS_ADD_ACQREL(p, v) __atomic_add_fetch((p), (v), __ATOMIC_ACQ_REL)
#define ISS_XCHG_ACQ(p, v) __atomic_exchange_n((p), (v), __ATOMIC_ACQUIRE)
#define ISS_FENCE_SEQ() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_ARM64))
/* MSVC on x64 and ARM64: aligned loads and stores of 32 and 64 bits are single-copy atomic; a
 * volatile access followed (load) or preceded (store) by a barrier gives acquire / release: on x64
 * (TSO) only the compiler may reorder, on ARM64 a DMB ISH orders the hardware. Read-modify-write
 * operations are the _Interlocked intrinsics (full barriers). The fields are uint32_t, uint64_t
 * or pointers (the key table): _Generic picks the width. (Written for MSVC; the builds this
 * project runs are GCC and clang, mingw-w64 included, which take the branch above.) */
#include <intrin.h>
#include <stdint.h>
#if defined(_M_ARM64)
#define ISS_BARRIER_() __dmb(_ARM64_BARRIER_ISH)
#else
#define ISS_BARRIER_() _ReadWriteBarrier()
#endif
static __forceinline uint64_t iss_ld64_acq_(const volatile uint64_t *p) { uint64_t v = *p; ISS_BARRIER_(); return v; }
static __forceinline uint32_t iss_ld32_acq_(const volatile uint32_t *p) { uint32_t v = *p; ISS_BARRIER_(); return v; }
static __forceinline void *iss_ldp_acq_(void *const volatile *p) { void *v = *p; ISS_BARRIER_(); return v; }
static __forceinline void iss_st64_rel_(volatile uint64_t *p, uint64_t v) { ISS_BARRIER_(); *p = v; }
static __forceinline void iss_st32_rel_(volatile uint32_t *p, uint32_t v) { ISS_BARRIER_(); *p = v; }
static __forceinline void iss_stp_rel_(void *volatile *p, void *v) { ISS_BARRIER_(); *p = v; }
#define ISS_LOAD_ACQ(p)                                                                           \
    _Generic((p), uint64_t *: iss_ld64_acq_((const volatile uint64_t *)(p)),                    \
             const uint64_t *: iss_ld64_acq_((const volatile uint64_t *)(p)),                   \
             uint32_t *: iss_ld32_acq_((const volatile uint32_t *)(p)),                         \
             const uint32_t *: iss_ld32_acq_((const volatile uint32_t *)(p)),                   \
             default: iss_ldp_acq_((void *const volatile *)(p)))
#define ISS_LOAD_RLX(p) ISS_LOAD_ACQ(p)
#define ISS_STORE_REL(p, v)                                                                       \
    _Generic((p), uint64_t *: iss_st64_rel_((volatile uint64_t *)(p), (uint64_t)(uintptr_t)(v)), \
             uint32_t *: iss_st32_rel_((volatile uint32_t *)(p), (uint32_t)(uintptr_t)(v)),      \
             default: iss_stp_rel_((void *volatile *)(p), (void *)(uintptr_t)(v)))
#define ISS_STORE_RLX(p, v) ISS_STORE_REL(p, v)
#define ISS_ADD_ACQREL(p, v)                                                                      \
    ((uint64_t)_InterlockedExchangeAdd64((volatile __int64 *)(p), (__int64)(v)) + (uint64_t)(v))
#define ISS_ADD_RLX(p, v) ISS_ADD_ACQREL(p, v)
#define ISS_XCHG_ACQ(p, v)                                                                        \
    _Generic((p), uint64_t *: (uint64_t)_InterlockedExchange64((volatile __int64 *)(p), (__int64)(v)), \
             uint32_t *: (uint32_t)_InterlockedExchange((volatile long *)(p), (long)(v)))
#if defined(_M_ARM64)
#define ISS_FENCE_SEQ() __dmb(_ARM64_BARRIER_ISH)
#else
#define ISS_FENCE_SEQ() __faststorefence()
#endif
#else
#error "isstreamer: atomics for this compiler are not written yet (see csrc/atomics.h)"
#endif

#endif
