/*
 * AVX-512 VPOPCNTDQ panel product (xnor_panel.h), L = 8 channels per zmm. Mirrors the
 * AVX2 kernel: tile of up to 4 pixels x 4 channel groups (32 channels, 16 accumulators),
 * K innermost; per word k: load the groups' weight vectors, broadcast each pixel's word
 * (embedded-broadcast operand of vpxorq), xor, vpopcntq, vpaddq into 64-bit lanes, which
 * are the channels' counts. Two vpermt2d per 8 channels put each channel's 4 pixels in a
 * 128-bit lane, stored at once.
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
            /* z01 = pixels 0 | 1, z23 = pixels 2 | 3 (8 channels each, int32); one vpermt2d
             * per 4 channels gathers each channel's 4 pixels into a 128-bit lane */
            const __m512i z01 = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm512_cvtepi64_epi32(acc[0][g])),
                _mm512_cvtepi64_epi32(acc[1][g]), 1);
            const __m512i z23 = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm512_cvtepi64_epi32(acc[2][g])),
                _mm512_cvtepi64_epi32(acc[3][g]), 1);
            const __m512i lo_idx = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26,
                                                     3, 11, 19, 27);
            const __m512i hi_idx = _mm512_add_epi32(lo_idx, _mm512_set1_epi32(4));
            const __m512i lo = _mm512_permutex2var_epi32(z01, lo_idx, z23);
            const __m512i hi = _mm512_permutex2var_epi32(z01, hi_idx, z23);
            _mm_storeu_si128((__m128i *)(cg + 0 * ldc), _mm512_extracti32x4_epi32(lo, 0));
            _mm_storeu_si128((__m128i *)(cg + 1 * ldc), _mm512_extracti32x4_epi32(lo, 1));
            _mm_storeu_si128((__m128i *)(cg + 2 * ldc), _mm512_extracti32x4_epi32(lo, 2));
            _mm_storeu_si128((__m128i *)(cg + 3 * ldc), _mm512_extracti32x4_epi32(lo, 3));
            _mm_storeu_si128((__m128i *)(cg + 4 * ldc), _mm512_extracti32x4_epi32(hi, 0));
            _mm_storeu_si128((__m128i *)(cg + 5 * ldc), _mm512_extracti32x4_epi32(hi, 1));
            _mm_storeu_si128((__m128i *)(cg + 6 * ldc), _mm512_extracti32x4_epi32(hi, 2));
            _mm_storeu_si128((__m128i *)(cg + 7 * ldc), _mm512_extracti32x4_epi32(hi, 3));
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
    switch (n_pix - p) { /* the last 1 to 3 pixels in one tile */
    case 3: tile(3, G, kw, a + p * lda, lda, w, cg + p, ldc, lanes); break;
    case 2: tile(2, G, kw, a + p * lda, lda, w, cg + p, ldc, lanes); break;
    case 1: tile(1, G, kw, a + p * lda, lda, w, cg + p, ldc, lanes); break;
    default: break;
    }
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
