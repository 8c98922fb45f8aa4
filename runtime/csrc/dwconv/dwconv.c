/* dwconv.c - see dwconv.h. ISA-independent: the plane kernel comes in through args->plane. */
#include "dwconv.h"

#include "../bf_parallel.h"
#include "dwconv_plane.h"

/* Multiply-adds that justify one more pool thread (~40 us of one core). */
#define BF_DWCONV_WORK_PER_THREAD ((size_t)1 << 19)

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

size_t bf_dwconv_phase_floats(const bf_dwconv_args *g) {
    return g->sw * (g->h + 2 * g->ph) * ((g->w + 2 * g->pw + g->sw - 1) / g->sw);
}

static size_t phase_bytes(const bf_dwconv_args *g) {
    return round_up(bf_dwconv_phase_floats(g) * sizeof(float) + BF_OVERREAD_BYTES, BF_ALIGN);
}

/* A thread's phase planes, then its tap offsets and a padded input row (after them). */
static size_t thread_bytes(const bf_dwconv_args *g) {
    const size_t line = (g->w + 2 * g->pw + g->sw - 1) / g->sw * g->sw;
    return phase_bytes(g) + round_up(g->kh * g->kw * sizeof(size_t) + line * sizeof(float), BF_ALIGN);
}

/* The pool never runs more than BF_MAX_THREADS (bf_parallel.h); the geometry's check keeps
 * a thread's bytes below 2^34, so this product cannot wrap. */
static size_t clamp_threads(int threads) {
    return threads < 1 ? 1 : threads > BF_MAX_THREADS ? BF_MAX_THREADS : (size_t)threads;
}

size_t bf_dwconv_scratch_bytes(const bf_dwconv_args *g, int threads) {
    return clamp_threads(threads) * thread_bytes(g) + BF_ALIGN;
}

int bf_dwconv_threads(const bf_dwconv_args *g, int threads) {
    const size_t planes = g->n * g->cin;
    const size_t work = planes * g->mult * g->ho * g->wo * g->kh * g->kw;
    size_t useful = work / BF_DWCONV_WORK_PER_THREAD;
    if (useful > planes) useful = planes;
    if (useful < 1) useful = 1;
    if (threads < 1) threads = 1;
    return threads < (int)useful ? threads : (int)useful;
}

static void run_range(void *ctx, size_t begin, size_t end, int thread_index) {
    const bf_dwconv_args *g = ctx;
    char *mine = (char *)round_up((size_t)g->scratch, BF_ALIGN) +
                 (size_t)thread_index * thread_bytes(g);
    float *phases = (float *)(void *)mine;
    size_t *off = (size_t *)(void *)(mine + phase_bytes(g));
    float *line = (float *)(void *)(off + g->kh * g->kw);
    tap_offsets(g, off);
    for (size_t p = begin; p < end; p++) g->plane(g, p, phases, line, off);
}

void bf_dwconv(const bf_dwconv_args *g, int threads) {
    const size_t planes = g->n * g->cin, t = clamp_threads(threads);
    /* ranges taken, not assigned: 4 a thread, so a late or slower thread takes fewer */
    bf_parallel_for((int)t, planes, t > 1 ? 4 * t : 1, run_range, (void *)g);
}
