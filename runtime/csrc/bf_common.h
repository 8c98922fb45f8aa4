/*
 * bf_common.h - the bit conventions of bitfactor's packed tensors (the contract with
 * docs/format.md) and the portability macros every kernel file uses.
 *
 * Conventions:
 *   - word type:   bf_word = uint64_t, stored little-endian.
 *   - bit order:   channel c of a packed vector lives in word c / 64, bit c % 64
 *                  (bit 0 = least significant).
 *   - bit meaning: a set bit (1) means -1, a clear bit (0) means +1 (the sign bit of an
 *                  IEEE float: pack(x) = signbit(x) after thresholding).
 *   - padding:     channels are padded up to a multiple of 64 with clear bits (+1) in
 *                  BOTH operands, so padded positions xor to 0 and add nothing.
 *   - dot product: for K real channels, sum_i a_i * b_i = K - 2 * popcount(a ^ b).
 *
 * Buffers handed to kernels are allocated with BF_ALIGN alignment and padded so that a
 * kernel may read whole vectors past the logical end (see BF_OVERREAD_BYTES).
 */
#ifndef BF_COMMON_H
#define BF_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef uint64_t bf_word;

#define BF_WORD_BITS 64
#define BF_ALIGN 64
#define BF_OVERREAD_BYTES 64

#define BF_WORDS_FOR(bits) (((bits) + BF_WORD_BITS - 1) / BF_WORD_BITS)

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define BF_ARCH_X86 1
#else
#define BF_ARCH_X86 0
#endif

#if defined(__aarch64__)
#define BF_ARCH_ARM64 1
#else
#define BF_ARCH_ARM64 0
#endif

/* Per-function ISA targets: one build runs on any x86-64, the dispatcher picks. */
#if BF_ARCH_X86 && (defined(__GNUC__) || defined(__clang__))
#define BF_TARGET_AVX2 __attribute__((target("avx2,popcnt,bmi2")))
/* AVX-512 F/BW/VL: every AVX-512 kernel; VPOPCNTDQ only where its name says so */
#define BF_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,popcnt,avx2,bmi2")))
#define BF_TARGET_AVX512VPOPCNT \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt,avx2,bmi2")))
#define BF_TARGET_POPCNT __attribute__((target("popcnt")))
#else
#define BF_TARGET_AVX2
#define BF_TARGET_AVX512
#define BF_TARGET_AVX512VPOPCNT
#define BF_TARGET_POPCNT
#endif

/* GCC function multi-versioning: plain C loops compiled once per listed target, the best
 * chosen at load time by the CPU (libgcc checks the OS-saved state). The loader runs the
 * clones' resolvers while it relocates the library, before ThreadSanitizer's runtime can
 * run instrumented code, so a -fsanitize=thread build keeps the default clone only. */
#if BF_ARCH_X86 && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define BF_CLONES(...) __attribute__((target_clones(__VA_ARGS__)))
#else
#define BF_CLONES(...)
#endif

#if defined(__GNUC__) || defined(__clang__)
#define BF_POPCOUNT64(x) ((int64_t)__builtin_popcountll((unsigned long long)(x)))
#define BF_RESTRICT __restrict__
#else
#error "bitfactor's runtime needs GCC or Clang"
#endif

#endif /* BF_COMMON_H */
