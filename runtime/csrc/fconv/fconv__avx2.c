/*
 * AVX2 kernel: 4 channels x 24 outputs (12 ymm accumulators, named: GCC keeps an array of
 * vectors in memory); per tap three loads of the input and four broadcast FMAs. The last
 * block of a plane loads under a mask (nothing past the input is read); outputs go
 * through a stack tile into their rows.
 */
#include "fconv.h"

#if BF_ARCH_X86
#include <immintrin.h>

#define BF_TARGET_AVX2_FMA __attribute__((target("avx2,fma")))
#define BF_FCONV_ROWS(X) X(0) X(1) X(2) X(3)

BF_TARGET_AVX2_FMA static inline __m256i lane_mask(size_t lanes) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)lanes), idx);
}

BF_TARGET_AVX2_FMA void bf_fconv_4x24__avx2(size_t k, const float *x, const size_t *off,
                                            const float *w, size_t nq, size_t mr,
                                            const float *bias, int relu, size_t q0, size_t wpl,
                                            size_t wo, float *out, size_t ldo) {
    enum { MR = BF_FCONV_MR_AVX2, NR = BF_FCONV_NR_AVX2 };
#define DECL(m) __m256 a##m = _mm256_setzero_ps(), b##m = a##m, c##m = a##m;
    BF_FCONV_ROWS(DECL)
#undef DECL
#define FMA(m)                                                                               \
    {                                                                                        \
        const __m256 wm = _mm256_broadcast_ss(wt + m);                                       \
        a##m = _mm256_fmadd_ps(wm, x0, a##m);                                                \
        b##m = _mm256_fmadd_ps(wm, x1, b##m);                                                \
        c##m = _mm256_fmadd_ps(wm, x2, c##m);                                                \
    }
    if (nq == NR) {
        for (size_t t = 0; t < k; t++) {
            const float *xt = x + off[t];
            const __m256 x0 = _mm256_loadu_ps(xt), x1 = _mm256_loadu_ps(xt + 8),
                         x2 = _mm256_loadu_ps(xt + 16);
            const float *wt = w + t * MR;
            BF_FCONV_ROWS(FMA)
        }
    } else {
        const __m256i k0 = lane_mask(nq), k1 = lane_mask(nq > 8 ? nq - 8 : 0),
                      k2 = lane_mask(nq > 16 ? nq - 16 : 0);
        for (size_t t = 0; t < k; t++) {
            const float *xt = x + off[t];
            const __m256 x0 = _mm256_maskload_ps(xt, k0), x1 = _mm256_maskload_ps(xt + 8, k1),
                         x2 = _mm256_maskload_ps(xt + 16, k2);
            const float *wt = w + t * MR;
            BF_FCONV_ROWS(FMA)
        }
    }
#undef FMA
    float tile[MR][NR];
#define SPILL(m)                                                                             \
    {                                                                                        \
        const __m256 bm = _mm256_set1_ps(bias && m < mr ? bias[m] : 0.0f);                   \
        __m256 r0 = _mm256_add_ps(a##m, bm), r1 = _mm256_add_ps(b##m, bm),                   \
               r2 = _mm256_add_ps(c##m, bm);                                                 \
        if (relu) { /* max(0, v) keeps NaN */                                                \
            r0 = _mm256_max_ps(_mm256_setzero_ps(), r0);                                     \
            r1 = _mm256_max_ps(_mm256_setzero_ps(), r1);                                     \
            r2 = _mm256_max_ps(_mm256_setzero_ps(), r2);                                     \
        }                                                                                    \
        _mm256_storeu_ps(tile[m], r0);                                                       \
        _mm256_storeu_ps(tile[m] + 8, r1);                                                   \
        _mm256_storeu_ps(tile[m] + 16, r2);                                                  \
    }
    BF_FCONV_ROWS(SPILL)
#undef SPILL
    size_t i = 0, oy = q0 / wpl, ox = q0 % wpl;
    while (i < nq) {
        if (ox >= wo) { /* the plane row's dropped columns */
            i += wpl - ox;
            ox = 0;
            oy++;
            continue;
        }
        const size_t len = wo - ox < nq - i ? wo - ox : nq - i;
        float *o = out + oy * wo + ox;
        for (size_t m = 0; m < mr; m++)
            for (size_t j = 0; j < len; j++) o[m * ldo + j] = tile[m][i + j];
        i += len;
        ox += len;
    }
}
#endif
