/*
 * flinear.h - a real-valued linear layer on half-precision weights, computed in float32:
 * y[b, o] = bias[o] + sum_i x[b, i] * w[o, i], with w stored as IEEE binary16 (the .bfm's
 * F16 real weights kept as they are: half the bytes to read per call).
 *
 * Weights are packed once at load into blocks of BF_FLINEAR_BLOCK outputs, input-major:
 *
 *     packed[(ob * in + i) * BLOCK + j] = w[ob * BLOCK + j, i]   (zero past `out`),
 *
 * so a kernel keeps one block's outputs in registers and streams its weights once.
 */
#ifndef BF_FLINEAR_H
#define BF_FLINEAR_H

#include "../bf_common.h"

#define BF_FLINEAR_BLOCK 64

typedef void (*bf_flinear_fn)(const float *x, size_t n, size_t in, const uint16_t *packed,
                              const float *bias, size_t out, float *y);

void bf_flinear__scalar(const float *x, size_t n, size_t in, const uint16_t *packed,
                        const float *bias, size_t out, float *y);
#if BF_ARCH_X86
void bf_flinear__avx2(const float *x, size_t n, size_t in, const uint16_t *packed,
                      const float *bias, size_t out, float *y);
void bf_flinear__avx512(const float *x, size_t n, size_t in, const uint16_t *packed,
                        const float *bias, size_t out, float *y);
#endif

/* binary16 -> float32, exactly (the scalar kernel's conversion). */
static inline float bf_half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    union {
        uint32_t u;
        float f;
    } v;
    if (exp == 0) { /* zero or subnormal: mant * 2**-24 */
        v.f = (float)mant * (1.0f / 16777216.0f);
        v.u |= sign;
    } else if (exp == 31) {
        v.u = sign | 0x7f800000u | (mant << 13);
    } else {
        v.u = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    return v.f;
}

#endif
