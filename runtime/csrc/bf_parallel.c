/*
 * bf_parallel.c - see bf_parallel.h.
 *
 * A persistent pool: worker threads are started on first need and then wait on a
 * condition variable; a call publishes one job (a generation number), runs its first
 * share on the calling thread and waits until the workers' shares are done. One call
 * uses the pool at a time; a concurrent caller (another Python thread serving another
 * request) runs its whole range on its own thread instead of waiting. After fork() the
 * child starts with an empty pool (pthread_atfork).
 */
#include "bf_parallel.h"

#include <pthread.h>
#include <stdint.h>

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;  /* guards the fields below */
static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;  /* one call at a time */
static pthread_cond_t work_ready = PTHREAD_COND_INITIALIZER;
static pthread_cond_t work_done = PTHREAD_COND_INITIALIZER;
static int started;                /* workers running, indices 1..started */
static unsigned long generation;   /* incremented per published job */
static int pending;                /* workers of the current job not yet finished */
static bf_range_fn job_fn;
static void *job_ctx;
static size_t job_items;
static int job_threads;
static int atfork_registered;
static unsigned long first_generation[BF_MAX_THREADS]; /* a worker's generation at start */

static void reset_after_fork(void) {
    pthread_mutex_init(&pool_lock, NULL);
    pthread_mutex_init(&call_lock, NULL);
    pthread_cond_init(&work_ready, NULL);
    pthread_cond_init(&work_done, NULL);
    started = 0;
    generation = 0;
    pending = 0;
}

static void *worker_main(void *arg) {
    const int index = (int)(intptr_t)arg;
    pthread_mutex_lock(&pool_lock);
    /* the generation before the job that started this worker, so it takes that job */
    unsigned long seen = first_generation[index];
    for (;;) {
        while (generation == seen) pthread_cond_wait(&work_ready, &pool_lock);
        seen = generation;
        if (index >= job_threads) continue;
        const bf_range_fn fn = job_fn;
        void *ctx = job_ctx;
        const size_t n = job_items, t = (size_t)job_threads;
        pthread_mutex_unlock(&pool_lock);
        fn(ctx, n * (size_t)index / t, n * (size_t)(index + 1) / t, index);
        pthread_mutex_lock(&pool_lock);
        if (--pending == 0) pthread_cond_signal(&work_done);
    }
    return NULL;
}

/* Start workers up to `wanted` (pool_lock held); returns how many run. */
static int ensure_workers(int wanted) {
    if (!atfork_registered) {
        pthread_atfork(NULL, NULL, reset_after_fork);
        atfork_registered = 1;
    }
    while (started < wanted) {
        pthread_t id;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        first_generation[started + 1] = generation;
        const int failed =
            pthread_create(&id, &attr, worker_main, (void *)(intptr_t)(started + 1));
        pthread_attr_destroy(&attr);
        if (failed) break;
        started++;
    }
    return started;
}

void bf_parallel_for(int threads, size_t n_items, bf_range_fn fn, void *ctx) {
    if (n_items == 0) return;
    if (threads > BF_MAX_THREADS) threads = BF_MAX_THREADS;
    if (threads < 1 || (size_t)threads > n_items) threads = threads < 1 ? 1 : (int)n_items;
    if (threads == 1 || pthread_mutex_trylock(&call_lock) != 0) {
        fn(ctx, 0, n_items, 0);
        return;
    }
    pthread_mutex_lock(&pool_lock);
    const int workers = ensure_workers(threads - 1);
    if (workers < threads - 1) threads = workers + 1;
    job_fn = fn;
    job_ctx = ctx;
    job_items = n_items;
    job_threads = threads;
    pending = threads - 1;
    generation++;
    if (pending > 0) pthread_cond_broadcast(&work_ready);
    pthread_mutex_unlock(&pool_lock);

    fn(ctx, 0, n_items / (size_t)threads, 0);

    pthread_mutex_lock(&pool_lock);
    while (pending > 0) pthread_cond_wait(&work_done, &pool_lock);
    pthread_mutex_unlock(&pool_lock);
    pthread_mutex_unlock(&call_lock);
}
