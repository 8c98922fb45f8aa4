/*
 * bf_parallel.h - fork-join over a persistent pool of POSIX threads: split [0, n_items)
 * into `parts` contiguous ranges, which the calling thread and up to threads - 1 pool
 * workers take one at a time until none is left, and join. A worker that wakes late
 * finds the ranges taken, so a call never waits for a thread that is not running (the
 * caller does the work alone at worst). Callers choose `threads` from the work size so
 * small layers stay on one thread.
 */
#ifndef BF_PARALLEL_H
#define BF_PARALLEL_H

#include <stddef.h>

#define BF_MAX_THREADS 256

/* fn(ctx, begin, end, thread_index): one range; thread_index < threads is the same for
 * every range a thread takes in one call (its scratch), 0 for the calling thread. */
typedef void (*bf_range_fn)(void *ctx, size_t begin, size_t end, int thread_index);

/* Run fn over [0, n_items) in `parts` ranges (at least one per thread; more balance
 * uneven threads, each range costing the caller's per-range setup) on up to `threads`
 * threads; falls back to fewer threads when creating one fails (never fails itself). */
void bf_parallel_for(int threads, size_t n_items, size_t parts, bf_range_fn fn, void *ctx);

#endif
