/*
 * sanitizer_selftest.c - compiled into the sanitizer build of runtime._native only (see
 * build_asan.py), never into the normal one. Each entry point makes one real kernel of
 * the runtime do something wrong, so a test can prove that the sanitizers watching the
 * fuzzer are armed: a run that reports nothing proves something only if this one dies.
 */
#include <stdlib.h>

#include "bf_common.h"
#include "bf_parallel.h"
#include "popcount/popcount.h"

/* 1: the scalar popcount kernel reads one word past a 3-word heap buffer (ASan). */
int64_t bf_selftest_heap_overflow(void) {
    bf_word *words = malloc(3 * sizeof(bf_word));
    if (!words) return -1;
    for (int i = 0; i < 3; i++) words[i] = (bf_word)i;
    volatile size_t n = 4;
    const int64_t total = bf_popcount__scalar(words, n);
    free(words);
    return total;
}

/* 2: a signed 32-bit accumulator overflows, as the binary conv's K - 2P would (UBSan). */
int32_t bf_selftest_signed_overflow(int32_t k) {
    volatile int32_t big = k;
    return big * 2;
}

/* 3: the runtime's thread pool runs a range function that adds to one plain counter from
 * every thread it uses (TSan: a data race). Called twice, so the pool's worker exists and
 * has woken by the second call. */
static void add_to_counter(void *ctx, size_t begin, size_t end, int thread_index) {
    (void)thread_index;
    volatile int64_t *total = ctx; /* one load and store per item: the loop is not folded */
    for (size_t i = begin; i < end; i++) *total += 1;
}

int64_t bf_selftest_data_race(void) {
    int64_t total = 0;
    for (int call = 0; call < 2; call++) bf_parallel_for(2, 1 << 20, 64, add_to_counter, &total);
    return total;
}
