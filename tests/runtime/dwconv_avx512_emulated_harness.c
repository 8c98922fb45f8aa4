/*
 * dwconv_avx512_emulated_harness.c - runs the AVX-512 depthwise plane kernel's C code
 * (dwconv__avx512.c with dwconv_vec.h) on any x86-64 CPU by replacing the AVX-512
 * intrinsics it uses with plain C lane loops (fmaf for the fused multiply-add), and
 * compares it with a float64 reference on awkward shapes: row ends inside and at the end of
 * a vector and of a strip of 4 vectors, strides, dilations, padding, channel multipliers,
 * ReLU. This checks the kernel's logic (strips, masked ends, phases, offsets), not the
 * compiler's instruction selection: the real kernel runs in test_real_ops.py on CPUs with
 * AVX-512. Built by test_avx512_emulated.py; prints "ok <cases>".
 */
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf_common.h"

typedef struct {
    float v[16];
} emu_m512;
typedef unsigned short emu_mask16;

static inline emu_m512 emu_loadu(const float *p) {
    emu_m512 r;
    memcpy(r.v, p, sizeof r.v);
    return r;
}
static inline void emu_storeu(float *p, emu_m512 a) { memcpy(p, a.v, sizeof a.v); }
static inline emu_m512 emu_maskz_loadu(emu_mask16 m, const float *p) {
    emu_m512 r;
    for (int i = 0; i < 16; i++) r.v[i] = (m >> i) & 1 ? p[i] : 0.0f; /* masked: not read */
    return r;
}
static inline void emu_mask_storeu(float *p, emu_mask16 m, emu_m512 a) {
    for (int i = 0; i < 16; i++)
        if ((m >> i) & 1) p[i] = a.v[i];
}
static inline emu_m512 emu_fmadd(emu_m512 a, emu_m512 b, emu_m512 c) {
    for (int i = 0; i < 16; i++) c.v[i] = fmaf(a.v[i], b.v[i], c.v[i]);
    return c;
}
static inline emu_m512 emu_set1(float f) {
    emu_m512 r;
    for (int i = 0; i < 16; i++) r.v[i] = f;
    return r;
}
static inline emu_m512 emu_setzero(void) { return emu_set1(0.0f); }
static inline emu_m512 emu_max(emu_m512 a, emu_m512 b) { /* vmaxps: b when either is NaN */
    for (int i = 0; i < 16; i++) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return a;
}

#define __m512 emu_m512
#define __mmask16 emu_mask16
#undef _mm512_loadu_ps
#define _mm512_loadu_ps emu_loadu
#undef _mm512_storeu_ps
#define _mm512_storeu_ps emu_storeu
#undef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps emu_maskz_loadu
#undef _mm512_mask_storeu_ps
#define _mm512_mask_storeu_ps emu_mask_storeu
#undef _mm512_fmadd_ps
#define _mm512_fmadd_ps emu_fmadd
#undef _mm512_set1_ps
#define _mm512_set1_ps emu_set1
#undef _mm512_setzero_ps
#define _mm512_setzero_ps emu_setzero
#undef _mm512_max_ps
#define _mm512_max_ps emu_max

#define BF_DWCONV_TARGET
#include "dwconv/dwconv__avx512.c"

static uint64_t state = 0x9E3779B97F4A7C15ULL;

static float next_float(void) { /* xorshift64*, uniform in [-1, 1) */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return (float)((double)((state * 0x2545F4914F6CDD1DULL) >> 11) / 4503599627370496.0 - 1.0);
}

