/*
 * bconv.h - binary convolution with the fused output transform (docs/format.md).
 *
 * One driver serves bconv2d, bconv1d (h = kh = 1) and blinear (h = w = kh = kw = 1):
 *   1. no im2col: each pixel's taps are read in place as segments of the packed input (one
 *      per kernel row: kw * cin_w contiguous words; one per tap when dilated along x);
 *      a kernel row outside the input reads a segment of zero words (+1), a row cut by
 *      the left or right border is copied with zero words for its outside taps;
 *   2. the ISA's xnor_panel product against the weights (cout rows of kpad words, repacked
 *      per 64-channel chunk into the kernel's lane-interleaved panel, or ready-made in
 *      `panels`) -> popcounts P, channel-major for float output, pixel-major for bits;
 *   3. acc = K - 2 P with K = cin * kh * kw; for zero padding, each out-of-bounds tap's
 *      contribution (wsum[tap][co] = cin - 2 popcount(weight tap), what +1 inputs give)
 *      is subtracted, so those taps add exactly 0;
 *   4. y = ((float)acc * scale[co]) * (pos_h[oy] * pos_w[ox]) + bias[co]; activation;
 *      + residual; post-activation; then float NCHW or packed (n, ho, wo, cout_w) bits
 *      (set iff y < out_threshold[co]).
 * Work is split over pixel tiles x 64-channel chunks across threads.
 */
#ifndef BF_BCONV_H
#define BF_BCONV_H

#include "../bf_common.h"
#include "../xnor_panel/xnor_panel.h"

#define BF_BCONV_TILE_M 128 /* pixels per work item (measured: 64 and 256 are slower) */
#define BF_BCONV_TILE_N 64

enum { BF_ACT_NONE = 0, BF_ACT_RELU = 1, BF_ACT_PRELU = 2, BF_ACT_HARDTANH = 3 };

typedef struct bf_bconv_args bf_bconv_args;

/* The bits-output transform of mt pixels x nt channels of pixel-major popcounts c (row
 * stride ldc), kvec[i] = K of pixel i, pos[i] its position scale (with pos_h): an ISA's
 * vectorized copy of the plain C one, equal to it exactly. */
typedef void (*bf_bconv_bits_fn)(const bf_bconv_args *g, size_t p0, size_t mt, size_t co0,
                                 size_t nt, const int32_t *c, size_t ldc, const int32_t *kvec,
                                 const float *pos);

struct bf_bconv_args {
    size_t n, h, w, cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo;
    size_t kpad;      /* words per weight row (>= kh * kw * cin_w, only those are read) */
    int pad_zero;     /* 1: zero padding, 0: one padding */
    int activation;   /* BF_ACT_* */
    float min_val, max_val;
    int post_relu;
    int out_bits;
    const bf_word *x;           /* (n, h, w, cin_w) */
    const bf_word *weight;      /* (cout, kpad) */
    const int32_t *wsum;        /* (kh * kw, cout); needed for zero padding */
    const float *scale;         /* (cout,) */
    const float *bias;          /* (cout,) or NULL */
    const float *pos_h;         /* (ho,) or NULL; with pos_w */
    const float *pos_w;         /* (wo,) or NULL */
    const float *slope;         /* (cout,) for PReLU */
    const float *residual;      /* float (n, cout, ho, wo) or NULL */
    const float *out_threshold; /* (cout,) or NULL */
    void *out;                  /* float (n, cout, ho, wo) or words (n, ho, wo, cout_w) */
    void *scratch;              /* bf_bconv_scratch_bytes(kpad, cout, threads) bytes */
    bf_xnor_panel_fn panel;
    size_t panel_lanes;
    const bf_word *panels;      /* all weights as panel_lanes-lane panels of kpad words, or
                                   NULL: then each 64-channel chunk is repacked in scratch */
    bf_bconv_bits_fn bits;      /* or NULL: the plain C bits transform */
};

#if BF_ARCH_X86
void bf_bconv_bits__avx512(const bf_bconv_args *g, size_t p0, size_t mt, size_t co0, size_t nt,
                           const int32_t *c, size_t ldc, const int32_t *kvec, const float *pos);
#endif

/* Scratch bytes a call with `threads` threads needs. */
size_t bf_bconv_scratch_bytes(size_t kpad, size_t cout, int threads);
/* Threads worth using for this call (1 for small layers), at most `threads`. */
int bf_bconv_threads(const bf_bconv_args *args, int threads);
/* Run the convolution on `threads` threads (use bf_bconv_threads first). */
void bf_bconv(const bf_bconv_args *args, int threads);

#endif
