/* bconv.c - see bconv.h. ISA-independent: the kernels come in through args->panel. */
#include "bconv.h"

#include <string.h>

#include "../bf_parallel.h"

/* Pixels per tile: long runs of each channel's float outputs (few pages touched per
 * tile), while the im2col tile stays near 32 KiB. */
static size_t tile_m(size_t kpad) {
    size_t mt = ((size_t)32768 / (kpad * sizeof(bf_word))) & ~(size_t)7;
    if (mt < BF_BCONV_TILE_M) mt = BF_BCONV_TILE_M;
    if (mt > 256) mt = 256;
    return mt;
}
#define MT tile_m(g->kpad)
#define NT BF_BCONV_TILE_N
/* Word-pairs (xor + popcount of 64 bits) that justify one more pool thread (~40 us). */
#define BF_WORK_PER_THREAD ((size_t)1 << 17)

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

static size_t tile_a_bytes(size_t kpad) {
    return round_up(tile_m(kpad) * kpad * sizeof(bf_word), BF_ALIGN);
}
static size_t tile_c_bytes(size_t kpad) {
    return round_up(tile_m(kpad) * NT * sizeof(int32_t), BF_ALIGN);
}
static size_t row_bytes(size_t kpad) { return round_up(tile_m(kpad) * sizeof(bf_word), BF_ALIGN); }
static size_t panel_bytes(size_t kpad) { return round_up(NT * kpad * sizeof(bf_word), BF_ALIGN); }
static size_t per_thread_bytes(size_t kpad) {
    /* im2col tile, padded-tap list (taps <= kpad), popcounts, three pixel rows, weight panel */
    return 2 * tile_a_bytes(kpad) + tile_c_bytes(kpad) + 3 * row_bytes(kpad) + panel_bytes(kpad) +
           BF_OVERREAD_BYTES;
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

/* The copies here are a few words each (one 3x3 row of 64 channels is 3 words): GCC would
 * turn the loops into memcpy/memset calls, which cost more than the copies. */
#if defined(__GNUC__) && !defined(__clang__)
#define BF_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define BF_NO_LIBCALLS
#endif

/* im2col of pixels [p0, p0 + mt) into `a` (mt rows of kpad words). */
BF_NO_LIBCALLS static void build_tile(const bf_bconv_args *g, size_t p0, size_t mt, bf_word *a) {
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

/* List the out-of-bounds taps of the tile's pixels as (pixel index << 32 | tap) entries
 * (zero padding); returns their number. */
static size_t list_padded_taps(const bf_bconv_args *g, size_t p0, size_t mt, uint64_t *list) {
    const size_t hw = g->ho * g->wo;
    size_t count = 0;
    for (size_t i = 0; i < mt; i++) {
        if (!pixel_on_border(g, p0 + i)) continue;
        const size_t r = (p0 + i) % hw, oy = r / g->wo, ox = r % g->wo;
        for (size_t ky = 0; ky < g->kh; ky++) {
            const long iy = (long)(oy * g->sh + ky * g->dh) - (long)g->ph;
            const int row_out = iy < 0 || iy >= (long)g->h;
            for (size_t kx = 0; kx < g->kw; kx++) {
                const long ix = (long)(ox * g->sw + kx * g->dw) - (long)g->pw;
                if (row_out || ix < 0 || ix >= (long)g->w)
                    list[count++] = ((uint64_t)i << 32) | (uint64_t)(ky * g->kw + kx);
            }
        }
    }
    return count;
}

static inline float relu(float v) { return v > 0.0f ? v : 0.0f; }

/* The transform's loops are plain C; on x86 an AVX-512 clone (16 floats a step) or an AVX2
 * one (8) is chosen at load time by the CPU (GCC function multi-versioning; libgcc checks
 * the OS-saved state). Exact either way: -std=c11 keeps GCC from contracting a * b + c
 * into an FMA, so every clone rounds like the scalar code. */
#if BF_ARCH_X86 && defined(__GNUC__) && !defined(__clang__)
#define BF_TRANSFORM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BF_TRANSFORM_CLONES
#endif

/*
 * Output transform of a tile of popcounts `c`: channel-major, nt rows (channels co0...)
 * of mt pixels (p0...), row stride ldc. Every loop runs over contiguous pixels:
 * y = ((acc * scale) * pos) + bias, activation, then float NCHW runs (+ residual,
 * post-activation) or bits packed against the thresholds, 64 channels per word.
 */
BF_TRANSFORM_CLONES static void transform(const bf_bconv_args *g, size_t p0, size_t mt, size_t co0,
                                          size_t nt,
                      int32_t *BF_RESTRICT c, size_t ldc, float *BF_RESTRICT y,
                      float *BF_RESTRICT pos, bf_word *BF_RESTRICT bits,
                      const uint64_t *BF_RESTRICT padded, size_t n_padded) {
    const int32_t k_total = (int32_t)(g->cin * g->kh * g->kw);
    const size_t hw = g->ho * g->wo, wo = g->wo, cout = g->cout;
    for (size_t j = 0; j < nt; j++) { /* popcounts -> +/-1 dot products, in place */
        int32_t *BF_RESTRICT cj = c + j * ldc;
        for (size_t i = 0; i < mt; i++) cj[i] = k_total - 2 * cj[i];
    }
    /* zero padding: take out what the out-of-bounds taps (read as +1) added */
    for (size_t j = 0; j < nt && n_padded; j++) {
        int32_t *BF_RESTRICT cj = c + j * ldc;
        const int32_t *BF_RESTRICT ws = g->wsum + co0 + j;
        for (size_t e = 0; e < n_padded; e++)
            cj[padded[e] >> 32] -= ws[(padded[e] & 0xffffffffu) * cout];
    }
    if (g->pos_h)
        for (size_t i = 0; i < mt; i++) {
            const size_t r = (p0 + i) % hw;
            pos[i] = g->pos_h[r / wo] * g->pos_w[r % wo];
        }
    const int activation = g->activation, post_relu = g->post_relu, out_bits = g->out_bits;
    const float lo = g->min_val, hi = g->max_val;
    if (out_bits)
        for (size_t i = 0; i < mt; i++) bits[i] = 0;
    /* float output of a tile inside one image: compute in place in the output row */
    const int in_place = !out_bits && (p0 % hw) + mt <= hw;
    float *const y_tile = y;
    for (size_t j = 0; j < nt; j++) {
        const size_t co = co0 + j;
        const int32_t *BF_RESTRICT cj = c + j * ldc;
        const float sc = g->scale[co], bi = g->bias ? g->bias[co] : 0.0f;
        y = in_place ? (float *)g->out + ((p0 / hw) * cout + co) * hw + p0 % hw : y_tile;
        if (g->pos_h)
            for (size_t i = 0; i < mt; i++) y[i] = ((float)cj[i] * sc) * pos[i] + bi;
        else
            for (size_t i = 0; i < mt; i++) y[i] = (float)cj[i] * sc + bi;
        if (activation == BF_ACT_RELU) {
            for (size_t i = 0; i < mt; i++) y[i] = relu(y[i]);
        } else if (activation == BF_ACT_PRELU) {
            const float sl = g->slope[co];
            for (size_t i = 0; i < mt; i++) y[i] = y[i] >= 0.0f ? y[i] : y[i] * sl;
        } else if (activation == BF_ACT_HARDTANH) {
            for (size_t i = 0; i < mt; i++) y[i] = y[i] < lo ? lo : (y[i] > hi ? hi : y[i]);
        }
        /* pixels [p0, p0 + mt) may span images: write per run of one image */
        for (size_t i0 = 0; i0 < mt;) {
            const size_t p = p0 + i0, b = p / hw, r0 = p % hw;
            size_t len = hw - r0;
            if (len > mt - i0) len = mt - i0;
            const size_t at = (b * cout + co) * hw + r0;
            float *BF_RESTRICT yr = y + i0;
            if (g->residual) {
                const float *BF_RESTRICT res = g->residual + at;
                for (size_t i = 0; i < len; i++) yr[i] = yr[i] + res[i];
            }
            if (post_relu)
                for (size_t i = 0; i < len; i++) yr[i] = relu(yr[i]);
            if (!out_bits && !in_place) {
                float *BF_RESTRICT o = (float *)g->out + at;
                for (size_t i = 0; i < len; i++) o[i] = yr[i];
            }
            i0 += len;
        }
        if (out_bits) {
            const float t = g->out_threshold ? g->out_threshold[co] : 0.0f;
            const unsigned shift = (unsigned)(co % BF_WORD_BITS);
            for (size_t i = 0; i < mt; i++) bits[i] |= (bf_word)(y[i] < t) << shift;
        }
    }
    if (out_bits) {
        const size_t cout_w = BF_WORDS_FOR(cout);
        bf_word *BF_RESTRICT out = (bf_word *)g->out;
        for (size_t i = 0; i < mt; i++) out[(p0 + i) * cout_w + co0 / BF_WORD_BITS] = bits[i];
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
    uint64_t *padded = (uint64_t *)(base + tile_a_bytes(kpad));
    size_t n_padded = 0;
    int32_t *c_tile = (int32_t *)(base + 2 * tile_a_bytes(kpad));
    char *rows = base + 2 * tile_a_bytes(kpad) + tile_c_bytes(kpad);
    float *y_row = (float *)rows;
    float *pos_row = (float *)(rows + row_bytes(kpad));
    bf_word *bits_row = (bf_word *)(rows + 2 * row_bytes(kpad));
    bf_word *panel = (bf_word *)(rows + 3 * row_bytes(kpad));
    size_t packed = (size_t)-1;
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
                n_padded = g->pad_zero ? list_padded_taps(g, p0, mt, padded) : 0;
                built = mi;
            }
            a = a_tile;
            lda = kpad;
            kw = kpad;
        }
        const bf_word *w_panel = panel;
        if (g->panels && kw == kpad) { /* chunks start at multiples of 64 channels, of L */
            w_panel = g->panels + co0 * kpad;
        } else if (packed != ni) { /* this chunk's weights as lane-interleaved panels */
            bf_xnor_panel_pack(g->panel_lanes, nt, kw, g->weight + co0 * kpad, kpad, panel);
            packed = ni;
        }
        /* channel-major product: rows are this chunk's channels, columns the pixels */
        g->panel(mt, nt, kw, a, lda, w_panel, c_tile, mt);
        transform(g, p0, mt, co0, nt, c_tile, mt, y_row, pos_row, bits_row, padded, n_padded);
    }
}

void bf_bconv(const bf_bconv_args *g, int threads) {
    bf_bconv_job job;
    job.g = g;
    job.pixels = g->n * g->ho * g->wo;
    job.n_chunks = (g->cout + NT - 1) / NT;
    const size_t items = ((job.pixels + tile_m(g->kpad) - 1) / tile_m(g->kpad)) * job.n_chunks;
    bf_parallel_for(threads, items, run_range, &job);
}
