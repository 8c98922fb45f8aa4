/*
 * What every ISA's plane kernel shares (dwconv.h): the input plane copied, zero-padded,
 * into its sw column phases, and where a tap's input row starts. Included by each ISA's
 * file, which computes the output rows with its own vectors, and by dwconv.c, which
 * computes the tap offsets once for a thread's range of planes.
 */
#include <string.h>

/* Phase px, padded row y, column j = padded column j * sw + px, of input plane p: each
 * input row is copied once into `line` with its zero border (wq * sw floats), then split
 * into the phases (one pass, vectorized for sw = 2). */
static inline __attribute__((always_inline)) void build_phases(const bf_dwconv_args *g,
                                                               size_t p, float *phases,
                                                               float *line) {
    const size_t h = g->h, w = g->w, sw = g->sw, ph = g->ph, pw = g->pw;
    const size_t hp = h + 2 * ph, wq = (w + 2 * pw + sw - 1) / sw, plane = hp * wq;
    const float *x = g->x + p * h * w;
    for (size_t y = 0; y < hp; y++) {
        if (y < ph || y >= ph + h) {
            for (size_t px = 0; px < sw; px++) memset(phases + px * plane + y * wq, 0, wq * 4);
            continue;
        }
        if (sw == 1) { /* the phase is the padded row */
            float *row = phases + y * wq;
            memset(row, 0, pw * sizeof(float));
            memcpy(row + pw, x + (y - ph) * w, w * sizeof(float));
            memset(row + pw + w, 0, (wq - pw - w) * sizeof(float));
            continue;
        }
        memset(line, 0, pw * sizeof(float));
        memcpy(line + pw, x + (y - ph) * w, w * sizeof(float));
        memset(line + pw + w, 0, (wq * sw - pw - w) * sizeof(float));
        if (sw == 2) {
            float *restrict r0 = phases + y * wq, *restrict r1 = r0 + plane;
            for (size_t j = 0; j < wq; j++) {
                r0[j] = line[2 * j];
                r1[j] = line[2 * j + 1];
            }
        } else {
            for (size_t px = 0; px < sw; px++) {
                float *restrict r = phases + px * plane + y * wq;
                for (size_t j = 0; j < wq; j++) r[j] = line[j * sw + px];
            }
        }
    }
}

/* Where each tap's input starts for output row 0, column 0, in the phase planes (floats
 * from their start; output row oy adds oy * sh * wq). */
static inline __attribute__((always_inline)) void tap_offsets(const bf_dwconv_args *g,
                                                              size_t *off) {
    const size_t hp = g->h + 2 * g->ph, wq = (g->w + 2 * g->pw + g->sw - 1) / g->sw;
    for (size_t ky = 0; ky < g->kh; ky++)
        for (size_t kx = 0; kx < g->kw; kx++) {
            const size_t c = kx * g->dw; /* padded column */
            off[ky * g->kw + kx] = ((c % g->sw) * hp + ky * g->dh) * wq + c / g->sw;
        }
}

/* Floats between consecutive output rows' inputs in a phase plane. */
static inline __attribute__((always_inline)) size_t row_step(const bf_dwconv_args *g) {
    return g->sh * ((g->w + 2 * g->pw + g->sw - 1) / g->sw);
}

/* Output plane j of input plane p. */
static inline __attribute__((always_inline)) float *out_plane(const bf_dwconv_args *g, size_t p,
                                                              size_t j) {
    return g->out + (p * g->mult + j) * g->ho * g->wo;
}
