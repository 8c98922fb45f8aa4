/*
 * gelu.h - the error function and the exact GELU of float32 values, element by element
 * (numpy has no erf): C's erff, within 2 ulp in glibc. One plain C file for
 * every ISA: the libm calls do not vectorize, and the op is a small part of a network.
 */
#ifndef BF_GELU_H
#define BF_GELU_H

#include <stddef.h>

/* out[i] = erf(x[i]); out may be x. */
void bf_erf(const float *x, float *out, size_t n);

/* out[i] = x/2 (1 + erf(x / sqrt 2)), in float32 in torch's order: below about -5.4 it is
 * -0.0, as torch's, where x/2 erfc(-x / sqrt 2) would give a tiny negative number whose
 * sign a binary layer after it would read differently from training. out may be x. */
void bf_gelu_erf(const float *x, float *out, size_t n);

#endif
