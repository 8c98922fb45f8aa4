/*
 * The vector plane kernel, shared by the AVX2 and AVX-512 files (dwconv.h): output rows in
 * strips of 4 vectors held in registers over every tap (one load and one FMA per vector
 * and tap, the strip stored once); the rows' ends a vector at a time under a mask (nothing
 * past them is read or written), 4 rows at once so that short rows still give 4
 * independent chains of FMAs. Before including it a file defines
 * BF_DWCONV_NAME, BF_DWCONV_TARGET, BF_DWCONV_INLINE, the vector type VEC of VLEN floats
 * and vload(p), vstore(p, v), vload_n(p, n), vstore_n(p, v, n) (n < VLEN lanes),
 * vfma(a, b, c) = a * b + c, vset1(f), vrelu(v) (max(0, v), NaN kept).
 */
#include "dwconv_plane.h"

#define STRIP 4
#define ROWS 4

BF_DWCONV_TARGET void BF_DWCONV_NAME(const bf_dwconv_args *g, size_t p, float *phases,
                                     float *line, const size_t *off) {
    build_phases(g, p, phases, line);
    const size_t taps = g->kh * g->kw, ci = p % g->cin, wo = g->wo, step = row_step(g);
    const size_t full = wo / (STRIP * VLEN) * (STRIP * VLEN); /* columns in whole strips */
    for (size_t j = 0; j < g->mult; j++) {
        const size_t oc = ci * g->mult + j;
        const float *wt = g->weight + oc * taps;
        const VEC bias = vset1(g->bias ? g->bias[oc] : 0.0f);
        float *plane = out_plane(g, p, j);
        for (size_t oy0 = 0; oy0 < g->ho; oy0 += ROWS) {
            const size_t nr = g->ho - oy0 < ROWS ? g->ho - oy0 : ROWS;
            for (size_t r = 0; r < nr; r++) { /* whole strips, row by row */
                const float *in = phases + (oy0 + r) * step;
                float *o = plane + (oy0 + r) * wo;
                for (size_t ox = 0; ox < full; ox += STRIP * VLEN) {
                    VEC acc[STRIP];
                    for (int v = 0; v < STRIP; v++) acc[v] = bias;
                    for (size_t t = 0; t < taps; t++) {
                        const float *s = in + off[t] + ox;
                        const VEC wv = vset1(wt[t]);
                        for (int v = 0; v < STRIP; v++)
                            acc[v] = vfma(wv, vload(s + v * VLEN), acc[v]);
                    }
                    for (int v = 0; v < STRIP; v++)
                        vstore(o + ox + v * VLEN, g->relu ? vrelu(acc[v]) : acc[v]);
                }
            }
            /* the rows' ends, a vector at a time, the group's rows together: short rows
             * (a 7x7 plane is one masked vector a row) would otherwise make one chain of
             * dependent FMAs */
            for (size_t ox = full; ox < wo; ox += VLEN) {
                const size_t n = wo - ox < VLEN ? wo - ox : VLEN;
                const float *in = phases + oy0 * step + ox;
                VEC acc[ROWS];
                for (int r = 0; r < ROWS; r++) acc[r] = bias;
                for (size_t t = 0; t < taps; t++) {
                    const VEC wv = vset1(wt[t]);
                    for (int r = 0; r < ROWS; r++)
                        if ((size_t)r < nr)
                            acc[r] = vfma(wv, vload_n(in + r * step + off[t], n), acc[r]);
                }
                for (int r = 0; r < ROWS; r++)
                    if ((size_t)r < nr)
                        vstore_n(plane + (oy0 + r) * wo + ox, g->relu ? vrelu(acc[r]) : acc[r], n);
            }
        }
    }
}
