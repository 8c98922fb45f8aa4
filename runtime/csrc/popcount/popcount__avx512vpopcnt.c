/* AVX-512 VPOPCNTDQ popcount: vpopcntq on 8 words at a time, masked tail. */
#include "popcount.h"

#if BF_ARCH_X86
#include <immintrin.h>

BF_TARGET_AVX512VPOPCNT int64_t bf_popcount__avx512vpopcnt(const bf_word *x, size_t n) {
    __m512i acc = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_loadu_si512(x + i)));
    }
    if (i < n) {
        const __mmask8 tail = (__mmask8)((1u << (n - i)) - 1u);
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_maskz_loadu_epi64(tail, x + i)));
    }
    return _mm512_reduce_add_epi64(acc);
}
#endif
