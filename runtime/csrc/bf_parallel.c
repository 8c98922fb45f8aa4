/*
 * bf_parallel.c - see bf_parallel.h.
 *
 * A persistent pool: worker threads are started on first need. A call publishes one job
 * (a new generation number) and takes its ranges one at a time, as do the workers that
 * join it; once none is left it closes the job to late workers and waits for those that
 * joined. Between jobs a worker spins on the generation number for BITFACTOR_SPIN_US
 * microseconds (default 200) before it sleeps on a condition variable: a sleeping thread
 * takes tens of microseconds to wake (more in a VM), as long as a whole small layer, and
 * the layers of a network come one after another. The caller likewise spins before it
 * sleeps while the workers finish. One call uses the pool at a time; a concurrent caller
 * (another Python thread serving another request) runs its whole range on its own thread
 * instead of waiting. After fork() the child starts with an empty pool (pthread_atfork).
 */
#define _POSIX_C_SOURCE 200809L
#include "bf_parallel.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BF_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define BF_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define BF_CPU_RELAX() ((void)0)
#endif

#define BF_SPIN_US_DEFAULT 200
#define BF_SPIN_US_MAX 100000

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;  /* guards the fields below */
static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;  /* one call at a time */
static pthread_cond_t work_ready = PTHREAD_COND_INITIALIZER;
static pthread_cond_t work_done = PTHREAD_COND_INITIALIZER;
static int started;                    /* workers running, indices 1..started */
static atomic_ulong generation;        /* incremented per published job (under pool_lock) */
static int sleepers;                   /* workers waiting on work_ready */
static int caller_sleeping;            /* the caller waits on work_done */
static int closed = 1;                 /* the job takes no more workers */
static atomic_int active;              /* workers in the job (joined before it closed) */
static atomic_size_t next_part;        /* the job's next range to take */
static bf_range_fn job_fn;             /* the job: written under pool_lock */
static void *job_ctx;
static size_t job_items, job_parts;
static int job_threads;
static int atfork_registered;
static int64_t spin_ns = -1;           /* from BITFACTOR_SPIN_US, read once */
static unsigned long first_generation[BF_MAX_THREADS]; /* a worker's generation at start */

static void reset_after_fork(void) {
    pthread_mutex_init(&pool_lock, NULL);
    pthread_mutex_init(&call_lock, NULL);
    pthread_cond_init(&work_ready, NULL);
    pthread_cond_init(&work_done, NULL);
    started = 0;
    atomic_store(&generation, 0);
    atomic_store(&active, 0);
    sleepers = 0;
    caller_sleeping = 0;
    closed = 1;
    spin_ns = -1; /* read BITFACTOR_SPIN_US again: the child may have set it */
}

static int64_t read_spin_ns(void) {
    const char *text = getenv("BITFACTOR_SPIN_US");
    long us = BF_SPIN_US_DEFAULT;
    if (text && *text) {
        char *end;
        const long v = strtol(text, &end, 10);
        if (*end == '\0' && v >= 0) us = v > BF_SPIN_US_MAX ? BF_SPIN_US_MAX : v;
    }
    return (int64_t)us * 1000;
}

static int64_t now_ns(void) { /* 64-bit on every target (a 32-bit long overflows) */
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Spin until done(arg) or spin_ns has passed; returns done(arg). Past the first
 * BF_SPIN_YIELD_NS it yields the core between checks: when the thread it waits for shares
 * this core (the scheduler put both there, the other core being busy), pausing alone would
 * hold the core until the spin ends, twice a call (seen here: 0.44 ms calls of a 0.03 ms
 * layer). */
#define BF_SPIN_YIELD_NS 20000
static int spin_until(int (*done)(const void *), const void *arg) {
    if (done(arg)) return 1;
    if (spin_ns <= 0) return 0;
    const int64_t start = now_ns();
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (done(arg)) return 1;
            BF_CPU_RELAX();
        }
        const int64_t waited = now_ns() - start;
        if (waited >= spin_ns) return done(arg);
        if (waited >= BF_SPIN_YIELD_NS) sched_yield();
    }
}

static int generation_moved(const void *seen) {
    return atomic_load_explicit(&generation, memory_order_acquire) !=
           *(const unsigned long *)seen;
}

