/*
 * AVX2 panel product (xnor_panel.h), L = 4 channels per ymm (one 64-bit word each).
 *
 * Tile: 4 pixels x 2 channel groups (8 channels), K innermost. Per word k: load the
 * groups' weight vectors, broadcast each pixel's word, xor, popcount per byte by nibble
 * lookup (vpshufb) and add into byte accumulators; after at most 31 words (31 * 8 = 248
 * < 256) one vpsadbw folds the bytes into 64-bit lanes, which are the channels' counts.
 * No horizontal reduction: a 4 x 4 transpose stores 4 pixels per channel at once.
 */
#include "xnor_panel.h"

#if BF_ARCH_X86
#include <immintrin.h>

#define L BF_PANEL_LANES_AVX2
#define CHUNK 31
#ifndef PT
#define PT 4 /* pixels per tile (3 spills less, 4 measured ~5-10% faster on Zen 3) */
#endif
#define BF_AVX2_INLINE static inline __attribute__((always_inline)) BF_TARGET_AVX2

BF_AVX2_INLINE __m256i popcount_bytes(__m256i v, __m256i table, __m256i low) {
    const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
    const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(lo, hi);
}

/* The low 32 bits of each 64-bit lane, as 4 int32. */
BF_AVX2_INLINE __m128i narrow(__m256i v) {
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(v, idx));
}

/* P pixels (their segment pointers) x G groups of 4 channels; `lanes` valid channels. */
BF_AVX2_INLINE void tile(const int P, const int G, const bf_word *const *rows, size_t n_seg,
                         size_t seg_len, const bf_word *w, size_t kw, int32_t *c, size_t c_ch,
                         size_t c_pix, size_t lanes) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    /* Counts so far, in memory behind a pointer the compiler cannot see through: folded
     * into once per chunk, they would otherwise take 8 registers and push accumulators
     * onto the stack (16 ymm: 8 accumulators, 2 weight vectors, a broadcast, the table,
     * the mask and temporaries: 3-8% slower on Zen 3, paired, bench/isa_pair.py). */
    int64_t tot_at[PT * 2 * 4] __attribute__((aligned(32)));
    int64_t *tot = tot_at;
    __asm__("" : "+r"(tot));
    for (int i = 0; i < P * G; i++) _mm256_store_si256((__m256i *)(tot + 4 * i), zero);
    size_t s = 0, k0 = 0, left = n_seg * seg_len;
    while (left) { /* a chunk of at most CHUNK words, so no byte overflows (<= 8 a word) */
        size_t n = left < CHUNK ? left : CHUNK;
        left -= n;
        __m256i acc[PT][2];
        for (int p = 0; p < P; p++)
            for (int g = 0; g < G; g++) acc[p][g] = zero;
        while (n) { /* the chunk's words in segment s, from word k0 */
            const size_t k1 = seg_len - k0 < n ? seg_len : k0 + n;
            const bf_word *ap[PT];
            for (int p = 0; p < P; p++) ap[p] = rows[(size_t)p * n_seg + s];
            const bf_word *ws = w + s * seg_len * L;
            for (size_t k = k0; k < k1; k++) {
                __m256i wv[2];
                for (int g = 0; g < G; g++)
                    wv[g] = _mm256_loadu_si256((const __m256i *)(ws + (g * kw + k) * L));
                for (int p = 0; p < P; p++) {
                    const __m256i av = _mm256_set1_epi64x((long long)ap[p][k]);
                    for (int g = 0; g < G; g++)
                        acc[p][g] = _mm256_add_epi8(
                            acc[p][g], popcount_bytes(_mm256_xor_si256(av, wv[g]), table, low));
                }
            }
            n -= k1 - k0;
            if (k1 == seg_len) s++, k0 = 0;
            else k0 = k1;
        }
        for (int p = 0; p < P; p++)
            for (int g = 0; g < G; g++) {
                __m256i *t = (__m256i *)(tot + 4 * (p * G + g));
                _mm256_store_si256(t, _mm256_add_epi64(_mm256_load_si256(t),
                                                       _mm256_sad_epu8(acc[p][g], zero)));
            }
    }
    __m256i sum[PT][2];
    for (int p = 0; p < P; p++)
        for (int g = 0; g < G; g++)
            sum[p][g] = _mm256_load_si256((const __m256i *)(tot + 4 * (p * G + g)));
    for (int g = 0; g < G; g++) {
        const size_t valid = lanes > (size_t)g * L ? lanes - (size_t)g * L : 0;
        int32_t *cg = c + (size_t)g * L * c_ch;
        if (c_ch == 1 && valid >= L) { /* pixel-major: 4 channels of a pixel are contiguous */
            for (int p = 0; p < P; p++)
                _mm_storeu_si128((__m128i *)(cg + (size_t)p * c_pix), narrow(sum[p][g]));
        } else if (c_pix == 1 && P == 4 && PT == 4 && valid >= L) {
            __m128 r0 = _mm_castsi128_ps(narrow(sum[0][g]));
            __m128 r1 = _mm_castsi128_ps(narrow(sum[1][g]));
            __m128 r2 = _mm_castsi128_ps(narrow(sum[2][g]));
            __m128 r3 = _mm_castsi128_ps(narrow(sum[3][g]));
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
            _mm_storeu_si128((__m128i *)(cg + 0 * c_ch), _mm_castps_si128(r0));
            _mm_storeu_si128((__m128i *)(cg + 1 * c_ch), _mm_castps_si128(r1));
            _mm_storeu_si128((__m128i *)(cg + 2 * c_ch), _mm_castps_si128(r2));
            _mm_storeu_si128((__m128i *)(cg + 3 * c_ch), _mm_castps_si128(r3));
        } else {
            for (int p = 0; p < P; p++) {
                int32_t t[4];
                _mm_storeu_si128((__m128i *)t, narrow(sum[p][g]));
                for (size_t l = 0; l < valid && l < L; l++) cg[l * c_ch + (size_t)p * c_pix] = t[l];
            }
        }
    }
}

