/*
 * NEON XOR/popcount product, register-blocked 2 rows of `a` x 4 rows of `b`: veor + vcnt
 * per 128 bits and pair, byte counts widened into 16-bit lanes (vpadal) which hold up to
 * 4096 steps before a flush; an odd final word is counted with vcnt on 64 bits.
 */
#include "xnor_gemm.h"

#if BF_ARCH_ARM64
#include <arm_neon.h>

#define CHUNK_STEPS 4000

static inline __attribute__((always_inline)) void tile(const int MR, const int NR, size_t kw,
                                                       const bf_word *a, size_t lda,
                                                       const bf_word *b, size_t ldb, int32_t *c,
                                                       size_t ldc) {
    uint32_t total[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    const size_t k2 = kw & ~(size_t)1;
    size_t k = 0;
    while (k < k2) {
        uint16x8_t acc[2][4];
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] = vdupq_n_u16(0);
        size_t end = k + 2 * CHUNK_STEPS;
        if (end > k2) end = k2;
        for (; k < end; k += 2) {
            uint64x2_t av[2];
            for (int i = 0; i < MR; i++) av[i] = vld1q_u64(a + i * lda + k);
            for (int j = 0; j < NR; j++) {
                const uint64x2_t bv = vld1q_u64(b + j * ldb + k);
                for (int i = 0; i < MR; i++)
                    acc[i][j] = vpadalq_u8(acc[i][j],
                                           vcntq_u8(vreinterpretq_u8_u64(veorq_u64(av[i], bv))));
            }
        }
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) total[i][j] += vaddlvq_u16(acc[i][j]);
    }
    if (k < kw)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++)
                total[i][j] += vaddv_u8(vcnt_u8(vcreate_u8(a[i * lda + k] ^ b[j * ldb + k])));
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) c[i * ldc + j] = (int32_t)total[i][j];
}

void bf_xnor_gemm_2x4__neon(size_t m, size_t n, size_t kw, const bf_word *a, size_t lda,
                            const bf_word *b, size_t ldb, int32_t *c, size_t ldc) {
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
        size_t i = 0;
        for (; i + 2 <= m; i += 2) tile(2, 4, kw, a + i * lda, lda, b + j * ldb, ldb, c + i * ldc + j, ldc);
        if (i < m) tile(1, 4, kw, a + i * lda, lda, b + j * ldb, ldb, c + i * ldc + j, ldc);
    }
    for (; j < n; j++) {
        size_t i = 0;
        for (; i + 2 <= m; i += 2) tile(2, 1, kw, a + i * lda, lda, b + j * ldb, ldb, c + i * ldc + j, ldc);
        if (i < m) tile(1, 1, kw, a + i * lda, lda, b + j * ldb, ldb, c + i * ldc + j, ldc);
    }
}
#endif
