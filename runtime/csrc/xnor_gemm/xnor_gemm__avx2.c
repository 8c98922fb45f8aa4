/*
 * AVX2 XOR/popcount product, register-blocked 2 (or 1) rows of `a` x 5 rows of `b`: four
 * in vector registers and one with the scalar popcnt instruction alongside.
 *
 * Popcount per byte by nibble lookup (vpshufb), accumulated in bytes for up to 30 steps of
 * 256 bits (30 * 8 = 240 < 256, plus one 128-bit half step), then reduced with vpsadbw.
 * The four channel sums of a row are reduced together into one 128-bit vector. A 2-word
 * remainder runs as a half step, a final odd word with scalar popcnt.
 */
#include "xnor_gemm.h"

#if BF_ARCH_X86
#include <immintrin.h>

#define BF_AVX2_INLINE static inline __attribute__((always_inline)) BF_TARGET_AVX2
#define CHUNK_STEPS 30

BF_AVX2_INLINE __m256i popcount_bytes(__m256i v, __m256i table, __m256i low) {
    const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
    const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(lo, hi);
}

/* Sum of all bytes of each of four vectors, as four int32 lanes. */
BF_AVX2_INLINE __m128i reduce4(__m256i x0, __m256i x1, __m256i x2, __m256i x3) {
    const __m256i z = _mm256_setzero_si256();
    const __m256i s0 = _mm256_sad_epu8(x0, z), s1 = _mm256_sad_epu8(x1, z);
    const __m256i s2 = _mm256_sad_epu8(x2, z), s3 = _mm256_sad_epu8(x3, z);
    /* each 64-bit lane holds a sum < 2^16: put pairs into the two 32-bit halves */
    const __m256i s01 = _mm256_or_si256(s0, _mm256_slli_epi64(s1, 32));
    const __m256i s23 = _mm256_or_si256(s2, _mm256_slli_epi64(s3, 32));
    const __m256i v = _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23),
                                       _mm256_unpackhi_epi64(s01, s23));
    return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

BF_AVX2_INLINE int32_t reduce1(__m256i x) {
    const __m256i s = _mm256_sad_epu8(x, _mm256_setzero_si256());
    const __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return (int32_t)(_mm_cvtsi128_si64(t) + _mm_extract_epi64(t, 1));
}

BF_AVX2_INLINE __m256i load_half(const bf_word *p) {
    return _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)p));
}

/*
 * One tile: MR rows of `a` x (NR + NS) rows of `b`; the MR x NR pairs in vector registers,
 * the MR x NS pairs with the scalar popcnt instruction, which runs on the integer ALUs
 * next to the vector work. MR, NR, NS are compile-time constants after inlining.
 */
