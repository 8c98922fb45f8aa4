/*
 * bf_parallel.h - fork-join over a persistent pool of POSIX threads: split [0, n_items) into
 * `threads` contiguous ranges, run the first on the calling thread and the others on
 * pool workers, and join. Callers choose `threads` from the work size so small
 * layers stay on one thread.
 */
#ifndef BF_PARALLEL_H
#define BF_PARALLEL_H

#include <stddef.h>

#define BF_MAX_THREADS 256

typedef void (*bf_range_fn)(void *ctx, size_t begin, size_t end, int thread_index);

/* Run fn over [0, n_items) on up to `threads` threads; falls back to fewer threads when
 * creating one fails (never fails itself). */
void bf_parallel_for(int threads, size_t n_items, bf_range_fn fn, void *ctx);

#endif
