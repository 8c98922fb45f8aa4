/*
 * AVX-512 kernel: 8 channels x 32 outputs (16 zmm accumulators, named: GCC keeps an
 * array of vectors in memory); per tap two loads of the input and eight broadcast FMAs.
 * A block of outputs inside one output row is stored straight from the registers
 * (masked at the row end); a block crossing rows goes through a stack tile, one masked
 * copy per row piece.
 */
#include "fconv.h"

#if BF_ARCH_X86
#include <immintrin.h>

#define BF_FCONV_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

BF_TARGET_AVX512 static inline __m512 finish(__m512 v, float b, int relu) {
    v = _mm512_add_ps(v, _mm512_set1_ps(b));
    /* max(0, v) keeps NaN: vmaxps returns the second operand when either is NaN */
    return relu ? _mm512_max_ps(_mm512_setzero_ps(), v) : v;
}

BF_TARGET_AVX512 void bf_fconv_8x32__avx512(size_t k, const float *x, const size_t *off,
                                            const float *w, size_t nq, size_t mr,
                                            const float *bias, int relu, size_t q0, size_t wpl,
                                            size_t wo, float *out, size_t ldo) {
    enum { MR = BF_FCONV_MR_AVX512 };
#define DECL(m) __m512 lo##m = _mm512_setzero_ps(), hi##m = _mm512_setzero_ps();
    BF_FCONV_ROWS(DECL)
#undef DECL
#define FMA(m)                                                                               \
    {                                                                                        \
        const __m512 wm = _mm512_set1_ps(wt[m]);                                            \
        lo##m = _mm512_fmadd_ps(wm, b0, lo##m);                                              \
        hi##m = _mm512_fmadd_ps(wm, b1, hi##m);                                              \
    }
    if (nq == 32) {
        for (size_t t = 0; t < k; t++) {
            const float *xt = x + off[t];
            const __m512 b0 = _mm512_loadu_ps(xt), b1 = _mm512_loadu_ps(xt + 16);
            const float *wt = w + t * MR;
            BF_FCONV_ROWS(FMA)
        }
    } else { /* the plane's last block: nothing past the input is read */
        const __mmask16 k0 = (__mmask16)(nq >= 16 ? 0xffffu : (1u << nq) - 1u);
        const __mmask16 k1 = (__mmask16)(nq <= 16 ? 0u : (1u << (nq - 16)) - 1u);
        for (size_t t = 0; t < k; t++) {
            const float *xt = x + off[t];
            const __m512 b0 = _mm512_maskz_loadu_ps(k0, xt);
            const __m512 b1 = _mm512_maskz_loadu_ps(k1, xt + 16);
            const float *wt = w + t * MR;
            BF_FCONV_ROWS(FMA)
        }
    }
#undef FMA
    const size_t oy0 = q0 / wpl, ox0 = q0 % wpl;
    if (ox0 + nq <= wo) { /* inside one output row */
        const uint32_t lanes = nq == 32 ? 0xffffffffu : (1u << nq) - 1u;
        float *o = out + oy0 * wo + ox0;
#define STORE(m)                                                                             \
    if (m < mr) {                                                                            \
        const float b = bias ? bias[m] : 0.0f;                                               \
        _mm512_mask_storeu_ps(o + m * ldo, (__mmask16)lanes, finish(lo##m, b, relu));        \
        _mm512_mask_storeu_ps(o + m * ldo + 16, (__mmask16)(lanes >> 16),                    \
                              finish(hi##m, b, relu));                                       \
    }
        BF_FCONV_ROWS(STORE)
#undef STORE
        return;
    }
    float tile[MR][32];
#define SPILL(m)                                                                             \
    {                                                                                        \
        const float b = bias && m < mr ? bias[m] : 0.0f;                                     \
        _mm512_storeu_ps(tile[m], finish(lo##m, b, relu));                                   \
        _mm512_storeu_ps(tile[m] + 16, finish(hi##m, b, relu));                              \
    }
    BF_FCONV_ROWS(SPILL)
#undef SPILL
    /* row pieces: lanes [i, i + len) hold ox .. ox + len - 1 of output row oy */
    size_t i = 0, oy = oy0, ox = ox0;
    while (i < nq) {
        if (ox >= wo) { /* the plane row's dropped columns */
            i += wpl - ox;
            ox = 0;
            oy++;
            continue;
        }
        const size_t len = wo - ox < nq - i ? wo - ox : nq - i;
        float *o = out + oy * wo + ox;
        for (size_t m = 0; m < mr; m++) {
            for (size_t done = 0; done < len; done += 16) {
                const size_t piece = len - done < 16 ? len - done : 16;
                const __mmask16 km = (__mmask16)((1u << piece) - 1u);
                _mm512_mask_storeu_ps(o + m * ldo + done, km,
                                      _mm512_maskz_loadu_ps(km, tile[m] + i + done));
            }
        }
        i += len;
        ox += len;
    }
}
#endif
