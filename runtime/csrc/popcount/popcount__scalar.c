/* The specification: every SIMD popcount kernel must equal this one. */
#include "popcount.h"

int64_t bf_popcount__scalar(const bf_word *x, size_t n) {
    int64_t total = 0;
    for (size_t i = 0; i < n; i++) total += BF_POPCOUNT64(x[i]);
    return total;
}
