/* fconv.c - see fconv.h. ISA-independent: the kernel comes in through args->kernel. */
#include "fconv.h"

#include <string.h>

#include "../bf_parallel.h"

/* Multiply-adds that justify one more pool thread (~40 us of one core). */
#define BF_FCONV_WORK_PER_THREAD ((size_t)1 << 21)
/* A fused pool's band of convolution rows (all channels) stays near this size (L2). */
#define BF_FCONV_BAND_BYTES ((size_t)256 << 10)

typedef struct {
    int direct;          /* stride 1, no padding: the kernel reads the input itself */
    size_t hpl, wpl;     /* plane extent */
    size_t slots;        /* planes built (phases some tap reads) */
    int slot[64];        /* phase py * sw + px -> plane index, -1 when unused */
} layout;

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

static int make_layout(const bf_fconv_args *g, layout *l) {
    memset(l, 0, sizeof(*l));
    l->direct = g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
    if (l->direct) {
        l->hpl = g->h;
        l->wpl = g->w;
        l->slots = 1;
        l->slot[0] = 0;
        return 0;
    }
    if (g->sh * g->sw > 64) return -1;
    l->hpl = (g->h + 2 * g->ph + g->sh - 1) / g->sh;
    l->wpl = (g->w + 2 * g->pw + g->sw - 1) / g->sw;
    for (size_t i = 0; i < 64; i++) l->slot[i] = -1;
    for (size_t ky = 0; ky < g->kh; ky++) {
        for (size_t kx = 0; kx < g->kw; kx++) {
            const size_t phase = (ky * g->dh) % g->sh * g->sw + (kx * g->dw) % g->sw;
            if (l->slot[phase] < 0) l->slot[phase] = (int)l->slots++;
        }
    }
    return 0;
}

static size_t k_of(const bf_fconv_args *g) { return g->cin * g->kh * g->kw; }

static size_t plane_floats(const bf_fconv_args *g, const layout *l) {
    return g->cin * l->hpl * l->wpl;
}

/* Pooled rows per band and the band's convolution rows (new rows plus kh - sh carried). */
static void band_rows(const bf_fconv_args *g, size_t *pooled, size_t *rows) {
    const bf_fconv_pool *p = g->pool;
    const size_t row_bytes = g->cout * g->wo * sizeof(float);
    const size_t fit = BF_FCONV_BAND_BYTES / (row_bytes ? row_bytes : 1);
    const size_t carry = p->kh - p->sh;
    size_t pb = fit > carry + p->sh ? (fit - carry) / p->sh : 1;
    if (pb > p->ho) pb = p->ho;
    *pooled = pb;
    *rows = pb * p->sh + carry;
}

static size_t band_bytes(const bf_fconv_args *g) {
    size_t pb, rows;
    band_rows(g, &pb, &rows);
    return round_up(g->cout * rows * g->wo * sizeof(float), BF_ALIGN);
}

static size_t pool_row_bytes(const bf_fconv_args *g) {
    return round_up(g->wo * sizeof(float), BF_ALIGN);
}

/* A thread's stage for a band's pooled rows when they are also sign-packed. */
static size_t stage_bytes(const bf_fconv_args *g) {
    if (!g->pool || !g->pool->bits) return 0;
    size_t pb, rows;
    band_rows(g, &pb, &rows);
    return round_up(g->cout * pb * g->pool->wo * sizeof(float), BF_ALIGN);
}

static size_t thread_bytes(const bf_fconv_args *g) {
    return band_bytes(g) + pool_row_bytes(g) + stage_bytes(g);
}

static size_t planes_bytes(const bf_fconv_args *g, const layout *l) {
    return round_up(l->direct ? 0 : l->slots * plane_floats(g, l) * sizeof(float), BF_ALIGN);
}

size_t bf_fconv_scratch_bytes(const bf_fconv_args *g, int threads) {
    layout l;
    if (make_layout(g, &l) < 0) return 0;
    size_t bytes = planes_bytes(g, &l) + round_up(k_of(g) * sizeof(size_t), BF_ALIGN) + BF_ALIGN;
    if (g->pool) /* per thread: a band, a pooling row (and a stage) */
        bytes += (size_t)(threads < 1 ? 1 : threads) * thread_bytes(g);
    return bytes;
}

int bf_fconv_threads(const bf_fconv_args *g, int threads) {
    const size_t work = g->n * g->ho * g->wo * g->cout * k_of(g);
    const size_t blocks = ((g->ho * g->wo + g->nr - 1) / g->nr) * ((g->cout + g->mr - 1) / g->mr);
    size_t useful = work / BF_FCONV_WORK_PER_THREAD;
    if (useful > blocks) useful = blocks;
    if (useful < 1) useful = 1;
    if (threads < 1) threads = 1;
    return threads < (int)useful ? threads : (int)useful;
}

