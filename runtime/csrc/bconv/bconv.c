/* bconv.c - see bconv.h. ISA-independent: the kernels come in through args->panel (and
 * args->bits). */
#include "bconv.h"

#include "../bf_parallel.h"

/* Pixels per work item: the float output is written in runs of MT pixels per channel;
 * the item's int32 counts (MT x 64 channels) stay in L1/L2. */
#define MT ((size_t)BF_BCONV_TILE_M)
#define NT BF_BCONV_TILE_N
/* Word-pairs (xor + popcount of 64 bits) that justify one more pool thread (~40 us). */
#define BF_WORK_PER_THREAD ((size_t)1 << 17)

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

#define BF_BCONV_MASKS 16 /* padding corrections kept per thread (tap masks, every channel) */
#define BF_BCONV_AHEAD 8 /* channels between an output row's prefetch and its writing */

/* Per-thread scratch, in this order: the kept padding corrections' header (kept over the
 * ranges of items the thread takes in a call), segments built for pixels whose kernel row
 * is cut by the border, the item's segment pointers, a zero segment, the item's border pixels and
 * their tap counts, the popcounts, five pixel rows (floats, position scales, tap masks,
 * slots, add pointers), a channel row of floats, the padding corrections of pixels whose
 * mask is not kept (a tile of int32), the kept ones (BF_BCONV_MASKS rows of every output
 * channel), the repacked weight panel. */
static size_t seg_bytes(size_t kpad) { return round_up(MT * kpad * sizeof(bf_word), BF_ALIGN); }
static size_t ptr_bytes(size_t kpad) { return round_up(MT * kpad * sizeof(void *), BF_ALIGN); }
static size_t zero_bytes(size_t kpad) {
    return round_up(kpad * sizeof(bf_word) + BF_OVERREAD_BYTES, BF_ALIGN);
}
static size_t tile_c_bytes(void) { return round_up(MT * NT * sizeof(int32_t), BF_ALIGN); }
static size_t row_bytes(void) { return round_up(MT * sizeof(uint64_t), BF_ALIGN); }
static size_t chan_bytes(void) { return round_up(NT * sizeof(float), BF_ALIGN); }
/* one kept padding correction: an int32 per output channel */
static size_t half_words(size_t cout) { return round_up(cout, BF_ALIGN / sizeof(int32_t)); }
static size_t panel_bytes(size_t kpad) { return round_up(NT * kpad * sizeof(bf_word), BF_ALIGN); }
static size_t cache_bytes(void);
static size_t per_thread_bytes(size_t kpad, size_t cout) {
    return cache_bytes() + seg_bytes(kpad) + ptr_bytes(kpad) + zero_bytes(kpad) +
           7 * row_bytes() + 2 * tile_c_bytes() + chan_bytes() +
           BF_BCONV_MASKS * half_words(cout) * sizeof(int32_t) + panel_bytes(kpad) +
           BF_OVERREAD_BYTES;
}

