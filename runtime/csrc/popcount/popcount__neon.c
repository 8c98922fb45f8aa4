/* NEON popcount: vcnt on bytes, pairwise widening adds, scalar tail. */
#include "popcount.h"

#if BF_ARCH_ARM64
#include <arm_neon.h>

int64_t bf_popcount__neon(const bf_word *x, size_t n) {
    uint64x2_t acc = vdupq_n_u64(0);
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
        const uint8x16_t bytes = vcntq_u8(vreinterpretq_u8_u64(vld1q_u64(x + i)));
        acc = vpadalq_u32(acc, vpaddlq_u16(vpaddlq_u8(bytes)));
    }
    int64_t total = (int64_t)(vgetq_lane_u64(acc, 0) + vgetq_lane_u64(acc, 1));
    for (; i < n; i++) total += BF_POPCOUNT64(x[i]);
    return total;
}
#endif
