/*
 * Max pooling in two passes per output row: the element-wise max of the window's input
 * rows (contiguous, vectorized by the compiler), then the max over each window's columns
 * of that row. NaN propagates. Plain C; on x86 an AVX2 clone is chosen at load time.
 */
#include "maxpool.h"

static inline float max_nan(float m, float v) {
    m = v > m ? v : m;  /* two selects, not ||, so the row loops vectorize */
    return v != v ? v : m;
}

#define BF_POOL_CLONES BF_CLONES("avx2", "default")

BF_POOL_CLONES void bf_maxpool2d__scalar(const float *x, float *out, size_t planes, size_t h, size_t w,
                          size_t ho, size_t wo, size_t kh, size_t kw, size_t sh, size_t sw,
                          size_t ph, size_t pw, float *row) {
    for (size_t p = 0; p < planes; p++) {
        const float *plane = x + p * h * w;
        float *o = out + p * ho * wo;
        for (size_t oy = 0; oy < ho; oy++) {
            const long y0 = (long)(oy * sh) - (long)ph;
            long ya = y0 < 0 ? 0 : y0, yb = y0 + (long)kh;
            if (yb > (long)h) yb = (long)h;
            const float *first = plane + (size_t)ya * w;
            for (size_t i = 0; i < w; i++) row[i] = first[i];
            for (long y = ya + 1; y < yb; y++) {
                const float *restrict line = plane + (size_t)y * w;
                float *restrict r = row;
                for (size_t i = 0; i < w; i++) r[i] = max_nan(r[i], line[i]);
            }
            for (size_t ox = 0; ox < wo; ox++) {
                const long x0 = (long)(ox * sw) - (long)pw;
                long xa = x0 < 0 ? 0 : x0, xb = x0 + (long)kw;
                if (xb > (long)w) xb = (long)w;
                float m = row[xa];
                for (long i = xa + 1; i < xb; i++) m = max_nan(m, row[i]);
                o[oy * wo + ox] = m;
            }
        }
    }
}
