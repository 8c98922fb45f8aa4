/*
 * AVX2 sign_pack: compares 8 pixels of one channel at a time (vcmpps + vmovmskps) and
 * scatters the 8 result bits into the 8 pixels' words of the current 64-channel group,
 * kept in registers for a block of 8 pixels; a scalar tail handles the last pixels.
 */
#include "sign_pack.h"

#if BF_ARCH_X86
#include <immintrin.h>
#include <string.h>

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
                /* bit (ch - c0) of words[j] is pixel p + j's sign */
                uint64_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (size_t ch = c0; ch < c1; ch++) {
                    const __m256 t = _mm256_set1_ps(threshold ? threshold[ch] : 0.0f);
                    const __m256 v = _mm256_loadu_ps(xb + ch * s + p);
                    /* ordered less-than: NaN compares false and packs as +1 */
                    const uint64_t m = (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(v, t, _CMP_LT_OQ));
                    /* spread the 8 mask bits to bit 0 of 8 bytes, then shift into place */
                    const uint64_t spread = _pdep_u64(m, 0x0101010101010101ULL);
                    const unsigned shift = (unsigned)(ch - c0);
                    for (int j = 0; j < 8; j++) words[j] |= ((spread >> (8 * j)) & 1u) << shift;
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
