/*
 * AVX-512 VPOPCNTDQ panel product (xnor_panel.h), L = 8 channels per zmm. Mirrors the
 * AVX2 kernel: tile of up to 4 pixels x 4 channel groups (32 channels, 16 accumulators),
 * K innermost; per word k: load the groups' weight vectors, broadcast each pixel's word
 * (embedded-broadcast operand of vpxorq), xor, vpopcntq, vpaddq into 64-bit lanes, which
 * are the channels' counts. A 4 x 4 transpose of each 128-bit quarter stores 4 pixels per
 * channel at once.
 */
#include "xnor_panel.h"

#if BF_ARCH_X86
#include <immintrin.h>

#define L BF_PANEL_LANES_AVX512
#define BF_AVX512_INLINE static inline __attribute__((always_inline)) BF_TARGET_AVX512

BF_AVX512_INLINE void tile(const int P, const int G, size_t kw, const bf_word *a, size_t lda,
                           const bf_word *w, int32_t *c, size_t ldc, size_t lanes) {
    __m512i acc[4][4];
    for (int p = 0; p < P; p++)
        for (int g = 0; g < G; g++) acc[p][g] = _mm512_setzero_si512();
    for (size_t k = 0; k < kw; k++) {
        __m512i wv[4];
        for (int g = 0; g < G; g++) wv[g] = _mm512_loadu_si512(w + (g * kw + k) * L);
        for (int p = 0; p < P; p++) {
            const __m512i av = _mm512_set1_epi64((long long)a[p * lda + k]);
            for (int g = 0; g < G; g++)
                acc[p][g] = _mm512_add_epi64(acc[p][g],
                                             _mm512_popcnt_epi64(_mm512_xor_si512(av, wv[g])));
        }
    }
    for (int g = 0; g < G; g++) {
        const size_t valid = lanes > (size_t)g * L ? lanes - (size_t)g * L : 0;
        int32_t *cg = c + (size_t)g * L * ldc;
        if (P == 4 && valid >= L) {
            /* rows: 8 channels of one pixel as int32 */
            const __m256i r0 = _mm512_cvtepi64_epi32(acc[0][g]), r1 = _mm512_cvtepi64_epi32(acc[1][g]);
            const __m256i r2 = _mm512_cvtepi64_epi32(acc[2][g]), r3 = _mm512_cvtepi64_epi32(acc[3][g]);
            for (int half = 0; half < 2; half++) {
                __m128 q0 = _mm_castsi128_ps(half ? _mm256_extracti128_si256(r0, 1) : _mm256_castsi256_si128(r0));
                __m128 q1 = _mm_castsi128_ps(half ? _mm256_extracti128_si256(r1, 1) : _mm256_castsi256_si128(r1));
                __m128 q2 = _mm_castsi128_ps(half ? _mm256_extracti128_si256(r2, 1) : _mm256_castsi256_si128(r2));
                __m128 q3 = _mm_castsi128_ps(half ? _mm256_extracti128_si256(r3, 1) : _mm256_castsi256_si128(r3));
                _MM_TRANSPOSE4_PS(q0, q1, q2, q3);
                int32_t *ch = cg + (size_t)(4 * half) * ldc;
                _mm_storeu_si128((__m128i *)(ch + 0 * ldc), _mm_castps_si128(q0));
                _mm_storeu_si128((__m128i *)(ch + 1 * ldc), _mm_castps_si128(q1));
                _mm_storeu_si128((__m128i *)(ch + 2 * ldc), _mm_castps_si128(q2));
                _mm_storeu_si128((__m128i *)(ch + 3 * ldc), _mm_castps_si128(q3));
            }
        } else {
            for (int p = 0; p < P; p++) {
                int32_t t[8];
                _mm256_storeu_si256((__m256i *)t, _mm512_cvtepi64_epi32(acc[p][g]));
                for (size_t l = 0; l < valid && l < L; l++) cg[l * ldc + p] = t[l];
            }
        }
    }
}

BF_AVX512_INLINE void groups_of(const int G, size_t n_pix, size_t kw, const bf_word *a,
                                size_t lda, const bf_word *w, int32_t *cg, size_t ldc,
                                size_t lanes) {
    size_t p = 0;
    for (; p + 4 <= n_pix; p += 4) tile(4, G, kw, a + p * lda, lda, w, cg + p, ldc, lanes);
    for (; p < n_pix; p++) tile(1, G, kw, a + p * lda, lda, w, cg + p, ldc, lanes);
}

BF_TARGET_AVX512 void bf_xnor_panel__avx512vpopcnt(size_t n_pix, size_t n_ch, size_t kw,
                                                   const bf_word *a, size_t lda,
                                                   const bf_word *panel, int32_t *c,
                                                   size_t ldc) {
    const size_t groups = (n_ch + L - 1) / L;
    size_t g = 0;
    for (; g + 4 <= groups; g += 4)
        groups_of(4, n_pix, kw, a, lda, panel + g * kw * L, c + g * L * ldc, ldc, n_ch - g * L);
    const size_t left = groups - g;
    const bf_word *w = panel + g * kw * L;
    int32_t *cg = c + g * L * ldc;
    if (left == 3) groups_of(3, n_pix, kw, a, lda, w, cg, ldc, n_ch - g * L);
    if (left == 2) groups_of(2, n_pix, kw, a, lda, w, cg, ldc, n_ch - g * L);
    if (left == 1) groups_of(1, n_pix, kw, a, lda, w, cg, ldc, n_ch - g * L);
}
#endif
