/* popcount.h - number of set bits in n packed words; one kernel per ISA. */
#ifndef BF_POPCOUNT_H
#define BF_POPCOUNT_H

#include "../bf_common.h"

typedef int64_t (*bf_popcount_fn)(const bf_word *x, size_t n);

int64_t bf_popcount__scalar(const bf_word *x, size_t n);
#if BF_ARCH_X86
int64_t bf_popcount__avx2(const bf_word *x, size_t n);
int64_t bf_popcount__avx512vpopcnt(const bf_word *x, size_t n);
#endif
#if BF_ARCH_ARM64
int64_t bf_popcount__neon(const bf_word *x, size_t n);
#endif

#endif
