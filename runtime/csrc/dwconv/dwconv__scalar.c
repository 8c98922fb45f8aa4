/* Plain C: each tap one multiply-add over the output row (the compiler's baseline
 * vectors); dwconv_plane.h has what the ISAs share. */
#include "dwconv.h"

#include "dwconv_plane.h"

void bf_dwconv_plane__scalar(const bf_dwconv_args *g, size_t p, float *phases, float *line,
                             const size_t *off) {
    build_phases(g, p, phases, line);
    const size_t taps = g->kh * g->kw, ci = p % g->cin, wo = g->wo, step = row_step(g);
    for (size_t j = 0; j < g->mult; j++) {
        const size_t oc = ci * g->mult + j;
        const float *wt = g->weight + oc * taps;
        const float bias = g->bias ? g->bias[oc] : 0.0f;
        float *o = out_plane(g, p, j);
        for (size_t oy = 0; oy < g->ho; oy++, o += wo) {
            for (size_t ox = 0; ox < wo; ox++) o[ox] = bias;
            for (size_t t = 0; t < taps; t++) {
                const float *restrict s = phases + off[t] + oy * step;
                float *restrict r = o;
                const float wv = wt[t];
                for (size_t ox = 0; ox < wo; ox++) r[ox] = r[ox] + wv * s[ox];
            }
            if (g->relu) /* max(0, v) keeps NaN */
                for (size_t ox = 0; ox < wo; ox++) o[ox] = o[ox] < 0.0f ? 0.0f : o[ox];
        }
    }
}
