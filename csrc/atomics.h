/*
 * isstreamer: every atomic access and fence of the C code, in one place.
 *
 * The shared ring is read and written by several processes: 64-bit fields are accessed only
 * through these macros (lock-free on x86-64, aarch64 and ARMv7 with LDREXD/STREXD). GCC and
 * clang use the __atomic builtins; other compilers (MSVC) would plug in here.
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
#else
#error "isstreamer: atomics for this compiler are not written yet (see csrc/atomics.h)"
#endif

#endif
