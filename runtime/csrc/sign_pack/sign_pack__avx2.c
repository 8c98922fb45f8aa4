/*
 * AVX2 sign_pack: compares 8 pixels of one channel at a time (vcmpps + vmovmskps), stacks
 * the masks of 8 channels into an 8x8 bit matrix, transposes it (three delta swaps) so
 * each byte holds one pixel's 8 channel signs, and assembles each pixel's 64-channel
 * word in registers for a block of 8 pixels; a scalar tail handles the last pixels.
 */
#include "sign_pack.h"

#if BF_ARCH_X86
#include <immintrin.h>
#include <string.h>

/* Transpose an 8x8 bit matrix held as 8 bytes (byte i = row i, bit j = column j). */
static inline uint64_t transpose8x8(uint64_t x) {
    uint64_t t;
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;
    x = x ^ t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL;
    x = x ^ t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL;
    x = x ^ t ^ (t << 28);
    return x;
}

BF_TARGET_AVX2 void bf_sign_pack__avx2(const float *x, const float *threshold, bf_word *out,
                                       size_t n, size_t c, size_t s) {
    const size_t cw = BF_WORDS_FOR(c);
    const size_t s8 = s & ~(size_t)7;
    for (size_t b = 0; b < n; b++) {
        const float *xb = x + b * c * s;
        bf_word *ob = out + b * s * cw;
        for (size_t g = 0; g < cw; g++) {
            const size_t c0 = g * BF_WORD_BITS;
            const size_t c1 = c0 + BF_WORD_BITS < c ? c0 + BF_WORD_BITS : c;
            size_t p = 0;
            for (; p < s8; p += 8) {
                /* word j collects pixel p + j's signs of channels c0.. */
                uint64_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (size_t g8 = 0; c0 + 8 * g8 < c1; g8++) {
                    /* byte i = the 8 pixels' signs of channel c0 + 8 g8 + i */
                    uint64_t rows = 0;
                    for (size_t i = 0; i < 8; i++) {
                        const size_t ch = c0 + 8 * g8 + i;
                        if (ch >= c1) break;
                        /* 64 channel rows are more streams than the hardware prefetcher
                         * follows: fetch each row's line 8 pixels ahead of use */
                        if ((p & 15) == 0)
                            _mm_prefetch((const char *)(xb + ch * s + p + 32), _MM_HINT_T0);
                        const __m256 t = _mm256_set1_ps(threshold ? threshold[ch] : 0.0f);
                        const __m256 v = _mm256_loadu_ps(xb + ch * s + p);
                        /* ordered less-than: NaN compares false and packs as +1 */
                        rows |= (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(v, t, _CMP_LT_OQ))
                                << (8 * i);
                    }
                    rows = transpose8x8(rows); /* byte j = pixel j's signs of those channels */
                    for (int j = 0; j < 8; j++) words[j] |= ((rows >> (8 * j)) & 0xffu) << (8 * g8);
                }
                for (int j = 0; j < 8; j++) ob[(p + (size_t)j) * cw + g] = words[j];
            }
            for (; p < s; p++) {
                uint64_t word = 0;
                for (size_t ch = c0; ch < c1; ch++) {
                    const float t = threshold ? threshold[ch] : 0.0f;
                    if (xb[ch * s + p] < t) word |= (uint64_t)1 << (ch - c0);
                }
                ob[p * cw + g] = word;
            }
        }
    }
}
#endif
