/* AVX2 + FMA, 8 floats a vector (dwconv_vec.h). */
#include "dwconv.h"

#if BF_ARCH_X86
#include <immintrin.h>

#define BF_DWCONV_TARGET __attribute__((target("avx2,fma")))
#define BF_DWCONV_INLINE static inline __attribute__((always_inline)) BF_DWCONV_TARGET
#define BF_DWCONV_NAME bf_dwconv_plane__avx2
#define VEC __m256
#define VLEN ((size_t)8)

BF_DWCONV_INLINE __m256i lanes(size_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
BF_DWCONV_INLINE __m256 vload(const float *p) { return _mm256_loadu_ps(p); }
BF_DWCONV_INLINE void vstore(float *p, __m256 v) { _mm256_storeu_ps(p, v); }
BF_DWCONV_INLINE __m256 vload_n(const float *p, size_t n) {
    return n == VLEN ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes(n));
}
BF_DWCONV_INLINE void vstore_n(float *p, __m256 v, size_t n) {
    if (n == VLEN)
        _mm256_storeu_ps(p, v);
    else
        _mm256_maskstore_ps(p, lanes(n), v);
}
BF_DWCONV_INLINE __m256 vfma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
BF_DWCONV_INLINE __m256 vset1(float f) { return _mm256_set1_ps(f); }
BF_DWCONV_INLINE __m256 vrelu(__m256 v) { return _mm256_max_ps(_mm256_setzero_ps(), v); }

#include "dwconv_vec.h"
#endif
