/*
 * AVX-512 max pooling: the scalar kernel's two passes per output row, vectorized. The
 * vertical pass takes the max of the window's input rows 16 floats at a time; the
 * horizontal pass computes 16 outputs at once where their windows lie inside the row
 * (stride 1: shifted loads; stride 2: even lanes of two loads, vpermt2ps), masked loads
 * for the last block; edge windows and other strides run the scalar loop. NaN
 * propagates (a compare-unordered blend after each vmaxps).
 */
#include "maxpool.h"

#if BF_ARCH_X86
#include <immintrin.h>

#include "../bf_common.h"

BF_TARGET_AVX512 static inline __m512 max_nan16(__m512 m, __m512 v) {
    const __m512 r = _mm512_max_ps(v, m); /* m when either is NaN */
    return _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
}

static inline float max_nan(float m, float v) {
    m = v > m ? v : m;
    return v != v ? v : m;
}

static inline __mmask16 first_lanes(size_t n) {
    return (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1u);
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

BF_TARGET_AVX512 void bf_maxpool2d__avx512(const float *x, float *out, size_t planes, size_t h,
                                           size_t w, size_t ho, size_t wo, size_t kh,
                                           size_t kw, size_t sh, size_t sw, size_t ph,
                                           size_t pw, float *row) {
    /* outputs [lo, hi) have their whole window inside the row; strides above 2 have no
     * vector path (lo = hi = wo: every output takes the scalar loop) */
    size_t lo = (pw + sw - 1) / sw, hi = 0;
    if (w + pw >= kw) hi = (w + pw - kw) / sw + 1;
    if (hi > wo) hi = wo;
    if (lo > hi) lo = hi;
    if (sw > 2) lo = hi = wo;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
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
                for (size_t i = 0; i < w; i += 16) {
                    const __mmask16 km = first_lanes(w - i);
                    __m512 m = _mm512_maskz_loadu_ps(km, first + i);
                    for (long y = ya + 1; y < yb; y++)
                        m = max_nan16(m, _mm512_maskz_loadu_ps(km, plane + (size_t)y * w + i));
                    _mm512_mask_storeu_ps(row + i, km, m);
                }
                r = row;
            }
            for (size_t ox = 0; ox < lo; ox++) o[ox] = window_max(r, w, ox, kw, sw, pw);
            for (size_t ox = lo; ox < hi; ox += 16) {
                const size_t nv = hi - ox < 16 ? hi - ox : 16;
                const float *base = r + ox * sw - pw;
                __m512 m;
                if (sw == 1) {
                    const __mmask16 km = first_lanes(nv);
                    m = _mm512_maskz_loadu_ps(km, base);
                    for (size_t kx = 1; kx < kw; kx++)
                        m = max_nan16(m, _mm512_maskz_loadu_ps(km, base + kx));
                } else {
                    const size_t need = 2 * (nv - 1) + 1; /* floats the even lanes read */
                    const __mmask16 k0 = first_lanes(need),
                                    k1 = first_lanes(need > 16 ? need - 16 : 0);
                    m = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(k0, base), even,
                                               _mm512_maskz_loadu_ps(k1, base + 16));
                    for (size_t kx = 1; kx < kw; kx++) {
                        const __m512 v = _mm512_permutex2var_ps(
                            _mm512_maskz_loadu_ps(k0, base + kx), even,
                            _mm512_maskz_loadu_ps(k1, base + kx + 16));
                        m = max_nan16(m, v);
                    }
                }
                _mm512_mask_storeu_ps(o + ox, first_lanes(nv), m);
            }
            for (size_t ox = hi; ox < wo; ox++) o[ox] = window_max(r, w, ox, kw, sw, pw);
        }
    }
}
#endif