/* Phase plane (py, px) of one batch item's zero-padded input. */
static void fill_plane(const bf_fconv_args *g, const layout *l, const float *x, size_t py,
                       size_t px, float *plane) {
    for (size_t ci = 0; ci < g->cin; ci++) {
        const float *xc = x + ci * g->h * g->w;
        float *pc = plane + ci * l->hpl * l->wpl;
        for (size_t r = 0; r < l->hpl; r++) {
            float *row = pc + r * l->wpl;
            const size_t y = r * g->sh + py; /* padded coordinates */
            if (y < g->ph || y >= g->ph + g->h) {
                for (size_t c = 0; c < l->wpl; c++) row[c] = 0.0f;
                continue;
            }
            const float *src = xc + (y - g->ph) * g->w;
            /* columns c with pw <= c * sw + px < pw + w read the input */
            size_t c0 = 0;
            while (c0 < l->wpl && c0 * g->sw + px < g->pw) row[c0++] = 0.0f;
            size_t c1 = c0;
            while (c1 < l->wpl && c1 * g->sw + px < g->pw + g->w) c1++;
            const size_t sw = g->sw;
            if (sw == 1) {
                const float *s = src + (c0 + px - g->pw);
                for (size_t c = c0; c < c1; c++) row[c] = s[c - c0];
            } else if (sw == 2) {
                const float *s = src + (2 * c0 + px - g->pw);
                for (size_t c = c0; c < c1; c++) row[c] = s[2 * (c - c0)];
            } else {
                const float *s = src + (sw * c0 + px - g->pw);
                for (size_t c = c0; c < c1; c++) row[c] = s[sw * (c - c0)];
            }
            for (size_t c = c1; c < l->wpl; c++) row[c] = 0.0f;
        }
    }
}

typedef struct {
    const bf_fconv_args *g;
    const float *planes;  /* the batch item's planes (or its input, direct), from q = 0 */
    float *out;           /* where output row 0 of channel 0 goes */
    size_t ldo;           /* floats between channels of `out` */
    const size_t *off;
    size_t k, wpl, q_end, n_cb;
    /* fused pool: `out` is the threads' band buffers */
    float *pooled;        /* the batch item's pooled output */
    bf_word *bits;        /* its sign-packed copy, or NULL */
} job;

static void run_range(void *ctx, size_t begin, size_t end, int thread_index) {
    (void)thread_index;
    const job *j = ctx;
    const bf_fconv_args *g = j->g;
    for (size_t item = begin; item < end; item++) {
        const size_t qb = item / j->n_cb, cb = item % j->n_cb;
        const size_t q0 = qb * g->nr;
        const size_t nq = j->q_end - q0 < g->nr ? j->q_end - q0 : g->nr;
        const size_t c0 = cb * g->mr;
        const size_t mr = g->cout - c0 < g->mr ? g->cout - c0 : g->mr;
        g->kernel(j->k, j->planes + q0, j->off, g->weight + cb * j->k * g->mr, nq, mr,
                  g->bias ? g->bias + c0 : NULL, g->relu, q0, j->wpl, g->wo,
                  j->out + c0 * j->ldo, j->ldo);
    }
}

/* Pooled rows [begin, end) of one batch item on one thread, band by band: the
 * convolution rows a band needs (less those the previous band holds, moved to the top)
 * into the thread's band buffer, then every channel's pooled rows. One fork-join per
 * image, not per band; a thread's first band recomputes the kh - sh rows its
 * predecessor also computed. */
