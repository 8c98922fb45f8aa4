/* AVX2 (+F16C, FMA): a block of 64 outputs in 8 ymm accumulators; per input, 8 vcvtph2ps
 * + 8 FMAs. */
#include "flinear.h"

#if BF_ARCH_X86
#include <immintrin.h>

#define BF_TARGET_AVX2_F16C __attribute__((target("avx2,fma,f16c")))

BF_TARGET_AVX2_F16C void bf_flinear__avx2(const float *x, size_t n, size_t in,
                                          const uint16_t *packed, const float *bias, size_t out,
                                          float *y) {
    enum { B = BF_FLINEAR_BLOCK };
#define W8(o) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + (o))))
    for (size_t b = 0; b < n; b++) {
        const float *xb = x + b * in;
        for (size_t ob = 0; ob * B < out; ob++) {
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
                   a6 = a0, a7 = a0;
            const uint16_t *w = packed + ob * in * B;
            for (size_t i = 0; i < in; i++, w += B) {
                const __m256 xi = _mm256_set1_ps(xb[i]);
                a0 = _mm256_fmadd_ps(xi, W8(0), a0);
                a1 = _mm256_fmadd_ps(xi, W8(8), a1);
                a2 = _mm256_fmadd_ps(xi, W8(16), a2);
                a3 = _mm256_fmadd_ps(xi, W8(24), a3);
                a4 = _mm256_fmadd_ps(xi, W8(32), a4);
                a5 = _mm256_fmadd_ps(xi, W8(40), a5);
                a6 = _mm256_fmadd_ps(xi, W8(48), a6);
                a7 = _mm256_fmadd_ps(xi, W8(56), a7);
            }
            float tile[B];
            _mm256_storeu_ps(tile, a0);
            _mm256_storeu_ps(tile + 8, a1);
            _mm256_storeu_ps(tile + 16, a2);
            _mm256_storeu_ps(tile + 24, a3);
            _mm256_storeu_ps(tile + 32, a4);
            _mm256_storeu_ps(tile + 40, a5);
            _mm256_storeu_ps(tile + 48, a6);
            _mm256_storeu_ps(tile + 56, a7);
            const size_t base = ob * B, live = out - base < B ? out - base : B;
            for (size_t j = 0; j < live; j++)
                y[b * out + base + j] = tile[j] + (bias ? bias[base + j] : 0.0f);
        }
    }
#undef W8
}
#endif