size_t bf_bconv_scratch_bytes(size_t kpad, size_t cout, int threads) {
    if (threads < 1) threads = 1;
    return (size_t)threads * per_thread_bytes(kpad, cout) + BF_ALIGN;
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

/* The copies here are a few words each (one 3x3 row of 64 channels is 3 words): GCC would
 * turn the loops into memcpy/memset calls, which cost more than the copies. */
#if defined(__GNUC__) && !defined(__clang__)
#define BF_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define BF_NO_LIBCALLS
#endif

/* How the kernel reads a pixel's row of taps: one segment of kw * cin_w words per kernel
 * row (taps of a row are contiguous in the channels-last input), or one per tap when the
 * row's taps are dilated apart. */
static size_t n_segments(const bf_bconv_args *g) { return g->dw == 1 ? g->kh : g->kh * g->kw; }
static size_t segment_words(const bf_bconv_args *g) {
    return g->dw == 1 ? g->kw * BF_WORDS_FOR(g->cin) : BF_WORDS_FOR(g->cin);
}

/*
 * Segment pointers of pixels [p0, p0 + mt) into `rows`: straight into the input, or to
 * `zero` (a segment of words 0, i.e. +1 inputs) for a kernel row above or below the
 * image, or to a copy in `built` with zero words for the taps left or right of it.
 * kvec[i] = the number of taps x channels pixel i really has (K less its out-of-bounds
 * taps' share under zero padding; K under one padding). Border pixels' indices are listed
 * in `border`, their out-of-bounds taps as bits of `masks` (same position; bit
 * ky * kw + kx, all bits set past 64 taps); returns their number.
 */
BF_NO_LIBCALLS static size_t build_rows(const bf_bconv_args *g, size_t p0, size_t mt,
                                        const bf_word **rows, bf_word *built,
                                        const bf_word *zero, int32_t *kvec, uint64_t *border,
                                        uint64_t *masks) {
    const size_t cw = BF_WORDS_FOR(g->cin), hw = g->ho * g->wo, n_seg = n_segments(g);
    const size_t seg_len = segment_words(g), kh = g->kh, kw = g->kw, dh = g->dh, dw = g->dw;
    const long h = (long)g->h, w = (long)g->w;
    const size_t line_words = g->w * cw, image_words = g->h * line_words;
    const int32_t k_total = (int32_t)(g->cin * kh * kw);
    /* output rows and columns whose taps are all inside the input */
    const size_t ey = (kh - 1) * dh, ex = (kw - 1) * dw;
    const size_t oy_lo = (g->ph + g->sh - 1) / g->sh, ox_lo = (g->pw + g->sw - 1) / g->sw;
    const size_t oy_hi = g->h + g->ph >= ey + 1 ? (g->h + g->ph - ey - 1) / g->sh + 1 : 0;
    const size_t ox_hi = g->w + g->pw >= ex + 1 ? (g->w + g->pw - ex - 1) / g->sw + 1 : 0;
    const size_t step = g->sw * cw;
    size_t b = p0 / hw, oy = (p0 % hw) / g->wo, ox = (p0 % hw) % g->wo, n_border = 0;
    for (size_t i = 0; i < mt;) {
        const bf_word *image = g->x + b * image_words;
        const long y0 = (long)(oy * g->sh) - (long)g->ph, x0 = (long)(ox * g->sw) - (long)g->pw;
        const bf_word **seg = rows + i * n_seg;
        if (oy >= oy_lo && oy < oy_hi && ox >= ox_lo && ox < ox_hi) {
            /* a run of inside pixels along the row: pointers only */
            size_t run = (ox_hi < g->wo ? ox_hi : g->wo) - ox;
            if (run > mt - i) run = mt - i;
            const bf_word *at = image + (size_t)y0 * line_words + (size_t)x0 * cw;
            for (size_t q = 0; q < run; q++) kvec[i + q] = k_total;
            if (dw == 1 && kh == 3) { /* the common 3x3 case, unrolled */
                const size_t down = dh * line_words;
                for (size_t q = 0; q < run; q++, at += step, seg += 3) {
                    seg[0] = at;
                    seg[1] = at + down;
                    seg[2] = at + 2 * down;
                }
            } else if (dw == 1) {
                for (size_t q = 0; q < run; q++, at += step, seg += n_seg)
                    for (size_t ky = 0; ky < kh; ky++) seg[ky] = at + ky * dh * line_words;
            } else {
                for (size_t q = 0; q < run; q++, at += step, seg += n_seg) {
                    for (size_t ky = 0; ky < kh; ky++)
                        for (size_t kx = 0; kx < kw; kx++)
                            seg[ky * kw + kx] = at + ky * dh * line_words + kx * dw * cw;
                }
            }
            i += run;
            ox += run;
            if (ox == g->wo) {
                ox = 0;
                if (++oy == g->ho) oy = 0, b++;
            }
            continue;
        }
        /* a border pixel: row by row */
        const int x_inside = x0 >= 0 && x0 + (long)ex < w;
        uint64_t mask = 0;
        size_t n_out = 0;
        if (dw == 1 && kh * kw <= 64) {
            /* the taps out of a row inside the image are the same in every such row */
            uint64_t cols = 0;
            size_t n_cols = 0;
            if (!x_inside)
                for (size_t kx = 0; kx < kw; kx++)
                    if (x0 + (long)kx < 0 || x0 + (long)kx >= w) {
                        cols |= (uint64_t)1 << kx;
                        n_cols++;
                    }
            const uint64_t row = kw == 64 ? ~(uint64_t)0 : ((uint64_t)1 << kw) - 1;
            for (size_t ky = 0; ky < kh; ky++) {
                const long iy = y0 + (long)(ky * dh);
                if (iy < 0 || iy >= h) {
                    seg[ky] = zero;
                    mask |= row << (ky * kw);
                    n_out += kw;
                    continue;
                }
                const bf_word *line = image + (size_t)iy * line_words;
                if (!cols) {
                    seg[ky] = line + (size_t)x0 * cw;
                    continue;
                }
                for (size_t kx = 0; kx < kw; kx++) {
                    bf_word *dst = built + kx * cw;
                    if (cols >> kx & 1) {
                        for (size_t k = 0; k < cw; k++) dst[k] = 0;
                    } else {
                        const bf_word *src = line + (size_t)(x0 + (long)kx) * cw;
                        for (size_t k = 0; k < cw; k++) dst[k] = src[k];
                    }
                }
                seg[ky] = built;
                built += seg_len;
                mask |= cols << (ky * kw);
                n_out += n_cols;
            }
        } else {
            for (size_t ky = 0; ky < kh; ky++) {
                const long iy = y0 + (long)(ky * dh);
                const int row_out = iy < 0 || iy >= h;
                const bf_word *line = image + (size_t)(row_out ? 0 : iy) * line_words;
                if (dw == 1) {
                    if (row_out) {
                        seg[ky] = zero;
                    } else if (x_inside) {
                        seg[ky] = line + (size_t)x0 * cw;
                    } else {
                        for (size_t kx = 0; kx < kw; kx++) {
                            const long ix = x0 + (long)kx;
                            bf_word *dst = built + kx * cw;
                            if (ix < 0 || ix >= w) {
                                for (size_t k = 0; k < cw; k++) dst[k] = 0;
                            } else {
                                const bf_word *src = line + (size_t)ix * cw;
                                for (size_t k = 0; k < cw; k++) dst[k] = src[k];
                            }
                        }
                        seg[ky] = built;
                        built += seg_len;
                    }
                }
                for (size_t kx = 0; kx < kw; kx++) {
                    const long ix = x0 + (long)(kx * dw);
                    const int out = row_out || ix < 0 || ix >= w;
                    const size_t tap = ky * kw + kx;
                    if (out) {
                        mask |= tap < 64 ? (uint64_t)1 << tap : ~(uint64_t)0;
                        n_out++;
                    }
                    if (dw != 1) seg[tap] = out ? zero : line + (size_t)ix * cw;
                }
            }
        }
        kvec[i] = k_total;
        if (mask && g->pad_zero) {
            kvec[i] = k_total - (int32_t)(n_out * g->cin);
            masks[n_border] = mask;
            border[n_border++] = (uint64_t)i;
        }
        i++;
        if (++ox == g->wo) {
            ox = 0;
            if (++oy == g->ho) oy = 0, b++;
        }
    }
    return n_border;
}

/* The transform's and the padding corrections' loops are plain C; on x86 an AVX-512 clone
 * (16 floats a step) or an AVX2 one (8) is chosen at load time by the CPU (GCC function
 * multi-versioning; libgcc checks the OS-saved state). Exact either way: -std=c11 keeps GCC
 * from contracting a * b + c into an FMA, so every clone rounds like the scalar code. */
#define BF_TRANSFORM_CLONES BF_CLONES("avx512f", "avx2", "default")

/* What the out-of-bounds taps in `mask` of pixel p, read as +1 inputs, added to channels
 * co0...: corr[j] = sum over those n_out taps of wsum[tap][co0 + j]. With acc = kvec - 2 P'
 * (kvec = K - n_out * cin), the popcount to use is P' = P + half[j], half[j] =
 * (corr[j] - n_out * cin) / 2 (exact: every wsum has the parity of cin). */
BF_TRANSFORM_CLONES static void padding_correction(const bf_bconv_args *g, size_t co0,
                                                   size_t nt, uint64_t mask, size_t p,
                                                   int32_t *BF_RESTRICT half) {
    const size_t taps = g->kh * g->kw;
    size_t n_out = 0;
    for (size_t j = 0; j < nt; j++) half[j] = 0;
    if (mask == ~(uint64_t)0 && taps > 64) { /* recompute the taps of this pixel */
        const size_t hw = g->ho * g->wo, r = p % hw, oy = r / g->wo, ox = r % g->wo;
        for (size_t ky = 0; ky < g->kh; ky++)
            for (size_t kx = 0; kx < g->kw; kx++) {
                const long iy = (long)(oy * g->sh + ky * g->dh) - (long)g->ph;
                const long ix = (long)(ox * g->sw + kx * g->dw) - (long)g->pw;
                if (iy >= 0 && iy < (long)g->h && ix >= 0 && ix < (long)g->w) continue;
                const int32_t *BF_RESTRICT ws = g->wsum + (ky * g->kw + kx) * g->cout + co0;
                for (size_t j = 0; j < nt; j++) half[j] += ws[j];
                n_out++;
            }
    } else {
        for (size_t tap = 0; tap < taps && tap < 64; tap++) {
            if (!(mask >> tap & 1)) continue;
            const int32_t *BF_RESTRICT ws = g->wsum + tap * g->cout + co0;
            for (size_t j = 0; j < nt; j++) half[j] += ws[j];
            n_out++;
        }
    }
    const int32_t share = (int32_t)(n_out * g->cin);
    for (size_t j = 0; j < nt; j++) half[j] = (half[j] - share) / 2;
}

static inline float relu(float v) { return v > 0.0f ? v : 0.0f; }

/*
 * Zero padding: P' = P + half, so that acc = kvec - 2 P' leaves out exactly what a border
 * pixel's out-of-bounds taps (read as +1) added. The panel kernel adds `half` to the
 * pixel's counts in registers (its `add` rows). A thread keeps the half rows of the last
 * BF_BCONV_MASKS distinct tap masks, for every output channel (the same few masks recur in
 * every pixel tile and channel chunk: a 3x3 kernel's border has 8): slot s holds mask[s]'s
 * at half + s * half_words(cout). A tile's border pixel e uses slot[e]; one whose mask the
 * slots cannot hold (past 64 taps a mask does not name the taps; or more distinct masks in
 * one tile than slots) has its row computed per chunk at once + e * NT (slot[e] = NONE).
 */
#define BF_SLOT_NONE 0xff
typedef struct {
    uint64_t mask[BF_BCONV_MASKS];
    size_t n, next;
    int32_t *half;  /* BF_BCONV_MASKS rows of half_words(cout) */
    int32_t *once;  /* MT rows of NT */
    uint8_t *slot;  /* MT: each border pixel's slot, or BF_SLOT_NONE */
} bf_half_cache;
static size_t cache_bytes(void) { return round_up(sizeof(bf_half_cache), BF_ALIGN); }

/* Slots for the n_border border pixels of a new tile (their tap masks in `masks`), computing
 * the half rows of masks not kept yet; a slot one of this tile's pixels uses is not reused
 * for another of its masks. */
static void tile_slots(const bf_bconv_args *g, bf_half_cache *hc, const uint64_t *masks,
                       size_t n_border) {
    const size_t hwords = half_words(g->cout);
    uint32_t used = 0;
    for (size_t e = 0; e < n_border; e++) {
        uint8_t slot = BF_SLOT_NONE;
        if (g->kh * g->kw <= 64) {
            size_t s = e > 0 && hc->slot[e - 1] != BF_SLOT_NONE ? hc->slot[e - 1] : 0;
            if (s >= hc->n || hc->mask[s] != masks[e]) /* not the previous pixel's: search */
                for (s = 0; s < hc->n && hc->mask[s] != masks[e]; s++) continue;
            if (s == hc->n) { /* not kept: a free slot, or the next one this tile leaves */
                if (hc->n < BF_BCONV_MASKS) {
                    s = hc->n++;
                } else {
                    s = BF_BCONV_MASKS;
                    for (size_t tries = 0; tries < BF_BCONV_MASKS; tries++) {
                        const size_t t = hc->next++ % BF_BCONV_MASKS;
                        if (!(used >> t & 1)) {
                            s = t;
                            break;
                        }
                    }
                }
                if (s < BF_BCONV_MASKS) {
                    int32_t *row = hc->half + s * hwords;
                    padding_correction(g, 0, g->cout, masks[e], 0, row);
                    for (size_t j = g->cout; j < hwords; j++) row[j] = 0; /* read, not used */
                    hc->mask[s] = masks[e];
                }
            }
            if (s < BF_BCONV_MASKS) {
                slot = (uint8_t)s;
                used |= (uint32_t)1 << s;
            }
        }
        hc->slot[e] = slot;
    }
}

/*
 * Output transform of a tile of popcounts `c` (mt pixels p0... x nt channels co0...,
 * the border pixels' padding corrections included): acc = kvec - 2 * popcount, then
 * y = ((acc * scale) * pos) + bias, activation, + residual, post-activation, then float
 * NCHW or bits packed against the thresholds, 64 channels per word.
 *
 * Float output takes channel-major counts (row stride ldc per channel): every loop runs
 * over a channel's contiguous pixels, as the output rows are laid out. Bits output takes
 * pixel-major counts (row stride ldc per pixel): every loop runs over a pixel's channels,
 * which end in that pixel's output word.
 */
BF_TRANSFORM_CLONES static void transform(const bf_bconv_args *g, size_t p0, size_t mt,
                                          size_t co0, size_t nt, int32_t *BF_RESTRICT c,
                                          size_t ldc, float *BF_RESTRICT y,
                                          float *BF_RESTRICT pos, float *BF_RESTRICT ych,
                                          const int32_t *BF_RESTRICT kvec) {
    const size_t hw = g->ho * g->wo, wo = g->wo, cout = g->cout;
    const int out_bits = g->out_bits;
    if (g->pos_h)
        for (size_t i = 0; i < mt; i++) {
            const size_t r = (p0 + i) % hw;
            pos[i] = g->pos_h[r / wo] * g->pos_w[r % wo];
        }
    const int activation = g->activation, post_relu = g->post_relu;
    const float lo = g->min_val, hi = g->max_val;
    if (out_bits && g->bits) {
        g->bits(g, p0, mt, co0, nt, c, ldc, kvec, pos);
        return;
    }
    if (out_bits) {
        const float *BF_RESTRICT sc = g->scale + co0;
        const float *BF_RESTRICT bi = g->bias ? g->bias + co0 : NULL;
        const float *BF_RESTRICT sl = g->slope ? g->slope + co0 : NULL;
        const float *BF_RESTRICT th = g->out_threshold ? g->out_threshold + co0 : NULL;
        const size_t cout_w = BF_WORDS_FOR(cout);
        bf_word *BF_RESTRICT out = (bf_word *)g->out + co0 / BF_WORD_BITS;
        for (size_t i = 0; i < mt; i++) {
            const int32_t *BF_RESTRICT ci = c + i * ldc, kk = kvec[i];
            if (g->pos_h) {
                const float ps = pos[i];
                for (size_t j = 0; j < nt; j++) ych[j] = ((float)(kk - 2 * ci[j]) * sc[j]) * ps;
            } else {
                for (size_t j = 0; j < nt; j++) ych[j] = (float)(kk - 2 * ci[j]) * sc[j];
            }
            if (bi)
                for (size_t j = 0; j < nt; j++) ych[j] = ych[j] + bi[j];
            else
                for (size_t j = 0; j < nt; j++) ych[j] = ych[j] + 0.0f;
            if (activation == BF_ACT_RELU) {
                for (size_t j = 0; j < nt; j++) ych[j] = relu(ych[j]);
            } else if (activation == BF_ACT_PRELU) {
                for (size_t j = 0; j < nt; j++) ych[j] = ych[j] >= 0.0f ? ych[j] : ych[j] * sl[j];
            } else if (activation == BF_ACT_HARDTANH) {
                for (size_t j = 0; j < nt; j++)
                    ych[j] = ych[j] < lo ? lo : (ych[j] > hi ? hi : ych[j]);
            }
            if (g->residual) { /* NCHW: this pixel's channels are hw apart */
                const size_t p = p0 + i, b = p / hw, r = p % hw;
                const float *BF_RESTRICT res = g->residual + (b * cout + co0) * hw + r;
                for (size_t j = 0; j < nt; j++) ych[j] = ych[j] + res[j * hw];
            }
            if (post_relu)
                for (size_t j = 0; j < nt; j++) ych[j] = relu(ych[j]);
            bf_word word = 0;
            if (th)
                for (size_t j = 0; j < nt; j++) word |= (bf_word)(ych[j] < th[j]) << j;
            else
                for (size_t j = 0; j < nt; j++) word |= (bf_word)(ych[j] < 0.0f) << j;
            out[(p0 + i) * cout_w] = word;
        }
        return;
    }
    /* float output of a tile inside one image: compute in place in the output row */
    const size_t b0 = p0 / hw, r00 = p0 % hw; /* the tile's first image and pixel in it */
    const int in_place = r00 + mt <= hw;
    /* a second pass per image run: residual, post-activation, copy out of y_tile */
    const int per_run = g->residual || post_relu || !in_place;
    float *const y_tile = y;
    for (size_t j = 0; j < nt; j++) {
        const size_t co = co0 + j;
        const int32_t *BF_RESTRICT cj = c + j * ldc;
        const float sc = g->scale[co], bi = g->bias ? g->bias[co] : 0.0f;
        y = in_place ? (float *)g->out + (b0 * cout + co) * hw + r00 : y_tile;
        /* the output row of the channel BF_BCONV_AHEAD later, for writing: after other
         * work (another layer, another library) output rows are rarely in cache, and 64
         * rows are more streams than the hardware prefetchers follow (measured +10-20% on
         * 64-256 channel layers after a torch conv; a burst for the whole item at once
         * was slower) */
        if (in_place && j + BF_BCONV_AHEAD < nt)
            for (size_t at = 0; at < mt * sizeof(float); at += 64)
                __builtin_prefetch((const char *)(y + BF_BCONV_AHEAD * hw) + at, 1, 3);
        /* acc = (K - P) - P: two integer ops a step (GCC made three of K - 2 * P here) */
        if (g->pos_h)
            for (size_t i = 0; i < mt; i++)
                y[i] = ((float)((kvec[i] - cj[i]) - cj[i]) * sc) * pos[i] + bi;
        else
            for (size_t i = 0; i < mt; i++) y[i] = (float)((kvec[i] - cj[i]) - cj[i]) * sc + bi;
        if (activation == BF_ACT_RELU) {
            for (size_t i = 0; i < mt; i++) y[i] = relu(y[i]);
        } else if (activation == BF_ACT_PRELU) {
            const float sl = g->slope[co];
            for (size_t i = 0; i < mt; i++) y[i] = y[i] >= 0.0f ? y[i] : y[i] * sl;
        } else if (activation == BF_ACT_HARDTANH) {
            for (size_t i = 0; i < mt; i++) y[i] = y[i] < lo ? lo : (y[i] > hi ? hi : y[i]);
        }
        /* pixels [p0, p0 + mt) may span images: per run of one image */
        if (!per_run) continue;
        for (size_t i0 = 0, b = b0, r0 = r00; i0 < mt; b++, r0 = 0) {
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
            if (!in_place) {
                float *BF_RESTRICT o = (float *)g->out + at;
                for (size_t i = 0; i < len; i++) o[i] = yr[i];
            }
            i0 += len;
        }
    }
}

typedef struct {
    const bf_bconv_args *g;
    size_t n_chunks, pixels;
    size_t tile; /* pixels per item (<= MT) */
} bf_bconv_job;

static void run_range(void *ctx, size_t begin, size_t end, int thread_index) {
    const bf_bconv_job *job = (const bf_bconv_job *)ctx;
    const bf_bconv_args *g = job->g;
    const size_t kpad = g->kpad;
    char *at = (char *)round_up((size_t)g->scratch, BF_ALIGN) +
               (size_t)thread_index * per_thread_bytes(kpad, g->cout);
    bf_half_cache *hc = (bf_half_cache *)(void *)at; /* n, next set by bf_bconv */
    at += cache_bytes();
    bf_word *built = (bf_word *)at;
    at += seg_bytes(kpad);
    const bf_word **rows = (const bf_word **)(void *)at;
    at += ptr_bytes(kpad);
    bf_word *zero = (bf_word *)at;
    at += zero_bytes(kpad);
    uint64_t *border = (uint64_t *)at;
    at += row_bytes();
    int32_t *kvec = (int32_t *)at;
    at += row_bytes();
    int32_t *c_tile = (int32_t *)at;
    at += tile_c_bytes();
    float *y_row = (float *)at;
    float *pos_row = (float *)(at + row_bytes());
    uint64_t *masks = (uint64_t *)(at + 2 * row_bytes());
    at += 3 * row_bytes();
    hc->slot = (uint8_t *)at;
    at += row_bytes();
    const int32_t **add = (const int32_t **)(void *)at;
    at += row_bytes();
    float *y_chan = (float *)at;
    at += chan_bytes();
    hc->once = (int32_t *)at;
    at += tile_c_bytes();
    hc->half = (int32_t *)at;
    at += BF_BCONV_MASKS * half_words(g->cout) * sizeof(int32_t);
    bf_word *panel = (bf_word *)at;
    const size_t n_seg = n_segments(g), seg_len = segment_words(g);
    for (size_t k = 0; k < seg_len; k++) zero[k] = 0;
    size_t packed = (size_t)-1, built_for = (size_t)-1, n_border = 0;
    for (size_t item = begin; item < end; item++) {
        const size_t mi = item / job->n_chunks, ni = item % job->n_chunks;
        const size_t p0 = mi * job->tile, co0 = ni * NT;
        const size_t mt = job->pixels - p0 < job->tile ? job->pixels - p0 : job->tile;
        const size_t nt = g->cout - co0 < NT ? g->cout - co0 : NT;
        if (built_for != mi) {
            n_border = build_rows(g, p0, mt, rows, built, zero, kvec, border, masks);
            tile_slots(g, hc, masks, n_border);
            for (size_t i = 0; i < mt; i++) add[i] = NULL;
            built_for = mi;
        }
        const bf_word *w_panel = panel;
        if (g->panels) { /* chunks start at multiples of 64 channels, of L */
            w_panel = g->panels + co0 * kpad;
            /* the next item's chunk into L2 while this one runs */
            const size_t next = (ni + 1 < job->n_chunks ? ni + 1 : 0) * NT;
            const size_t nt_next = g->cout - next < NT ? g->cout - next : NT;
            const char *wn = (const char *)(g->panels + next * kpad);
            if (item + 1 < end)
                for (size_t at = 0; at < nt_next * kpad * sizeof(bf_word); at += 64)
                    __builtin_prefetch(wn + at, 0, 2);
        } else if (packed != ni) { /* this chunk's weights as lane-interleaved panels */
            bf_xnor_panel_pack(g->panel_lanes, nt, kpad, g->weight + co0 * kpad, kpad, panel);
            packed = ni;
        }
        for (size_t e = 0; e < n_border; e++) { /* the border pixels' corrections */
            const size_t i = (size_t)border[e];
            if (hc->slot[e] != BF_SLOT_NONE) {
                add[i] = hc->half + hc->slot[e] * half_words(g->cout) + co0;
            } else {
                int32_t *row = hc->once + e * NT;
                padding_correction(g, co0, nt, masks[e], p0 + i, row);
                for (size_t j = nt; j < NT; j++) row[j] = 0; /* read, not used */
                add[i] = row;
            }
        }
        /* float output: channel-major counts (rows of mt pixels); bits: pixel-major */
        const size_t ldc = g->out_bits ? NT : mt;
        g->panel(mt, nt, rows, n_seg, seg_len, w_panel, kpad, n_border ? add : NULL, c_tile,
                 g->out_bits ? 1 : ldc, g->out_bits ? ldc : 1);
        transform(g, p0, mt, co0, nt, c_tile, ldc, y_row, pos_row, y_chan, kvec);
    }
}

void bf_bconv(const bf_bconv_args *g, int threads) {
    bf_bconv_job job;
    job.g = g;
    job.pixels = g->n * g->ho * g->wo;
    job.n_chunks = (g->cout + NT - 1) / NT;
    /* several threads: as many pixel tiles as MT needs, of equal size (a multiple of the
     * kernels' 4-pixel tiles), so threads given whole tiles get equal work (196 pixels:
     * 100 + 96, not 128 + 68); one thread: MT, as before */
    const size_t tiles = (job.pixels + MT - 1) / MT;
    job.tile = threads > 1 ? round_up((job.pixels + tiles - 1) / tiles, 4) : MT;
    if (job.tile > MT) job.tile = MT;
    const size_t items = ((job.pixels + job.tile - 1) / job.tile) * job.n_chunks;
    char *base = (char *)round_up((size_t)g->scratch, BF_ALIGN);
    const size_t per_thread = per_thread_bytes(g->kpad, g->cout);
    for (int t = 0; t < (threads < 1 ? 1 : threads); t++) { /* no padding corrections kept */
        bf_half_cache *hc = (bf_half_cache *)(void *)(base + (size_t)t * per_thread);
        hc->n = hc->next = 0;
    }
    /* Ranges: one a thread where there are at least two pixel tiles a thread (each thread
     * then writes long runs of every output row; 4 a thread was 23% slower on 64ch@56x56
     * and 37% on 128ch@28x28, 2 threads); else 4 a thread, so a thread that starts late or
     * runs slower takes fewer (16% faster than one a thread on 256ch@14x14, 23% on
     * 128ch@28x28 stride 2, whose items are few and large). Either way the ranges are
     * taken, not assigned: a worker that is not running leaves its share to the others. */
    const size_t nthreads = (size_t)(threads < 1 ? 1 : threads);
    const size_t n_tiles = items / job.n_chunks;
    bf_parallel_for(threads, items, n_tiles >= 2 * nthreads ? nthreads : 4 * nthreads, run_range,
                    &job);
}
