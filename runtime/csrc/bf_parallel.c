/* bf_parallel.c - see bf_parallel.h. */
#include "bf_parallel.h"

#include <pthread.h>

typedef struct {
    bf_range_fn fn;
    void *ctx;
    size_t begin, end;
    int index;
} bf_job;

static void *bf_run_job(void *arg) {
    bf_job *job = (bf_job *)arg;
    job->fn(job->ctx, job->begin, job->end, job->index);
    return NULL;
}

void bf_parallel_for(int threads, size_t n_items, bf_range_fn fn, void *ctx) {
    if (n_items == 0) return;
    if (threads < 1) threads = 1;
    if (threads > BF_MAX_THREADS) threads = BF_MAX_THREADS;
    if ((size_t)threads > n_items) threads = (int)n_items;
    if (threads == 1) {
        fn(ctx, 0, n_items, 0);
        return;
    }
    bf_job jobs[BF_MAX_THREADS];
    pthread_t ids[BF_MAX_THREADS];
    int started[BF_MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t].fn = fn;
        jobs[t].ctx = ctx;
        jobs[t].begin = n_items * (size_t)t / (size_t)threads;
        jobs[t].end = n_items * (size_t)(t + 1) / (size_t)threads;
        jobs[t].index = t;
        started[t] = 0;
    }
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&ids[t], NULL, bf_run_job, &jobs[t]) == 0;
    fn(ctx, jobs[0].begin, jobs[0].end, 0);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(ids[t], NULL);
        else /* could not start a thread: do its share here, with its own scratch index */
            fn(ctx, jobs[t].begin, jobs[t].end, t);
    }
}
