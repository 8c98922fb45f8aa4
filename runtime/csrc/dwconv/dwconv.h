/*
 * dwconv.h - real-valued (float32) depthwise 2-d convolution, NCHW in and out (1-d
 * convolutions use h = 1): groups = cin, every output channel reads one input channel,
 * cout = mult x cin (a channel multiplier), output channel ci * mult + j from input channel
 * ci:
 *
 *   out[b, ci*mult + j, oy, ox] = act(bias[ci*mult + j] + sum over ky, kx of
 *       w[ci*mult + j, ky, kx] * xpad[b, ci, oy*sh + ky*dh, ox*sw + kx*dw])
 *
 * xpad zero-padded by (ph, pw), act = ReLU or identity. An im2col product per group would
 * be cin products of one row each; instead each input plane is copied once, zero-padded
 * and split into its sw column phases (phase px holds padded columns px, px + sw, ...), so
 * every tap of every output row is one contiguous multiply-add of wo floats into the
 * output row. Planes are the unit of work (threads take ranges of the n x cin planes).
 */
#ifndef BF_DWCONV_H
#define BF_DWCONV_H

#include "../bf_common.h"

struct bf_dwconv_args;
/* One input plane (index p < n * cin) into its mult output planes. `phases` (of
 * bf_dwconv_phase_floats floats) and `line` (ceil((w + 2 pw) / sw) * sw floats) are the
 * calling thread's scratch; `off` holds the taps' offsets (tap_offsets in dwconv_plane.h,
 * the same for every plane, so the driver computes them once per range of planes). */
typedef void (*bf_dwconv_plane_fn)(const struct bf_dwconv_args *g, size_t p, float *phases,
                                   float *line, const size_t *off);

typedef struct bf_dwconv_args {
    size_t n, cin, h, w, mult, kh, kw, sh, sw, ph, pw, dh, dw;
    size_t ho, wo;        /* set by the caller from the above */
    const float *x;       /* (n, cin, h, w) */
    const float *weight;  /* (cin * mult, kh, kw) */
    const float *bias;    /* (cin * mult), or NULL */
    int relu;
    float *out;           /* (n, cin * mult, ho, wo) */
    void *scratch;        /* bf_dwconv_scratch_bytes */
    bf_dwconv_plane_fn plane;
} bf_dwconv_args;

/* Floats of one thread's phase planes: sw x (h + 2 ph) x ceil((w + 2 pw) / sw) (callers
 * keep it below 2^31: module.c's geometry check). */
size_t bf_dwconv_phase_floats(const bf_dwconv_args *g);
size_t bf_dwconv_scratch_bytes(const bf_dwconv_args *g, int threads);
/* Threads worth using (small layers don't pay for them). */
int bf_dwconv_threads(const bf_dwconv_args *g, int threads);
void bf_dwconv(const bf_dwconv_args *g, int threads);

void bf_dwconv_plane__scalar(const bf_dwconv_args *g, size_t p, float *phases, float *line,
                             const size_t *off);
#if BF_ARCH_X86
void bf_dwconv_plane__avx2(const bf_dwconv_args *g, size_t p, float *phases, float *line,
                           const size_t *off);
void bf_dwconv_plane__avx512(const bf_dwconv_args *g, size_t p, float *phases, float *line,
                             const size_t *off);
#endif

#endif
