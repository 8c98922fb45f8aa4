/*
 * The vector plane kernel, shared by the AVX2 and AVX-512 files (dwconv.h): output rows in
 * strips of 4 vectors held in registers over every tap (one load and one FMA per vector
 * and tap, the strip stored once), the row's end one vector at a time under a mask
 * (nothing past it is read or written). Before including it a file defines
 * BF_DWCONV_NAME, BF_DWCONV_TARGET, BF_DWCONV_INLINE, the vector type VEC of VLEN floats
 * and vload(p), vstore(p, v), vload_n(p, n), vstore_n(p, v, n) (n < VLEN lanes),
 * vfma(a, b, c) = a * b + c, vset1(f), vrelu(v) (max(0, v), NaN kept).
 */
#include "dwconv_plane.h"

#define STRIP 4

BF_DWCONV_TARGET void BF_DWCONV_NAME(const bf_dwconv_args *g, size_t p, float *phases,
                                     size_t *off) {
    build_phases(g, p, phases, (float *)(void *)(off + g->kh * g->kw));
    tap_offsets(g, off);
    const size_t taps = g->kh * g->kw, ci = p % g->cin, wo = g->wo, step = row_step(g);
    for (size_t j = 0; j < g->mult; j++) {
        const size_t oc = ci * g->mult + j;
        const float *wt = g->weight + oc * taps;
        const VEC bias = vset1(g->bias ? g->bias[oc] : 0.0f);
        float *o = out_plane(g, p, j);
        for (size_t oy = 0; oy < g->ho; oy++, o += wo) {
            const float *in = phases + oy * step;
            size_t ox = 0;
            for (; ox + STRIP * VLEN <= wo; ox += STRIP * VLEN) {
                VEC acc[STRIP];
                for (int v = 0; v < STRIP; v++) acc[v] = bias;
                for (size_t t = 0; t < taps; t++) {
                    const float *s = in + off[t] + ox;
                    const VEC wv = vset1(wt[t]);
                    for (int v = 0; v < STRIP; v++) acc[v] = vfma(wv, vload(s + v * VLEN), acc[v]);
                }
                for (int v = 0; v < STRIP; v++)
                    vstore(o + ox + v * VLEN, g->relu ? vrelu(acc[v]) : acc[v]);
            }
            for (; ox < wo; ox += VLEN) {
                const size_t n = wo - ox < VLEN ? wo - ox : VLEN;
                VEC acc = bias;
                for (size_t t = 0; t < taps; t++)
                    acc = vfma(vset1(wt[t]), vload_n(in + off[t] + ox, n), acc);
                vstore_n(o + ox, g->relu ? vrelu(acc) : acc, n);
            }
        }
    }
}
