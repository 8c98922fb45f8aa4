/* AVX-512: a block of 64 outputs in 4 zmm accumulators; per input, 4 vcvtph2ps + 4 FMAs. */
#include "flinear.h"

#if BF_ARCH_X86
#include <immintrin.h>

BF_TARGET_AVX512 void bf_flinear__avx512(const float *x, size_t n, size_t in,
                                         const uint16_t *packed, const float *bias, size_t out,
                                         float *y) {
    enum { B = BF_FLINEAR_BLOCK };
    for (size_t b = 0; b < n; b++) {
        const float *xb = x + b * in;
        for (size_t ob = 0; ob * B < out; ob++) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            const uint16_t *w = packed + ob * in * B;
            for (size_t i = 0; i < in; i++, w += B) {
                const __m512 xi = _mm512_set1_ps(xb[i]);
                a0 = _mm512_fmadd_ps(xi, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)w)),
                                     a0);
                a1 = _mm512_fmadd_ps(
                    xi, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 16))), a1);
                a2 = _mm512_fmadd_ps(
                    xi, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 32))), a2);
                a3 = _mm512_fmadd_ps(
                    xi, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 48))), a3);
            }
            const size_t base = ob * B, live = out - base < B ? out - base : B;
            const __m512 acc[4] = {a0, a1, a2, a3};
            for (size_t v = 0; v * 16 < live; v++) {
                const size_t lanes = live - v * 16 < 16 ? live - v * 16 : 16;
                const __mmask16 k = (__mmask16)(lanes == 16 ? 0xffffu : (1u << lanes) - 1u);
                __m512 r = acc[v];
                if (bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(k, bias + base + v * 16));
                _mm512_mask_storeu_ps(y + b * out + base + v * 16, k, r);
            }
        }
    }
}
#endif
