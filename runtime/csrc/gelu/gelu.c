/* gelu.c - see gelu.h. */
#include "gelu.h"

#include <math.h>

void bf_erf(const float *x, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = erff(x[i]);
}

void bf_gelu_erf(const float *x, float *out, size_t n) {
    const float inv_sqrt2 = 0.70710678118654752f;
    for (size_t i = 0; i < n; i++) {
        const float v = x[i];
        out[i] = v * 0.5f * (1.0f + erff(v * inv_sqrt2));
    }
}
