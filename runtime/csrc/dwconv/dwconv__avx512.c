/* AVX-512 (F), 16 floats a vector (dwconv_vec.h). */
#include "dwconv.h"

#if BF_ARCH_X86
#include <immintrin.h>

#ifndef BF_DWCONV_TARGET /* tests/runtime/dwconv_avx512_emulated_harness.c sets its own */
#define BF_DWCONV_TARGET __attribute__((target("avx512f,avx2,fma")))
#endif
#define BF_DWCONV_INLINE static inline __attribute__((always_inline)) BF_DWCONV_TARGET
#define BF_DWCONV_NAME bf_dwconv_plane__avx512
#define VEC __m512
#define VLEN ((size_t)16)

BF_DWCONV_INLINE __mmask16 lanes(size_t n) { return (__mmask16)((1u << n) - 1u); } /* n <= 16 */
BF_DWCONV_INLINE __m512 vload(const float *p) { return _mm512_loadu_ps(p); }
BF_DWCONV_INLINE void vstore(float *p, __m512 v) { _mm512_storeu_ps(p, v); }
BF_DWCONV_INLINE __m512 vload_n(const float *p, size_t n) {
    return _mm512_maskz_loadu_ps(lanes(n), p);
}
BF_DWCONV_INLINE void vstore_n(float *p, __m512 v, size_t n) {
    _mm512_mask_storeu_ps(p, lanes(n), v);
}
BF_DWCONV_INLINE __m512 vfma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
BF_DWCONV_INLINE __m512 vset1(float f) { return _mm512_set1_ps(f); }
BF_DWCONV_INLINE __m512 vrelu(__m512 v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }

#include "dwconv_vec.h"
#endif
