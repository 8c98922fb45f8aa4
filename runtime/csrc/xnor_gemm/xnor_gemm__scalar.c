/*
 * The specification of the XOR/popcount product (xnor_gemm.h): plain C, blocked 2x2 so
 * each loaded word is used twice. Every SIMD kernel must equal this one exactly.
 */
#include "xnor_gemm.h"

#define BF_ALWAYS_INLINE static inline __attribute__((always_inline))

BF_ALWAYS_INLINE void xnor_gemm_2x2_body(size_t m, size_t n, size_t kw, const bf_word *a,
                                         size_t lda, const bf_word *b, size_t ldb, int32_t *c,
                                         size_t ldc) {
    size_t i = 0;
    for (; i + 2 <= m; i += 2) {
        const bf_word *a0 = a + i * lda, *a1 = a0 + lda;
        size_t j = 0;
        for (; j + 2 <= n; j += 2) {
            const bf_word *b0 = b + j * ldb, *b1 = b0 + ldb;
            int64_t s00 = 0, s01 = 0, s10 = 0, s11 = 0;
            for (size_t k = 0; k < kw; k++) {
                s00 += BF_POPCOUNT64(a0[k] ^ b0[k]);
                s01 += BF_POPCOUNT64(a0[k] ^ b1[k]);
                s10 += BF_POPCOUNT64(a1[k] ^ b0[k]);
                s11 += BF_POPCOUNT64(a1[k] ^ b1[k]);
            }
            c[i * ldc + j] = (int32_t)s00;
            c[i * ldc + j + 1] = (int32_t)s01;
            c[(i + 1) * ldc + j] = (int32_t)s10;
            c[(i + 1) * ldc + j + 1] = (int32_t)s11;
        }
        for (; j < n; j++) {
            const bf_word *b0 = b + j * ldb;
            int64_t s0 = 0, s1 = 0;
            for (size_t k = 0; k < kw; k++) {
                s0 += BF_POPCOUNT64(a0[k] ^ b0[k]);
                s1 += BF_POPCOUNT64(a1[k] ^ b0[k]);
            }
            c[i * ldc + j] = (int32_t)s0;
            c[(i + 1) * ldc + j] = (int32_t)s1;
        }
    }
    for (; i < m; i++) {
        const bf_word *a0 = a + i * lda;
        for (size_t j = 0; j < n; j++) {
            const bf_word *b0 = b + j * ldb;
            int64_t s = 0;
            for (size_t k = 0; k < kw; k++) s += BF_POPCOUNT64(a0[k] ^ b0[k]);
            c[i * ldc + j] = (int32_t)s;
        }
    }
}

void bf_xnor_gemm_2x2__scalar(size_t m, size_t n, size_t kw, const bf_word *a, size_t lda,
                              const bf_word *b, size_t ldb, int32_t *c, size_t ldc) {
    xnor_gemm_2x2_body(m, n, kw, a, lda, b, ldb, c, ldc);
}

#if BF_ARCH_X86
BF_TARGET_POPCNT void bf_xnor_gemm_2x2__scalar_popcnt(size_t m, size_t n, size_t kw,
                                                      const bf_word *a, size_t lda,
                                                      const bf_word *b, size_t ldb, int32_t *c,
                                                      size_t ldc) {
    xnor_gemm_2x2_body(m, n, kw, a, lda, b, ldb, c, ldc);
}
#endif
