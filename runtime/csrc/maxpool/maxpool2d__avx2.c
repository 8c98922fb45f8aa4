/*
 * AVX2 max pooling: the AVX-512 kernel's scheme with 8 lanes. The vertical pass takes
 * the max of the window's input rows 8 floats at a time; the horizontal pass computes 8
 * outputs at once where their windows lie inside the row (stride 1: shifted loads;
 * stride 2: even lanes of two loads, vshufps + vpermpd), masked loads (vmaskmovps, slow on
 * AMD) only for a last partial block; edge windows and other strides run the scalar loop.
 * NaN propagates (a compare-unordered blend after each vmaxps).
 */
#include "maxpool.h"

#if BF_ARCH_X86
#include <immintrin.h>

#include "../bf_common.h"

BF_TARGET_AVX2 static inline __m256 max_nan8(__m256 m, __m256 v) {
    const __m256 r = _mm256_max_ps(v, m); /* m when either is NaN */
    return _mm256_blendv_ps(r, v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

static inline float max_nan(float m, float v) {
    m = v > m ? v : m;
    return v != v ? v : m;
}

BF_TARGET_AVX2 static inline __m256i first_lanes8(size_t n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n > 8 ? 8 : n)), idx);
}

/* One output of a clipped window (the scalar kernel's loop). */
static inline float window_max(const float *row, size_t w, size_t ox, size_t kw, size_t sw,
                               size_t pw) {
    const long x0 = (long)(ox * sw) - (long)pw;
    long xa = x0 < 0 ? 0 : x0, xb = x0 + (long)kw;
    if (xb > (long)w) xb = (long)w;
    float m = row[xa];
    for (long i = xa + 1; i < xb; i++) m = max_nan(m, row[i]);
    return m;
}

/* Up to 8 floats from p; only the first n are read (vmaskmovps only for a partial load:
 * it is slow on AMD). */
BF_TARGET_AVX2 static inline __m256 load8(const float *p, size_t n) {
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, first_lanes8(n));
}

BF_TARGET_AVX2 static inline void store8(float *p, size_t n, __m256 v) {
    if (n >= 8)
        _mm256_storeu_ps(p, v);
    else
        _mm256_maskstore_ps(p, first_lanes8(n), v);
}

/* Lanes 0..7 = base[0], base[2], ..., base[14] (reading only the first `need` floats). */
BF_TARGET_AVX2 static inline __m256 even8(const float *base, size_t need) {
    const __m256 a = load8(base, need);
    const __m256 b = load8(base + 8, need > 8 ? need - 8 : 0);
    /* [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6] */
    const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
}

BF_TARGET_AVX2 void bf_maxpool2d__avx2(const float *x, float *out, size_t planes, size_t h,
                                       size_t w, size_t ho, size_t wo, size_t kh, size_t kw,
                                       size_t sh, size_t sw, size_t ph, size_t pw, float *row) {
    /* outputs [lo, hi) have their whole window inside the row; strides above 2 have no
     * vector path (every output takes the scalar loop) */
    size_t lo = (pw + sw - 1) / sw, hi = 0;
    if (w + pw >= kw) hi = (w + pw - kw) / sw + 1;
    if (hi > wo) hi = wo;
    if (lo > hi) lo = hi;
    if (sw > 2) lo = hi = wo;
    for (size_t p = 0; p < planes; p++) {
        const float *plane = x + p * h * w;
        float *o = out + p * ho * wo;
        for (size_t oy = 0; oy < ho; oy++, o += wo) {
            const long y0 = (long)(oy * sh) - (long)ph;
            long ya = y0 < 0 ? 0 : y0, yb = y0 + (long)kh;
            if (yb > (long)h) yb = (long)h;
            const float *first = plane + (size_t)ya * w;
            const float *r = first; /* one input row: read in place */
            if (yb - ya > 1) {
                for (size_t i = 0; i < w; i += 8) {
                    const size_t n = w - i;
                    __m256 m = load8(first + i, n);
                    for (long y = ya + 1; y < yb; y++)
                        m = max_nan8(m, load8(plane + (size_t)y * w + i, n));
                    store8(row + i, n, m);
                }
                r = row;
            }
            for (size_t ox = 0; ox < lo; ox++) o[ox] = window_max(r, w, ox, kw, sw, pw);
            for (size_t ox = lo; ox < hi; ox += 8) {
                const size_t nv = hi - ox < 8 ? hi - ox : 8;
                const float *base = r + ox * sw - pw;
                __m256 m;
                if (sw == 1) {
                    m = load8(base, nv);
                    for (size_t kx = 1; kx < kw; kx++) m = max_nan8(m, load8(base + kx, nv));
                } else {
                    const size_t need = 2 * (nv - 1) + 1; /* floats the even lanes read */
                    m = even8(base, need);
                    for (size_t kx = 1; kx < kw; kx++) m = max_nan8(m, even8(base + kx, need));
                }
                store8(o + ox, nv, m);
            }
            for (size_t ox = hi; ox < wo; ox++) o[ox] = window_max(r, w, ox, kw, sw, pw);
        }
    }
}
#endif