/* All pixels against G groups of 4 channels: tiles of PT pixels, then one 1 to PT - 1. */
BF_AVX2_INLINE void groups_of(const int G, size_t n_pix, const bf_word *const *rows,
                              size_t n_seg, size_t seg_len, const bf_word *w, size_t kw,
                              int32_t *cg, size_t c_ch, size_t c_pix, size_t lanes) {
    size_t p = 0;
    for (; p + PT <= n_pix; p += PT)
        tile(PT, G, rows + p * n_seg, n_seg, seg_len, w, kw, cg + p * c_pix, c_ch, c_pix, lanes);
    const bf_word *const *r = rows + p * n_seg;
    int32_t *cp = cg + p * c_pix;
    switch (n_pix - p) {
    case 3: tile(3, G, r, n_seg, seg_len, w, kw, cp, c_ch, c_pix, lanes); break;
    case 2: tile(2, G, r, n_seg, seg_len, w, kw, cp, c_ch, c_pix, lanes); break;
    case 1: tile(1, G, r, n_seg, seg_len, w, kw, cp, c_ch, c_pix, lanes); break;
    default: break;
    }
}

BF_TARGET_AVX2 void bf_xnor_panel__avx2(BF_XNOR_PANEL_ARGS) {
    const size_t groups = (n_ch + L - 1) / L;
    size_t g = 0;
    for (; g + 2 <= groups; g += 2)
        groups_of(2, n_pix, rows, n_seg, seg_len, panel + g * kw * L, kw, c + g * L * c_ch, c_ch,
                  c_pix, n_ch - g * L);
    if (g < groups)
        groups_of(1, n_pix, rows, n_seg, seg_len, panel + g * kw * L, kw, c + g * L * c_ch, c_ch,
                  c_pix, n_ch - g * L);
    /* not in the tile: its 16 ymm registers are all taken (xnor_panel.h) */
    bf_xnor_panel_add_rows(n_pix, n_ch, add, c, c_ch, c_pix);
}
#endif