static int compare(size_t cin, size_t mult, size_t h, size_t w, size_t k, size_t s, size_t pad,
                   size_t d, int relu, int with_bias) {
    bf_dwconv_args g;
    memset(&g, 0, sizeof g);
    g.n = 2; g.cin = cin; g.h = h; g.w = w; g.mult = mult; g.kh = k; g.kw = k;
    g.sh = s; g.sw = s; g.ph = pad; g.pw = pad; g.dh = d; g.dw = d;
    const size_t ext = d * (k - 1) + 1;
    if (h + 2 * pad < ext || w + 2 * pad < ext) return 0;
    g.ho = (h + 2 * pad - ext) / s + 1;
    g.wo = (w + 2 * pad - ext) / s + 1;
    const size_t cout = cin * mult, nx = g.n * cin * h * w, no = g.n * cout * g.ho * g.wo;
    float *x = malloc(nx * sizeof(float)), *wt = malloc(cout * k * k * sizeof(float));
    float *bias = malloc(cout * sizeof(float)), *out = malloc(no * sizeof(float));
    const size_t lane = (w + 2 * pad + s - 1) / s * s;
    float *phases = malloc(s * (h + 2 * pad) * (lane / s) * sizeof(float) + 64); /* phases */
    size_t *off = malloc(k * k * sizeof(size_t));
    float *line = malloc(lane * sizeof(float) + 64);
    if (!x || !wt || !bias || !out || !phases || !off || !line) return 2;
    for (size_t i = 0; i < nx; i++) x[i] = next_float();
    for (size_t i = 0; i < cout * k * k; i++) wt[i] = next_float();
    for (size_t i = 0; i < cout; i++) bias[i] = next_float();
    for (size_t i = 0; i < no; i++) out[i] = NAN; /* every element must be written */
    g.x = x; g.weight = wt; g.bias = with_bias ? bias : NULL; g.relu = relu; g.out = out;
    tap_offsets(&g, off);
    for (size_t p = 0; p < g.n * cin; p++) bf_dwconv_plane__avx512(&g, p, phases, line, off);
    int bad = 0;
    for (size_t b = 0; b < g.n && !bad; b++)
        for (size_t oc = 0; oc < cout && !bad; oc++)
            for (size_t oy = 0; oy < g.ho && !bad; oy++)
                for (size_t ox = 0; ox < g.wo && !bad; ox++) {
                    const size_t ci = oc / mult;
                    double ref = with_bias ? bias[oc] : 0.0, mag = fabs(ref);
                    for (size_t ky = 0; ky < k; ky++)
                        for (size_t kx = 0; kx < k; kx++) {
                            const long y = (long)(oy * s + ky * d) - (long)pad;
                            const long c = (long)(ox * s + kx * d) - (long)pad;
                            if (y < 0 || c < 0 || y >= (long)h || c >= (long)w) continue;
                            const double v = (double)wt[oc * k * k + ky * k + kx] *
                                             x[((b * cin + ci) * h + (size_t)y) * w + (size_t)c];
                            ref += v;
                            mag += fabs(v);
                        }
                    if (relu && ref < 0) ref = 0;
                    const float got = out[((b * cout + oc) * g.ho + oy) * g.wo + ox];
                    if (!(fabs(got - ref) <= (double)(k * k + 1) * 1.2e-7 * mag + 1e-30)) {
                        printf("mismatch cin=%zu mult=%zu h=%zu w=%zu k=%zu s=%zu pad=%zu d=%zu "
                               "relu=%d at (%zu, %zu, %zu, %zu): %g vs %g\n",
                               cin, mult, h, w, k, s, pad, d, relu, b, oc, oy, ox, got, ref);
                        bad = 1;
                    }
                }
    free(x);
    free(wt);
    free(bias);
    free(out);
    free(phases);
    free(off);
    free(line);
    return bad;
}

int main(void) {
    static const size_t widths[] = {1, 5, 15, 16, 17, 31, 33, 63, 64, 65, 66, 97, 130};
    long cases = 0;
    for (size_t iw = 0; iw < sizeof widths / sizeof *widths; iw++)
        for (size_t k = 1; k <= 5; k += 2)
            for (size_t s = 1; s <= 3; s++)
                for (size_t d = 1; d <= 2; d++)
                    for (size_t mult = 1; mult <= 2; mult++) {
                        const size_t pad = (k + s + d) % 3, h = 3 + (iw + k) % 7;
                        const int relu = (int)((iw + s) % 2), with_bias = (int)((k + d) % 2);
                        const int r = compare(3, mult, h, widths[iw], k, s, pad, d, relu, with_bias);
                        if (r) return r;
                        cases++;
                    }
    printf("ok %ld\n", cases);
    return 0;
}
