/* bconv.c - see bconv.h. ISA-independent: the kernels come in through args->gemm. */
#include "bconv.h"

#include <string.h>

#include "../bf_parallel.h"

#define MT BF_BCONV_TILE_M
#define NT BF_BCONV_TILE_N
/* Word-pairs (xor + popcount of 64 bits) that justify one more thread. */
#define BF_WORK_PER_THREAD ((size_t)1 << 19)

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

static size_t tile_a_bytes(size_t kpad) { return round_up(MT * kpad * sizeof(bf_word), BF_ALIGN); }
static size_t tile_c_bytes(void) { return round_up(MT * NT * sizeof(int32_t), BF_ALIGN); }
static size_t per_thread_bytes(size_t kpad) {
    return tile_a_bytes(kpad) + 2 * tile_c_bytes() + BF_OVERREAD_BYTES;
}

size_t bf_bconv_scratch_bytes(size_t kpad, int threads) {
    if (threads < 1) threads = 1;
    return (size_t)threads * per_thread_bytes(kpad) + BF_ALIGN;
}

static int direct_input(const bf_bconv_args *g) {
    return g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

int bf_bconv_threads(const bf_bconv_args *g, int threads) {
    const size_t pixels = g->n * g->ho * g->wo;
    const size_t work = pixels * g->cout * g->kpad;
    const size_t items = ((pixels + MT - 1) / MT) * ((g->cout + NT - 1) / NT);
    size_t useful = work / BF_WORK_PER_THREAD;
    if (useful > items) useful = items;
    if (useful < 1) useful = 1;
    return threads < (int)useful ? (threads < 1 ? 1 : threads) : (int)useful;
}

static inline void copy_words(bf_word *BF_RESTRICT dst, const bf_word *BF_RESTRICT src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = src[i];
}

static inline void zero_words(bf_word *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = 0;
}

/* im2col of pixels [p0, p0 + mt) into `a` (mt rows of kpad words). */
static void build_tile(const bf_bconv_args *g, size_t p0, size_t mt, bf_word *a) {
    const size_t cw = BF_WORDS_FOR(g->cin);
    const size_t hw = g->ho * g->wo;
    const size_t row_words = g->kw * cw;
    for (size_t i = 0; i < mt; i++) {
        const size_t p = p0 + i, b = p / hw, r = p % hw, oy = r / g->wo, ox = r % g->wo;
        bf_word *row = a + i * g->kpad;
        const long x0 = (long)(ox * g->sw) - (long)g->pw;
        const int x_inside = x0 >= 0 && x0 + (long)((g->kw - 1) * g->dw) < (long)g->w;
        const bf_word *image = g->x + b * g->h * g->w * cw;
        size_t k = 0;
        for (size_t ky = 0; ky < g->kh; ky++) {
            const long iy = (long)(oy * g->sh + ky * g->dh) - (long)g->ph;
            if (iy < 0 || iy >= (long)g->h) {
                zero_words(row + k, row_words);
                k += row_words;
                continue;
            }
            const bf_word *line = image + (size_t)iy * g->w * cw;
            if (x_inside && g->dw == 1) { /* the taps of this row are contiguous */
                copy_words(row + k, line + (size_t)x0 * cw, row_words);
                k += row_words;
                continue;
            }
            for (size_t kx = 0; kx < g->kw; kx++, k += cw) {
                const long ix = x0 + (long)(kx * g->dw);
                if (ix < 0 || ix >= (long)g->w)
                    zero_words(row + k, cw);
                else
                    copy_words(row + k, line + (size_t)ix * cw, cw);
            }
        }
        zero_words(row + k, g->kpad - k);
    }
}

static int pixel_on_border(const bf_bconv_args *g, size_t p) {
    const size_t hw = g->ho * g->wo, r = p % hw, oy = r / g->wo, ox = r % g->wo;
    const long y0 = (long)(oy * g->sh) - (long)g->ph;
    const long y1 = y0 + (long)((g->kh - 1) * g->dh);
    const long x0 = (long)(ox * g->sw) - (long)g->pw;
    const long x1 = x0 + (long)((g->kw - 1) * g->dw);
    return y0 < 0 || y1 >= (long)g->h || x0 < 0 || x1 >= (long)g->w;
}

/* Subtract the +1 contributions of out-of-bounds taps of pixel p (zero padding). */
static void zero_pad_correction(const bf_bconv_args *g, size_t p, size_t co0, size_t nt,
                                int32_t *acc) {
    const size_t hw = g->ho * g->wo, r = p % hw, oy = r / g->wo, ox = r % g->wo;
    for (size_t ky = 0; ky < g->kh; ky++) {
        const long iy = (long)(oy * g->sh + ky * g->dh) - (long)g->ph;
        const int row_out = iy < 0 || iy >= (long)g->h;
        for (size_t kx = 0; kx < g->kw; kx++) {
            const long ix = (long)(ox * g->sw + kx * g->dw) - (long)g->pw;
            if (!row_out && ix >= 0 && ix < (long)g->w) continue;
            const int32_t *ws = g->wsum + (ky * g->kw + kx) * g->cout + co0;
            for (size_t j = 0; j < nt; j++) acc[j] -= ws[j];
        }
    }
}

/*
 * Output transform of an mt x nt tile of popcounts `c` (row stride NT), in two passes:
 * per pixel, over contiguous channels, the integer accumulator becomes
 * y = acc * scale * pos + bias followed by the activation (in place, as float); then
 * the tile is written out: transposed into NCHW float runs (adding the residual and the
 * post-activation), or packed against the thresholds.
 */
static void transform(const bf_bconv_args *g, size_t p0, size_t mt, size_t co0, size_t nt,
                      int32_t *BF_RESTRICT c, float *BF_RESTRICT y_tile) {
    const int32_t k_total = (int32_t)(g->cin * g->kh * g->kw);
    const size_t hw = g->ho * g->wo, wo = g->wo, cout = g->cout;
    const float *BF_RESTRICT scale = g->scale + co0;
    const float *BF_RESTRICT bias = g->bias ? g->bias + co0 : NULL;
    const float *BF_RESTRICT slope = g->slope ? g->slope + co0 : NULL;
    const float *BF_RESTRICT pos_h = g->pos_h, *BF_RESTRICT pos_w = g->pos_w;
    const float *BF_RESTRICT residual = g->residual;
    const int activation = g->activation, post_relu = g->post_relu;
    const float lo = g->min_val, hi = g->max_val;
    for (size_t i = 0; i < mt; i++) {
        int32_t *BF_RESTRICT ci = c + i * NT;
        for (size_t j = 0; j < nt; j++) ci[j] = k_total - 2 * ci[j];
        if (g->pad_zero && pixel_on_border(g, p0 + i)) zero_pad_correction(g, p0 + i, co0, nt, ci);
        float *BF_RESTRICT yi = y_tile + i * NT;
        if (pos_h) {
            const size_t r = (p0 + i) % hw;
            const float pos = pos_h[r / wo] * pos_w[r % wo];
            for (size_t j = 0; j < nt; j++) yi[j] = ((float)ci[j] * scale[j]) * pos;
        } else {
            for (size_t j = 0; j < nt; j++) yi[j] = (float)ci[j] * scale[j];
        }
        if (bias)
            for (size_t j = 0; j < nt; j++) yi[j] = yi[j] + bias[j];
        switch (activation) {
        case BF_ACT_RELU:
            for (size_t j = 0; j < nt; j++) yi[j] = yi[j] > 0.0f ? yi[j] : 0.0f;
            break;
        case BF_ACT_PRELU:
            for (size_t j = 0; j < nt; j++) yi[j] = yi[j] >= 0.0f ? yi[j] : yi[j] * slope[j];
            break;
        case BF_ACT_HARDTANH:
            for (size_t j = 0; j < nt; j++) yi[j] = yi[j] < lo ? lo : (yi[j] > hi ? hi : yi[j]);
            break;
        default: break;
        }
    }
    const float *BF_RESTRICT y = y_tile;
    if (!g->out_bits) {
        float *BF_RESTRICT out = (float *)g->out;
        /* runs of pixels of one image: each channel's outputs are contiguous there */
        for (size_t i0 = 0; i0 < mt;) {
            const size_t p = p0 + i0, b = p / hw, r0 = p % hw;
            size_t len = hw - r0;
            if (len > mt - i0) len = mt - i0;
            const float *BF_RESTRICT ys = y + i0 * NT;
            for (size_t j = 0; j < nt; j++) {
                const size_t at = (b * cout + co0 + j) * hw + r0;
                float *BF_RESTRICT o = out + at;
                if (residual) {
                    const float *BF_RESTRICT res = residual + at;
                    if (post_relu)
                        for (size_t i = 0; i < len; i++) {
                            const float v = ys[i * NT + j] + res[i];
                            o[i] = v > 0.0f ? v : 0.0f;
                        }
                    else
                        for (size_t i = 0; i < len; i++) o[i] = ys[i * NT + j] + res[i];
                } else if (post_relu) {
                    for (size_t i = 0; i < len; i++) {
                        const float v = ys[i * NT + j];
                        o[i] = v > 0.0f ? v : 0.0f;
                    }
                } else {
                    for (size_t i = 0; i < len; i++) o[i] = ys[i * NT + j];
                }
            }
            i0 += len;
        }
        return;
    }
    const size_t cout_w = BF_WORDS_FOR(cout);
    const float *BF_RESTRICT thr = g->out_threshold ? g->out_threshold + co0 : NULL;
    bf_word *BF_RESTRICT out = (bf_word *)g->out;
    for (size_t i = 0; i < mt; i++) {
        const size_t p = p0 + i;
        float *BF_RESTRICT yi = y_tile + i * NT;
        if (residual) {
            const size_t b = p / hw, r = p % hw;
            for (size_t j = 0; j < nt; j++) yi[j] = yi[j] + residual[(b * cout + co0 + j) * hw + r];
        }
        if (post_relu)
            for (size_t j = 0; j < nt; j++) yi[j] = yi[j] > 0.0f ? yi[j] : 0.0f;
        bf_word bits = 0;
        if (thr)
            for (size_t j = 0; j < nt; j++) bits |= (bf_word)(yi[j] < thr[j]) << j;
        else
            for (size_t j = 0; j < nt; j++) bits |= (bf_word)(yi[j] < 0.0f) << j;
        out[p * cout_w + co0 / BF_WORD_BITS] = bits;
    }
}

typedef struct {
    const bf_bconv_args *g;
    size_t n_chunks, pixels;
} bf_bconv_job;

static void run_range(void *ctx, size_t begin, size_t end, int thread_index) {
    const bf_bconv_job *job = (const bf_bconv_job *)ctx;
    const bf_bconv_args *g = job->g;
    const size_t kpad = g->kpad, cw = BF_WORDS_FOR(g->cin);
    char *base = (char *)round_up((size_t)g->scratch, BF_ALIGN) +
                 (size_t)thread_index * per_thread_bytes(kpad);
    bf_word *a_tile = (bf_word *)base;
    int32_t *c_tile = (int32_t *)(base + tile_a_bytes(kpad));
    float *y_tile = (float *)(base + tile_a_bytes(kpad) + tile_c_bytes());
    const int direct = direct_input(g);
    size_t built = (size_t)-1;
    for (size_t item = begin; item < end; item++) {
        const size_t mi = item / job->n_chunks, ni = item % job->n_chunks;
        const size_t p0 = mi * MT, co0 = ni * NT;
        const size_t mt = job->pixels - p0 < MT ? job->pixels - p0 : MT;
        const size_t nt = g->cout - co0 < NT ? g->cout - co0 : NT;
        const bf_word *a;
        size_t lda, kw;
        if (direct) {
            a = g->x + p0 * cw;
            lda = cw;
            kw = cw;
        } else {
            if (built != mi) {
                build_tile(g, p0, mt, a_tile);
                built = mi;
            }
            a = a_tile;
            lda = kpad;
            kw = kpad;
        }
        g->gemm(mt, nt, kw, a, lda, g->weight + co0 * kpad, kpad, c_tile, NT);
        transform(g, p0, mt, co0, nt, c_tile, y_tile);
    }
}

void bf_bconv(const bf_bconv_args *g, int threads) {
    bf_bconv_job job;
    job.g = g;
    job.pixels = g->n * g->ho * g->wo;
    job.n_chunks = (g->cout + NT - 1) / NT;
    const size_t items = ((job.pixels + MT - 1) / MT) * job.n_chunks;
    bf_parallel_for(threads, items, run_range, &job);
}
