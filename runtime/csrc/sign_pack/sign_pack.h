/*
 * sign_pack.h - binarize float activations and pack them channels-last.
 *
 * x is float32 (n, c, s) (s = product of the spatial dims, 1 for (n, c)); out is
 * (n, s, cw) words, cw = ceil(c / 64). Element (n, ch, p) becomes a set bit (-1) iff
 * x < threshold[ch] (threshold NULL means 0); NaN packs as +1; padding bits are clear.
 */
#ifndef BF_SIGN_PACK_H
#define BF_SIGN_PACK_H

#include "../bf_common.h"

typedef void (*bf_sign_pack_fn)(const float *x, const float *threshold, bf_word *out, size_t n,
                                size_t c, size_t s);

void bf_sign_pack__scalar(const float *x, const float *threshold, bf_word *out, size_t n,
                          size_t c, size_t s);
#if BF_ARCH_X86
void bf_sign_pack__avx2(const float *x, const float *threshold, bf_word *out, size_t n, size_t c,
                        size_t s);
void bf_sign_pack__avx512(const float *x, const float *threshold, bf_word *out, size_t n,
                          size_t c, size_t s);
#endif

#endif
