/* AVX2 popcount: per-nibble table lookup (vpshufb) summed with vpsadbw, scalar tail. */
#include "popcount.h"

#if BF_ARCH_X86
#include <immintrin.h>

BF_TARGET_AVX2 int64_t bf_popcount__avx2(const bf_word *x, size_t n) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i acc = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(x + i));
        const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
        const __m256i hi =
            _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
        acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_add_epi8(lo, hi),
                                                    _mm256_setzero_si256()));
    }
    int64_t total = _mm256_extract_epi64(acc, 0) + _mm256_extract_epi64(acc, 1) +
                    _mm256_extract_epi64(acc, 2) + _mm256_extract_epi64(acc, 3);
    for (; i < n; i++) total += BF_POPCOUNT64(x[i]);
    return total;
}
#endif