static int workers_done(const void *unused) {
    (void)unused;
    return atomic_load_explicit(&active, memory_order_acquire) == 0;
}

/* Take the job's ranges one at a time until none is left. */
static void take_parts(bf_range_fn fn, void *ctx, size_t items, size_t parts, int index) {
    for (;;) {
        const size_t p = atomic_fetch_add_explicit(&next_part, 1, memory_order_relaxed);
        if (p >= parts) return;
        fn(ctx, items * p / parts, items * (p + 1) / parts, index);
    }
}

static void *worker_main(void *arg) {
    const int index = (int)(intptr_t)arg;
    /* the generation before the job that started this worker, so it takes that job */
    unsigned long seen = first_generation[index];
    for (;;) {
        if (!spin_until(generation_moved, &seen)) {
            pthread_mutex_lock(&pool_lock);
            sleepers++;
            while (atomic_load(&generation) == seen) pthread_cond_wait(&work_ready, &pool_lock);
            sleepers--;
            pthread_mutex_unlock(&pool_lock);
        }
        /* join the job unless it is closed (its caller has taken the last range and waits
         * only for the workers that joined), reading it under the lock it is written under */
        pthread_mutex_lock(&pool_lock);
        seen = atomic_load(&generation);
        if (closed || index >= job_threads) {
            pthread_mutex_unlock(&pool_lock);
            continue;
        }
        const bf_range_fn fn = job_fn;
        void *ctx = job_ctx;
        const size_t items = job_items, parts = job_parts;
        atomic_fetch_add_explicit(&active, 1, memory_order_relaxed);
        pthread_mutex_unlock(&pool_lock);
        take_parts(fn, ctx, items, parts, index);
        if (atomic_fetch_sub_explicit(&active, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool_lock);
            if (caller_sleeping) pthread_cond_signal(&work_done);
            pthread_mutex_unlock(&pool_lock);
        }
    }
    return NULL;
}

/* Start workers up to `wanted` (pool_lock held); returns how many run. */
static int ensure_workers(int wanted) {
    if (!atfork_registered) {
        pthread_atfork(NULL, NULL, reset_after_fork);
        atfork_registered = 1;
    }
    if (spin_ns < 0) spin_ns = read_spin_ns();
    while (started < wanted) {
        pthread_t id;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        first_generation[started + 1] = atomic_load(&generation);
        const int failed =
            pthread_create(&id, &attr, worker_main, (void *)(intptr_t)(started + 1));
        pthread_attr_destroy(&attr);
        if (failed) break;
        started++;
    }
    return started;
}

void bf_parallel_for(int threads, size_t n_items, size_t parts, bf_range_fn fn, void *ctx) {
    if (n_items == 0) return;
    if (threads > BF_MAX_THREADS) threads = BF_MAX_THREADS;
    if (threads < 1 || (size_t)threads > n_items) threads = threads < 1 ? 1 : (int)n_items;
    if (threads == 1 || pthread_mutex_trylock(&call_lock) != 0) {
        fn(ctx, 0, n_items, 0);
        return;
    }
    if (parts < (size_t)threads) parts = (size_t)threads;
    if (parts > n_items) parts = n_items;
    pthread_mutex_lock(&pool_lock);
    const int workers = ensure_workers(threads - 1);
    if (workers < threads - 1) threads = workers + 1;
    job_fn = fn;
    job_ctx = ctx;
    job_items = n_items;
    job_parts = parts;
    job_threads = threads;
    closed = 0;
    atomic_store_explicit(&next_part, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);
    if (sleepers > 0) pthread_cond_broadcast(&work_ready);
    pthread_mutex_unlock(&pool_lock);

    take_parts(fn, ctx, n_items, parts, 0);

    pthread_mutex_lock(&pool_lock);
    closed = 1;
    pthread_mutex_unlock(&pool_lock);
    if (!spin_until(workers_done, NULL)) {
        pthread_mutex_lock(&pool_lock);
        caller_sleeping = 1;
        while (atomic_load(&active) > 0) pthread_cond_wait(&work_done, &pool_lock);
        caller_sleeping = 0;
        pthread_mutex_unlock(&pool_lock);
    }
    pthread_mutex_unlock(&call_lock);
}
