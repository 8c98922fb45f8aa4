/*
 * AVX-512 VPOPCNTDQ XOR/popcount product, register-blocked 4 rows of `a` x 4 rows of `b`
 * (16 zmm accumulators of 64-bit counts): vpxorq + vpopcntq + vpaddq per 512 bits and
 * pair. The remainder of fewer than 8 words runs as one masked step (masked loads read
 * zeros, which xor to zero).
 */
#include "xnor_gemm.h"

#if BF_ARCH_X86
#include <immintrin.h>

#define BF_AVX512_INLINE static inline __attribute__((always_inline)) BF_TARGET_AVX512VPOPCNT

BF_AVX512_INLINE void tile(const int MR, const int NR, size_t kw, const bf_word *a, size_t lda,
                           const bf_word *b, size_t ldb, int32_t *c, size_t ldc) {
    __m512i acc[4][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_si512();
    size_t k = 0;
    for (; k + 8 <= kw; k += 8) {
        __m512i av[4];
        for (int i = 0; i < MR; i++) av[i] = _mm512_loadu_si512(a + i * lda + k);
        for (int j = 0; j < NR; j++) {
            const __m512i bv = _mm512_loadu_si512(b + j * ldb + k);
            for (int i = 0; i < MR; i++)
                acc[i][j] = _mm512_add_epi64(acc[i][j],
                                             _mm512_popcnt_epi64(_mm512_xor_si512(av[i], bv)));
        }
    }
    if (k < kw) {
        const __mmask8 mask = (__mmask8)((1u << (kw - k)) - 1u);
        __m512i av[4];
        for (int i = 0; i < MR; i++) av[i] = _mm512_maskz_loadu_epi64(mask, a + i * lda + k);
        for (int j = 0; j < NR; j++) {
            const __m512i bv = _mm512_maskz_loadu_epi64(mask, b + j * ldb + k);
            for (int i = 0; i < MR; i++)
                acc[i][j] = _mm512_add_epi64(acc[i][j],
                                             _mm512_popcnt_epi64(_mm512_xor_si512(av[i], bv)));
        }
    }
    for (int i = 0; i < MR; i++) {
        if (NR == 4 && kw < 1024) {
            /* every total is below 64 * 1024 = 2^16: pack the four accumulators into the
             * 16-bit quarters of each lane and reduce once (no carry crosses a quarter) */
            const __m512i packed = _mm512_add_epi64(
                _mm512_add_epi64(acc[i][0], _mm512_slli_epi64(acc[i][1], 16)),
                _mm512_add_epi64(_mm512_slli_epi64(acc[i][2], 32), _mm512_slli_epi64(acc[i][3], 48)));
            const uint64_t sums = (uint64_t)_mm512_reduce_add_epi64(packed);
            for (int j = 0; j < 4; j++) c[i * ldc + j] = (int32_t)((sums >> (16 * j)) & 0xffffu);
        } else {
            for (int j = 0; j < NR; j++)
                c[i * ldc + j] = (int32_t)_mm512_reduce_add_epi64(acc[i][j]);
        }
    }
}

BF_TARGET_AVX512VPOPCNT void bf_xnor_gemm_4x4__avx512vpopcnt(size_t m, size_t n, size_t kw,
                                                      const bf_word *a, size_t lda,
                                                      const bf_word *b, size_t ldb, int32_t *c,
                                                      size_t ldc) {
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const bf_word *bj = b + j * ldb;
        size_t i = 0;
        for (; i + 4 <= m; i += 4) tile(4, 4, kw, a + i * lda, lda, bj, ldb, c + i * ldc + j, ldc);
        for (; i < m; i++) tile(1, 4, kw, a + i * lda, lda, bj, ldb, c + i * ldc + j, ldc);
    }
    for (; j < n; j++) {
        const bf_word *bj = b + j * ldb;
        size_t i = 0;
        for (; i + 4 <= m; i += 4) tile(4, 1, kw, a + i * lda, lda, bj, ldb, c + i * ldc + j, ldc);
        for (; i < m; i++) tile(1, 1, kw, a + i * lda, lda, bj, ldb, c + i * ldc + j, ldc);
    }
}
#endif