BF_AVX2_INLINE void tile(const int MR, const int NR, const int NS, size_t kw, const bf_word *a,
                         size_t lda, const bf_word *b, size_t ldb, int32_t *c, size_t ldc) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    int32_t total[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    uint64_t scalar_total[2] = {0, 0};
    size_t k = 0;
    const size_t k4 = kw & ~(size_t)3;
    do {
        __m256i acc[2][4];
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_si256();
        size_t end = k + 4 * CHUNK_STEPS;
        if (end > k4) end = k4;
        for (; k < end; k += 4) {
            __m256i av[2];
            for (int i = 0; i < MR; i++)
                av[i] = _mm256_loadu_si256((const __m256i *)(a + i * lda + k));
            for (int j = 0; j < NR; j++) {
                const __m256i bv = _mm256_loadu_si256((const __m256i *)(b + j * ldb + k));
                for (int i = 0; i < MR; i++)
                    acc[i][j] = _mm256_add_epi8(
                        acc[i][j], popcount_bytes(_mm256_xor_si256(av[i], bv), table, low));
            }
            if (NS) {
                const bf_word *bs = b + NR * ldb + k;
                for (int i = 0; i < MR; i++) {
                    const bf_word *ai = a + i * lda + k;
                    scalar_total[i] += _mm_popcnt_u64(ai[0] ^ bs[0]) + _mm_popcnt_u64(ai[1] ^ bs[1]) +
                                       _mm_popcnt_u64(ai[2] ^ bs[2]) + _mm_popcnt_u64(ai[3] ^ bs[3]);
                }
            }
        }
        if (k == k4 && k + 2 <= kw) { /* the half step fits: chunks hold at most 30 steps */
            __m256i av[2];
            for (int i = 0; i < MR; i++) av[i] = load_half(a + i * lda + k);
            for (int j = 0; j < NR; j++) {
                const __m256i bv = load_half(b + j * ldb + k);
                for (int i = 0; i < MR; i++)
                    acc[i][j] = _mm256_add_epi8(
                        acc[i][j], popcount_bytes(_mm256_xor_si256(av[i], bv), table, low));
            }
            if (NS)
                for (int i = 0; i < MR; i++)
                    scalar_total[i] += _mm_popcnt_u64(a[i * lda + k] ^ b[NR * ldb + k]) +
                                       _mm_popcnt_u64(a[i * lda + k + 1] ^ b[NR * ldb + k + 1]);
            k += 2;
        }
        for (int i = 0; i < MR; i++) {
            if (NR == 4) {
                const __m128i s = reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
                const __m128i t = _mm_loadu_si128((const __m128i *)total[i]);
                _mm_storeu_si128((__m128i *)total[i], _mm_add_epi32(s, t));
            } else {
                for (int j = 0; j < NR; j++) total[i][j] += reduce1(acc[i][j]);
            }
        }
    } while (k < k4);
    for (; k < kw; k++)
        for (int i = 0; i < MR; i++) {
            for (int j = 0; j < NR; j++)
                total[i][j] += (int32_t)_mm_popcnt_u64(a[i * lda + k] ^ b[j * ldb + k]);
            if (NS) scalar_total[i] += _mm_popcnt_u64(a[i * lda + k] ^ b[NR * ldb + k]);
        }
    for (int i = 0; i < MR; i++) {
        for (int j = 0; j < NR; j++) c[i * ldc + j] = total[i][j];
        if (NS) c[i * ldc + NR] = (int32_t)scalar_total[i];
    }
}

/* Rows of `a` in blocks of MR, rows of `b` in blocks of 5 (4 vector + 1 popcnt). */
BF_AVX2_INLINE void gemm_blocked(const int MR, size_t m, size_t n, size_t kw, const bf_word *a,
                                 size_t lda, const bf_word *b, size_t ldb, int32_t *c,
                                 size_t ldc) {
    size_t j = 0;
    for (; j + 5 <= n; j += 5) {
        size_t i = 0;
        for (; i + MR <= m; i += MR)
            tile(MR, 4, 1, kw, a + i * lda, lda, b + j * ldb, ldb, c + i * ldc + j, ldc);
        for (; i < m; i++) tile(1, 4, 1, kw, a + i * lda, lda, b + j * ldb, ldb, c + i * ldc + j, ldc);
    }
    for (; j + 4 <= n; j += 4) {
        size_t i = 0;
        for (; i + MR <= m; i += MR)
            tile(MR, 4, 0, kw, a + i * lda, lda, b + j * ldb, ldb, c + i * ldc + j, ldc);
        for (; i < m; i++) tile(1, 4, 0, kw, a + i * lda, lda, b + j * ldb, ldb, c + i * ldc + j, ldc);
    }
    for (; j < n; j++) {
        size_t i = 0;
        for (; i + 2 <= m; i += 2)
            tile(2, 1, 0, kw, a + i * lda, lda, b + j * ldb, ldb, c + i * ldc + j, ldc);
        if (i < m) tile(1, 1, 0, kw, a + i * lda, lda, b + j * ldb, ldb, c + i * ldc + j, ldc);
    }
}

/* 2 x 5 tiles for short rows, 1 x 5 for long ones (measured faster on Zen 3). */
BF_TARGET_AVX2 void bf_xnor_gemm_2x5__avx2(size_t m, size_t n, size_t kw, const bf_word *a,
                                           size_t lda, const bf_word *b, size_t ldb, int32_t *c,
                                           size_t ldc) {
    if (kw >= 32)
        gemm_blocked(1, m, n, kw, a, lda, b, ldb, c, ldc);
    else
        gemm_blocked(2, m, n, kw, a, lda, b, ldb, c, ldc);
}
#endif
