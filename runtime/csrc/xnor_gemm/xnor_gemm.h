/*
 * xnor_gemm.h - the XOR/popcount inner product of two sets of packed rows.
 *
 *   c[i * ldc + j] = sum_{k < kw} popcount(a[i * lda + k] ^ b[j * ldb + k])
 *
 * for i < m and j < n (the bconv driver passes output channels' packed weights as `a` and
 * im2col pixel rows as `b`). The caller turns that count P into the dot product of the
 * +/-1 vectors, K - 2 P (bf_common.h). `c` is overwritten. Every kernel accepts any m, n,
 * kw (including odd kw); tails shorter than a vector run as half steps, masked steps or
 * scalar popcounts. One kernel per ISA; the scalar one is the specification.
 */
#ifndef BF_XNOR_GEMM_H
#define BF_XNOR_GEMM_H

#include "../bf_common.h"

typedef void (*bf_xnor_gemm_fn)(size_t m, size_t n, size_t kw, const bf_word *a, size_t lda,
                                const bf_word *b, size_t ldb, int32_t *c, size_t ldc);

void bf_xnor_gemm_2x2__scalar(size_t m, size_t n, size_t kw, const bf_word *a, size_t lda,
                              const bf_word *b, size_t ldb, int32_t *c, size_t ldc);
#if BF_ARCH_X86
/* The scalar kernel compiled with the POPCNT instruction (every x86-64-v2 CPU has it). */
void bf_xnor_gemm_2x2__scalar_popcnt(size_t m, size_t n, size_t kw, const bf_word *a,
                                     size_t lda, const bf_word *b, size_t ldb, int32_t *c,
                                     size_t ldc);
void bf_xnor_gemm_2x5__avx2(size_t m, size_t n, size_t kw, const bf_word *a, size_t lda,
                            const bf_word *b, size_t ldb, int32_t *c, size_t ldc);
void bf_xnor_gemm_4x4__avx512vpopcnt(size_t m, size_t n, size_t kw, const bf_word *a,
                                     size_t lda, const bf_word *b, size_t ldb, int32_t *c,
                                     size_t ldc);
#endif
#if BF_ARCH_ARM64
void bf_xnor_gemm_2x4__neon(size_t m, size_t n, size_t kw, const bf_word *a, size_t lda,
                            const bf_word *b, size_t ldb, int32_t *c, size_t ldc);
#endif

#endif
