/*
 * xnor_panel__avx512.h - what the two AVX-512 panel kernels share (xnor_panel.h; L = 8
 * channels per zmm, one 64-bit word each): the stores of a tile of up to 4 pixels x 4
 * channel groups whose accumulators hold 64-bit counts, and (xnor_panel__avx512_driver.h)
 * the loops over channel groups and pixel tiles. A kernel file includes it, defines its
 *
 *   BF_PANEL_INLINE void tile(P, G, rows, n_seg, seg_len, w, kw, add, ch0, c, c_ch, c_pix,
 *                             lanes)
 *
 * (P and G compile-time constants once inlined, its accumulators 64-bit counts it hands to
 * store_tile with the tile's rows of `add` and its first channel ch0), then includes
 * xnor_panel__avx512_driver.h for the loops and the entry point.
 */
#ifndef BF_XNOR_PANEL_AVX512_H
#define BF_XNOR_PANEL_AVX512_H

#include "xnor_panel.h"

#if BF_ARCH_X86
#include <immintrin.h>

#define L BF_PANEL_LANES_AVX512
#define BF_AVX512_INLINE static inline __attribute__((always_inline)) BF_TARGET_AVX512

/* The counts t[p][g][l] of a tile's valid channels into c (the slow path, kept out of line
 * so the accumulators stay in registers in the tile's own code). */
static __attribute__((noinline)) void store_counts(int P, int G, int32_t t[4][4][8], int32_t *c,
                                                   size_t c_ch, size_t c_pix, size_t lanes) {
    for (int g = 0; g < G; g++) {
        const size_t valid = lanes > (size_t)g * L ? lanes - (size_t)g * L : 0;
        for (int p = 0; p < P; p++)
            for (size_t l = 0; l < valid && l < L; l++)
                c[((size_t)g * L + l) * c_ch + (size_t)p * c_pix] = t[p][g][l];
    }
}

/* The four 128-bit lanes of v to rows r, r + ld, r + 2 ld, r + 3 ld: vextracti32x4 straight
 * to memory (a store, no shuffle uop; GCC emits that form for the full-mask store of an
 * extract, not for a plain store of it). */
BF_AVX512_INLINE void store_rows4(int32_t *r, size_t ld, __m512i v) {
    _mm_storeu_si128((__m128i *)r, _mm512_castsi512_si128(v));
    _mm_mask_storeu_epi32(r + ld, 0xf, _mm512_extracti32x4_epi32(v, 1));
    _mm_mask_storeu_epi32(r + 2 * ld, 0xf, _mm512_extracti32x4_epi32(v, 2));
    _mm_mask_storeu_epi32(r + 3 * ld, 0xf, _mm512_extracti32x4_epi32(v, 3));
}

/* The 4 x G tile's counts acc[p][g] (64-bit lanes, < 2^32), plus the pixels' rows of `add`
 * from channel ch0 where add and add[p] are not NULL, to c; `lanes` valid channels. */
BF_AVX512_INLINE void store_tile(const int P, const int G, __m512i acc[4][4],
                                 const int32_t *const *add, size_t ch0, int32_t *c,
                                 size_t c_ch, size_t c_pix, size_t lanes) {
    if (add)
        for (int p = 0; p < P; p++)
            if (add[p])
                for (int g = 0; g < G; g++)
                    acc[p][g] = _mm512_add_epi64(
                        acc[p][g], _mm512_cvtepi32_epi64(_mm256_loadu_si256(
                                       (const __m256i *)(add[p] + ch0 + (size_t)g * L))));
    /* the low dwords of two accumulators' 64-bit lanes (counts < 2^32): a | b as 16 int32
     * in one vpermt2d (vpmovqd is much slower on Zen 4) */
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    /* every loop below has constant bounds: a runtime acc index would put the accumulators
     * on the stack */
    if (lanes >= (size_t)G * L) {
        if (c_ch == 1 && G % 2 == 0) { /* pixel-major: 16 channels of a pixel in one store */
            for (int g = 0; g < G; g += 2)
                for (int p = 0; p < P; p++)
                    _mm512_storeu_si512(c + (size_t)g * L + (size_t)p * c_pix,
                                        _mm512_permutex2var_epi32(acc[p][g], even, acc[p][g + 1]));
            return;
        }
        if (c_pix == 1 && P == 4) { /* channel-major: 4 pixels of a channel in one store */
            const __m512i lo_idx = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26,
                                                     3, 11, 19, 27);
            const __m512i hi_idx = _mm512_add_epi32(lo_idx, _mm512_set1_epi32(4));
            for (int g = 0; g < G; g++) {
                int32_t *cg = c + (size_t)g * L * c_ch;
                /* z01 = pixels 0 | 1, z23 = pixels 2 | 3 (8 channels each); one vpermt2d per
                 * 4 channels gathers each channel's 4 pixels into a 128-bit lane */
                const __m512i z01 = _mm512_permutex2var_epi32(acc[0][g], even, acc[1][g]);
                const __m512i z23 = _mm512_permutex2var_epi32(acc[2][g], even, acc[3][g]);
                const __m512i lo = _mm512_permutex2var_epi32(z01, lo_idx, z23);
                const __m512i hi = _mm512_permutex2var_epi32(z01, hi_idx, z23);
                store_rows4(cg, c_ch, lo);
                store_rows4(cg + 4 * c_ch, c_ch, hi);
            }
            return;
        }
    }
    int32_t t[4][4][8]; /* channel tails, other strides: through memory */
    for (int p = 0; p < P; p++)
        for (int g = 0; g < G; g++)
            _mm256_storeu_si256((__m256i *)t[p][g],
                                _mm512_castsi512_si256(
                                    _mm512_permutex2var_epi32(acc[p][g], even, acc[p][g])));
    store_counts(P, G, t, c, c_ch, c_pix, lanes);
}

#endif
#endif
