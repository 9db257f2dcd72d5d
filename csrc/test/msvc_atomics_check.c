/* Every form csrc/ uses of the csrc/atomics.h macros, on each field type they take (uint64_t,
 * uint32_t, a pointer): compiled by .ci/cross.sh with clang in MSVC mode (-U__clang__ -U__GNUC__),
 * so the MSVC branch is type-checked here although no MSVC runs in CI. */
#include <stdint.h>

#include "atomics.h"

typedef struct {
    uint16_t len;
} key_t_;

static uint64_t f64;
static uint32_t f32;
static key_t_ *table[4];

uint64_t iss_msvc_atomics_check(void);

uint64_t iss_msvc_atomics_check(void)
{
    uint64_t a = ISS_LOAD_ACQ(&f64);
    uint64_t r = ISS_LOAD_RLX(&f64);
    uint32_t b = ISS_LOAD_ACQ(&f32);
    key_t_ *k = ISS_LOAD_ACQ(&table[1]);
    ISS_STORE_REL(&f64, a + 1u);
    ISS_STORE_RLX(&f64, r);
    ISS_STORE_REL(&f32, b + 1u);
    ISS_STORE_REL(&table[2], k);
    uint64_t c = ISS_ADD_ACQREL(&f64, 3u);
    uint64_t d = ISS_ADD_RLX(&f64, 1u);
    uint64_t x = ISS_XCHG_ACQ(&f64, (uint64_t)1);
    uint32_t y = ISS_XCHG_ACQ(&f32, 1u);
    ISS_FENCE_SEQ();
    return a + r + b + c + d + x + y + (k != 0);
}
