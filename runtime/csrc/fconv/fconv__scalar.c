/* The specification kernel: plain loops over a 4-channel x 8-output block. */
#include "fconv.h"

void bf_fconv_4x8__scalar(size_t k, const float *x, const size_t *off, const float *w, size_t nq,
                          size_t mr, const float *bias, int relu, size_t q0, size_t wpl,
                          size_t wo, float *out, size_t ldo) {
    enum { MR = BF_FCONV_MR_SCALAR, NR = BF_FCONV_NR_SCALAR };
    float acc[MR][NR];
    for (size_t m = 0; m < MR; m++)
        for (size_t i = 0; i < NR; i++) acc[m][i] = 0.0f;
    for (size_t t = 0; t < k; t++) {
        const float *xt = x + off[t];
        for (size_t m = 0; m < MR; m++) {
            const float wm = w[t * MR + m];
            for (size_t i = 0; i < nq; i++) acc[m][i] += wm * xt[i];
        }
    }
    for (size_t m = 0; m < mr; m++) {
        const float b = bias ? bias[m] : 0.0f;
        for (size_t i = 0; i < nq; i++) {
            const size_t q = q0 + i, oy = q / wpl, ox = q % wpl;
            if (ox >= wo) continue;
            float v = acc[m][i] + b;
            if (relu && !(v > 0.0f)) v = v != v ? v : 0.0f; /* max(v, 0); NaN stays NaN */
            out[m * ldo + oy * wo + ox] = v;
        }
    }
}
