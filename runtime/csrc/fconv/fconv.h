/*
 * fconv.h - real-valued (float32) 2-d convolution, NCHW in and out, groups = 1 (1-d
 * convolutions use h = 1): out[b, co, oy, ox] = act(bias[co] + sum over ci, ky, kx of
 * w[co, ci, ky, kx] * xpad[b, ci, oy*sh + ky*dh, ox*sw + kx*dw]), xpad zero-padded by
 * (ph, pw), act = ReLU or identity.
 *
 * No im2col. The driver (fconv.c) splits the padded input of one batch item into its
 * sh x sw phase planes (only the phases some tap reads; none at all for stride 1 without
 * padding, which reads the input itself), each of width wpl = ceil((w + 2 pw) / sw). In
 * plane coordinates every tap t = (ci, ky, kx) reads the same plane row pattern, so with
 * q = oy * wpl + ox the input of tap t for output q is plane[off[t] + q]: one offset per
 * tap, consecutive outputs read consecutive floats. The kernels compute blocks of NR
 * consecutive q (columns ox >= wo of a plane row are computed and dropped) for MR output
 * channels, on weights packed once at load time:
 *
 *     packed[(cb * k + t) * MR + m] = w[cb * MR + m, t]   (zero rows past cout),
 *
 * k = cin * kh * kw, t = (ci * kh + ky) * kw + kx (the torch weight's own order).
 */
#ifndef BF_FCONV_H
#define BF_FCONV_H

#include "../bf_common.h"
#include "../maxpool/maxpool.h"
#include "../sign_pack/sign_pack.h"

/* One block: outputs q0 .. q0 + nq - 1 (nq <= NR) of channels cb*MR .. cb*MR + mr - 1.
 * `x` points at plane element q0 (tap t reads x[off[t] + i] for lanes i < nq, nothing
 * past them); `w` at the packed block (k x MR); `bias` at the block's first channel (NULL
 * for none); output q = oy * wpl + ox with ox < wo goes to out[m * ldo + oy * wo + ox],
 * `out` pointing at channel cb * MR of the batch item. */
typedef void (*bf_fconv_fn)(size_t k, const float *x, const size_t *off, const float *w,
                            size_t nq, size_t mr, const float *bias, int relu, size_t q0,
                            size_t wpl, size_t wo, float *out, size_t ldo);

#define BF_FCONV_MR_SCALAR 4
#define BF_FCONV_NR_SCALAR 8
void bf_fconv_4x8__scalar(size_t k, const float *x, const size_t *off, const float *w, size_t nq,
                          size_t mr, const float *bias, int relu, size_t q0, size_t wpl,
                          size_t wo, float *out, size_t ldo);
#if BF_ARCH_X86
#define BF_FCONV_MR_AVX2 4
#define BF_FCONV_NR_AVX2 24
void bf_fconv_4x24__avx2(size_t k, const float *x, const size_t *off, const float *w, size_t nq,
                         size_t mr, const float *bias, int relu, size_t q0, size_t wpl, size_t wo,
                         float *out, size_t ldo);
#define BF_FCONV_MR_AVX512 8
#define BF_FCONV_NR_AVX512 32
void bf_fconv_8x32__avx512(size_t k, const float *x, const size_t *off, const float *w,
                           size_t nq, size_t mr, const float *bias, int relu, size_t q0,
                           size_t wpl, size_t wo, float *out, size_t ldo);
#endif

/* A max pooling fused after the convolution (and its ReLU): the driver computes the
 * convolution in bands of output rows into scratch (a band's last kh - sh rows carried
 * into the next, never recomputed) and pools each band into `out` while it is in cache;
 * the convolution's own output is never written. Needs ph < kh and sh <= kh. */
typedef struct {
    size_t kh, kw, sh, sw, ph, pw;
    size_t ho, wo;         /* pooled extent */
    float *out;            /* (n, cout, ho, wo) */
    bf_maxpool2d_fn kernel;
    /* optional: the pooled output also sign-packed (sign_pack.h) into bits (n, ho, wo,
     * cw), each band while in cache (pooled into a per-thread stage, packed, copied out) */
    bf_word *bits;
    const float *threshold; /* (cout) or NULL */
    bf_sign_pack_fn sign_pack;
} bf_fconv_pool;

/* A whole convolution (the driver). */
typedef struct {
    size_t n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, dh, dw;
    size_t ho, wo;          /* derived by the caller from the above */
    const float *x;         /* (n, cin, h, w) */
    const float *weight;    /* packed for `mr` (see above) */
    const float *bias;      /* (cout) or NULL */
    int relu;
    float *out;             /* (n, cout, ho, wo) */
    void *scratch;          /* bf_fconv_scratch_bytes(args) bytes */
    bf_fconv_fn kernel;
    size_t mr, nr;
    const bf_fconv_pool *pool; /* NULL: write `out` */
} bf_fconv_args;

/* Scratch bytes for one call on up to `threads` threads (planes of one batch item, the
 * tap offsets; with a fused pool its band and the threads' pooling rows). */
size_t bf_fconv_scratch_bytes(const bf_fconv_args *g, int threads);
/* Threads worth using for this convolution, at most `threads`. */
int bf_fconv_threads(const bf_fconv_args *g, int threads);
void bf_fconv(const bf_fconv_args *g, int threads);

#endif
