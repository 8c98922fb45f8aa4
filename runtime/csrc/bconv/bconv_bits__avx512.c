/*
 * The bits-output transform of bconv.c (bconv.h step 4 for out_bits) with AVX-512: a
 * pixel's channels 16 at a time, the comparison's mask register being the packed bits.
 * Every step is the same IEEE single operation, in the same order, as the plain C
 * transform (no FMA contraction under -std=c11; relu as max(y, +0) returns +0 for NaN and
 * -0 like `y > 0 ? y : 0`), so the bits equal it exactly.
 */
#include "bconv.h"

#if BF_ARCH_X86
#include <immintrin.h>

BF_TARGET_AVX512 void bf_bconv_bits__avx512(const bf_bconv_args *g, size_t p0, size_t mt,
                                            size_t co0, size_t nt, const int32_t *c, size_t ldc,
                                            const int32_t *kvec, const float *pos) {
    const size_t hw = g->ho * g->wo, cout = g->cout, cout_w = BF_WORDS_FOR(cout);
    const __m512 zero = _mm512_setzero_ps();
    const __m512 lo = _mm512_set1_ps(g->min_val), hi = _mm512_set1_ps(g->max_val);
    bf_word *out = (bf_word *)g->out + co0 / BF_WORD_BITS;
    for (size_t i = 0; i < mt; i++) {
        const int32_t *ci = c + i * ldc;
        const __m512i kk = _mm512_set1_epi32(kvec[i]);
        const __m512 ps = _mm512_set1_ps(g->pos_h ? pos[i] : 1.0f);
        const size_t p = p0 + i, b = p / hw, r = p % hw;
        bf_word word = 0;
        for (size_t j = 0; j < nt; j += 16) {
            const __mmask16 m = nt - j >= 16 ? (__mmask16)0xffff
                                             : (__mmask16)(((uint32_t)1 << (nt - j)) - 1);
            const size_t co = co0 + j;
            const __m512i cnt = _mm512_maskz_loadu_epi32(m, ci + j);
            const __m512i acc = _mm512_sub_epi32(kk, _mm512_add_epi32(cnt, cnt));
            __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_maskz_loadu_ps(m, g->scale + co));
            if (g->pos_h) y = _mm512_mul_ps(y, ps);
            y = _mm512_add_ps(y, g->bias ? _mm512_maskz_loadu_ps(m, g->bias + co) : zero);
            if (g->activation == BF_ACT_RELU) {
                y = _mm512_max_ps(y, zero);
            } else if (g->activation == BF_ACT_PRELU) {
                const __m512 sl = _mm512_maskz_loadu_ps(m, g->slope + co);
                y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, zero, _CMP_GE_OQ),
                                         _mm512_mul_ps(y, sl), y);
            } else if (g->activation == BF_ACT_HARDTANH) { /* y < lo ? lo : (y > hi ? hi : y) */
                const __mmask16 below = _mm512_cmp_ps_mask(y, lo, _CMP_LT_OQ);
                y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, hi, _CMP_GT_OQ), y, hi);
                y = _mm512_mask_blend_ps(below, y, lo);
            }
            if (g->residual) { /* NCHW: this pixel's channels are hw apart */
                const __m512i idx = _mm512_mullo_epi32(
                    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                    _mm512_set1_epi32((int)hw));
                const float *res = g->residual + (b * cout + co) * hw + r;
                y = _mm512_add_ps(y, _mm512_mask_i32gather_ps(zero, m, idx, res, 4));
            }
            if (g->post_relu) y = _mm512_max_ps(y, zero);
            const __m512 th = g->out_threshold ? _mm512_maskz_loadu_ps(m, g->out_threshold + co)
                                               : zero;
            word |= (bf_word)(_mm512_cmp_ps_mask(y, th, _CMP_LT_OQ) & m) << j;
        }
        out[(p0 + i) * cout_w] = word;
    }
}
#endif
