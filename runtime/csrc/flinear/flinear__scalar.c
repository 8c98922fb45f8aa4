/* The specification kernel: one block of outputs at a time, plain loops. */
#include "flinear.h"

void bf_flinear__scalar(const float *x, size_t n, size_t in, const uint16_t *packed,
                        const float *bias, size_t out, float *y) {
    enum { B = BF_FLINEAR_BLOCK };
    for (size_t b = 0; b < n; b++) {
        const float *xb = x + b * in;
        for (size_t ob = 0; ob * B < out; ob++) {
            float acc[B];
            for (size_t j = 0; j < B; j++) acc[j] = 0.0f;
            const uint16_t *w = packed + ob * in * B;
            for (size_t i = 0; i < in; i++)
                for (size_t j = 0; j < B; j++) acc[j] += xb[i] * bf_half_to_float(w[i * B + j]);
            const size_t live = out - ob * B < B ? out - ob * B : B;
            for (size_t j = 0; j < live; j++)
                y[b * out + ob * B + j] = acc[j] + (bias ? bias[ob * B + j] : 0.0f);
        }
    }
}
