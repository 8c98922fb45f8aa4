/*
 * maxpool.h - 2-d max pooling of float32 NCHW planes (a real op; 1-d pools use h = 1).
 *
 * out[p, oy, ox] = max over the window rows oy*sh - ph + [0, kh) and columns
 * ox*sw - pw + [0, kw) clipped to the input (padding reads -inf, as in torch); a NaN in a
 * window makes the output NaN. Windows are never empty (the reader checks the geometry).
 */
#ifndef BF_MAXPOOL_H
#define BF_MAXPOOL_H

#include <stddef.h>

#include "../bf_common.h"

/* `planes` planes of h x w into ho x wo; `row` is scratch of w floats. */
typedef void (*bf_maxpool2d_fn)(const float *x, float *out, size_t planes, size_t h, size_t w,
                                size_t ho, size_t wo, size_t kh, size_t kw, size_t sh,
                                size_t sw, size_t ph, size_t pw, float *row);

void bf_maxpool2d__scalar(const float *x, float *out, size_t planes, size_t h, size_t w,
                          size_t ho, size_t wo, size_t kh, size_t kw, size_t sh, size_t sw,
                          size_t ph, size_t pw, float *row);

#if BF_ARCH_X86
void bf_maxpool2d__avx2(const float *x, float *out, size_t planes, size_t h, size_t w, size_t ho,
                        size_t wo, size_t kh, size_t kw, size_t sh, size_t sw, size_t ph,
                        size_t pw, float *row);
void bf_maxpool2d__avx512(const float *x, float *out, size_t planes, size_t h, size_t w,
                          size_t ho, size_t wo, size_t kh, size_t kw, size_t sh, size_t sw,
                          size_t ph, size_t pw, float *row);
#endif

#endif