static void pool_bands(void *ctx, size_t begin, size_t end, int thread_index) {
    const job *shared = ctx;
    const bf_fconv_args *g = shared->g;
    const bf_fconv_pool *p = g->pool;
    size_t pb, band_h;
    band_rows(g, &pb, &band_h);
    unsigned char *mine = (unsigned char *)shared->out + (size_t)thread_index * thread_bytes(g);
    float *band = (float *)mine;
    float *row = (float *)(mine + band_bytes(g));
    float *stage = (float *)(mine + band_bytes(g) + pool_row_bytes(g));
    const size_t ldo = band_h * g->wo;
    size_t done = 0, prev_ya = 0; /* rows [prev_ya, done) are in the band */
    int first = 1;
    for (size_t py0 = begin; py0 < end; py0 += pb) {
        const size_t py1 = py0 + pb < end ? py0 + pb : end;
        const size_t ya = py0 * p->sh > p->ph ? py0 * p->sh - p->ph : 0;
        size_t yb = (py1 - 1) * p->sh + p->kh - p->ph;
        if (yb > g->ho) yb = g->ho;
        const int carry = !first && done > ya;
        if (carry && ya > prev_ya) {
            for (size_t c = 0; c < g->cout; c++)
                memmove(band + c * ldo, band + c * ldo + (ya - prev_ya) * g->wo,
                        (done - ya) * g->wo * sizeof(float));
        }
        const size_t y0 = carry ? done : ya;
        if (y0 < yb) { /* convolution rows [y0, yb) */
            job part = *shared;
            part.planes = shared->planes + y0 * shared->wpl;
            part.out = band + (y0 - ya) * g->wo;
            part.ldo = ldo;
            part.q_end = (yb - y0 - 1) * shared->wpl + g->wo;
            const size_t n_qb = (part.q_end + g->nr - 1) / g->nr;
            run_range(&part, 0, n_qb * shared->n_cb, thread_index);
        }
        /* pooled row py reads band row py * sh - ph - ya: the kernel's padding, shifted */
        const size_t ph = ya + p->ph - py0 * p->sh, pix = (py1 - py0) * p->wo;
        for (size_t c = 0; c < g->cout; c++) {
            float *dst = p->bits ? stage + c * pix : shared->pooled + (c * p->ho + py0) * p->wo;
            p->kernel(band + c * ldo, dst, 1, yb - ya, g->wo, py1 - py0, p->wo, p->kh, p->kw,
                      p->sh, p->sw, ph, p->pw, row);
        }
        if (p->bits) { /* pack the band's pixels, then hand its rows to the float output */
            const size_t cw = BF_WORDS_FOR(g->cout);
            p->sign_pack(stage, p->threshold, shared->bits + py0 * p->wo * cw, 1, g->cout, pix);
            for (size_t c = 0; c < g->cout; c++)
                memcpy(shared->pooled + (c * p->ho + py0) * p->wo, stage + c * pix,
                       pix * sizeof(float));
        }
        done = yb;
        prev_ya = ya;
        first = 0;
    }
}

void bf_fconv(const bf_fconv_args *g, int threads) {
    layout l;
    if (make_layout(g, &l) < 0) return; /* the binding checks the geometry first */
    const size_t k = k_of(g);
    unsigned char *base = (unsigned char *)round_up((size_t)g->scratch, BF_ALIGN);
    float *planes = (float *)base;
    size_t *off = (size_t *)(base + planes_bytes(g, &l));
    float *band = (float *)((unsigned char *)off + round_up(k * sizeof(size_t), BF_ALIGN));
    const size_t pf = plane_floats(g, &l), area = l.hpl * l.wpl;
    for (size_t ci = 0; ci < g->cin; ci++) {
        for (size_t ky = 0; ky < g->kh; ky++) {
            for (size_t kx = 0; kx < g->kw; kx++) {
                const size_t y = ky * g->dh, x = kx * g->dw;
                const size_t slot = (size_t)l.slot[y % g->sh * g->sw + x % g->sw];
                off[(ci * g->kh + ky) * g->kw + kx] =
                    slot * pf + ci * area + (y / g->sh) * l.wpl + x / g->sw;
            }
        }
    }
    job j = {.g = g, .off = off, .k = k, .wpl = l.wpl,
             .q_end = (g->ho - 1) * l.wpl + g->wo, .n_cb = (g->cout + g->mr - 1) / g->mr};
    const size_t n_qb = (j.q_end + g->nr - 1) / g->nr;
    for (size_t b = 0; b < g->n; b++) {
        const float *xb = g->x + b * g->cin * g->h * g->w;
        if (l.direct) {
            j.planes = xb;
        } else {
            for (size_t py = 0; py < g->sh; py++) {
                for (size_t px = 0; px < g->sw; px++) {
                    const int slot = l.slot[py * g->sw + px];
                    if (slot >= 0) fill_plane(g, &l, xb, py, px, planes + (size_t)slot * pf);
                }
            }
            j.planes = planes;
        }
        if (g->pool) {
            const size_t pooled_pix = g->pool->ho * g->pool->wo;
            j.out = band; /* the threads' scratch, thread_bytes() each */
            j.pooled = g->pool->out + b * g->cout * pooled_pix;
            j.bits = g->pool->bits ? g->pool->bits + b * pooled_pix * BF_WORDS_FOR(g->cout)
                                   : NULL;
            /* one band range a thread (each range recomputes the rows its predecessor's
             * band ends with), taken dynamically all the same */
            bf_parallel_for(threads, g->pool->ho, (size_t)threads, pool_bands, &j);
            continue;
        }
        j.out = g->out + b * g->cout * g->ho * g->wo;
        j.ldo = g->ho * g->wo;
        bf_parallel_for(threads, n_qb * j.n_cb, (size_t)threads * 4, run_range, &j);
    }
}
