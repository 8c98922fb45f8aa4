/*
 * AVX-512 VPOPCNTDQ panel product (xnor_panel.h), L = 8 channels per zmm. Mirrors the
 * AVX2 kernel: tile of up to 4 pixels x 4 channel groups (32 channels, 16 accumulators),
 * K innermost; per word k: load the groups' weight vectors, broadcast each pixel's word
 * (embedded-broadcast operand of vpxorq), xor, vpopcntq, vpaddq into 64-bit lanes, which
 * are the channels' counts. The pixels' words come from their segment pointers (one
 * segment per kernel row: the convolution's input itself, no im2col). Channel-major
 * output: two vpermt2d per 8 channels put each channel's 4 pixels in a 128-bit lane,
 * stored at once (vextracti32x4 to memory); pixel-major output: one vpermt2d + 512-bit
 * store per 16 channels.
 */
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

BF_AVX512_INLINE void tile(const int P, const int G, const bf_word *const *rows, size_t n_seg,
                           size_t seg_len, const bf_word *w, size_t kw, int32_t *c,
                           size_t c_ch, size_t c_pix, size_t lanes) {
    __m512i acc[4][4];
    for (int p = 0; p < P; p++)
        for (int g = 0; g < G; g++) acc[p][g] = _mm512_setzero_si512();
    for (size_t s = 0; s < n_seg; s++) {
        const bf_word *ap[4];
        for (int p = 0; p < P; p++) ap[p] = rows[(size_t)p * n_seg + s];
        const bf_word *ws = w + s * seg_len * L;
        for (size_t k = 0; k < seg_len; k++) {
            __m512i wv[4];
            for (int g = 0; g < G; g++) wv[g] = _mm512_loadu_si512(ws + (g * kw + k) * L);
            for (int p = 0; p < P; p++) {
                const __m512i av = _mm512_set1_epi64((long long)ap[p][k]);
                for (int g = 0; g < G; g++)
                    acc[p][g] = _mm512_add_epi64(
                        acc[p][g], _mm512_popcnt_epi64(_mm512_xor_si512(av, wv[g])));
            }
        }
    }
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

BF_AVX512_INLINE void groups_of(const int G, size_t n_pix, const bf_word *const *rows,
                                size_t n_seg, size_t seg_len, const bf_word *w, size_t kw,
                                int32_t *cg, size_t c_ch, size_t c_pix, size_t lanes) {
    /* the weights after these groups' (the next groups, or the next call's chunk in a
     * caller's contiguous panels) are brought into L1 a share per tile while these run:
     * a network's binary weights do not stay in L2 between calls. Prefetches never fault,
     * past the end of the panel included. */
    const char *ahead = (const char *)(w + (size_t)G * kw * L);
    const size_t lines = (size_t)G * kw * L * sizeof(bf_word) / 64, tiles = (n_pix + 3) / 4;
    const size_t per_tile = (lines + tiles - 1) / tiles;
    size_t p = 0;
    for (; p + 4 <= n_pix; p += 4) {
        for (size_t l = 0; l < per_tile; l++, ahead += 64) _mm_prefetch(ahead, _MM_HINT_T0);
        tile(4, G, rows + p * n_seg, n_seg, seg_len, w, kw, cg + p * c_pix, c_ch, c_pix, lanes);
    }
    const bf_word *const *r = rows + p * n_seg;
    int32_t *cp = cg + p * c_pix;
    switch (n_pix - p) { /* the last 1 to 3 pixels in one tile */
    case 3: tile(3, G, r, n_seg, seg_len, w, kw, cp, c_ch, c_pix, lanes); break;
    case 2: tile(2, G, r, n_seg, seg_len, w, kw, cp, c_ch, c_pix, lanes); break;
    case 1: tile(1, G, r, n_seg, seg_len, w, kw, cp, c_ch, c_pix, lanes); break;
    default: break;
    }
}

BF_TARGET_AVX512 void bf_xnor_panel__avx512vpopcnt(size_t n_pix, size_t n_ch,
                                                   const bf_word *const *rows, size_t n_seg,
                                                   size_t seg_len, const bf_word *panel,
                                                   size_t kw, int32_t *c, size_t c_ch,
                                                   size_t c_pix) {
    const size_t groups = (n_ch + L - 1) / L;
    size_t g = 0;
    for (; g + 4 <= groups; g += 4)
        groups_of(4, n_pix, rows, n_seg, seg_len, panel + g * kw * L, kw, c + g * L * c_ch, c_ch,
                  c_pix, n_ch - g * L);
    const size_t left = groups - g;
    const bf_word *w = panel + g * kw * L;
    int32_t *cg = c + g * L * c_ch;
    const size_t lanes = n_ch - g * L;
    if (left == 3) groups_of(3, n_pix, rows, n_seg, seg_len, w, kw, cg, c_ch, c_pix, lanes);
    if (left == 2) groups_of(2, n_pix, rows, n_seg, seg_len, w, kw, cg, c_ch, c_pix, lanes);
    if (left == 1) groups_of(1, n_pix, rows, n_seg, seg_len, w, kw, cg, c_ch, c_pix, lanes);
}
#endif
