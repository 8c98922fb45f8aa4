/*
 * inner_loops.c - the XOR/popcount inner loop of a binary convolution in several forms,
 * timed on the same L1-resident data in one process (bench/inner_loops.py builds and
 * runs it). It answers "how far can this ISA's kernel go on this CPU?" with ratios to the
 * form the AVX2 kernel ships, not with a model of the core.
 *
 * Every form computes counts[p][ch] = sum_k popcount(a[p][k] ^ w[ch][k]) for NPIX pixels
 * of K 64-bit words against NCH channels, in the AVX2 kernel's tile (4 pixels x 2 groups
 * of 4 channels, K innermost, byte counters folded once per pixel tile: K <= 31), and is
 * checked against plain C before it is timed. The forms:
 *
 *   lookup         the shipped AVX2 kernel's loop: xor, then a nibble-table vpshufb
 *                  popcount per byte (8 vector ops per 256-bit product)
 *   split          lookup on operands split into low and high nibbles beforehand (6 ops;
 *                  the split copy of the activations is NOT timed: an upper bound)
 *   lookup+popcnt  lookup, plus 2 more channels per tile counted by scalar POPCNT on the
 *                  integer pipes while the vector pipes run
 *   split+popcnt   both
 *   popcnt         scalar POPCNT only (4 pixels x 2 channels)
 *   vpopcntq       AVX-512 VPOPCNTDQ (4 pixels x 2 groups of 8 channels), where the CPU
 *                  has it
 *
 * Output: one line per form, "name bits_per_second", bits = binary MACs.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define K 31    /* words per pixel: byte counters fold once (31 * 8 < 256) */
#define NPIX 64 /* pixels, 16 tiles of 4 */
#define NCH 64  /* vector channels, 8 pairs of 4-lane groups */
#define NSX 16  /* scalar channels of the hybrids, 2 per group pair */
#define NIB 0x0f0f0f0f0f0f0f0fULL
#define AVX2 __attribute__((target("avx2,popcnt"), noinline))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt"), noinline))

static uint64_t a[NPIX][K], a_split[NPIX][K][2];         /* activations, and as nibbles */
static uint64_t w[NCH / 4][K][4], w_split[NCH / 4][K][8]; /* 4-lane panel, and as nibbles */
static uint64_t w8[NCH / 8][K][8];                        /* 8-lane panel (AVX-512) */
static uint64_t ws[NSX][K];                               /* the hybrids' scalar channels */
static int64_t counts[NPIX][NCH], counts_sx[NPIX][NSX];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t next_random(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The 4 pixels' (rows r0..r3) scalar channels 2*gp and 2*gp + 1 (x0p, x1p) at word k. */
#define SCALAR_STEP(k)                                                                        \
    do {                                                                                      \
        const uint64_t x0 = x0p[k], x1 = x1p[k];                                              \
        s00 += (uint64_t)__builtin_popcountll(r0[k] ^ x0);                                    \
        s01 += (uint64_t)__builtin_popcountll(r0[k] ^ x1);                                    \
        s10 += (uint64_t)__builtin_popcountll(r1[k] ^ x0);                                    \
        s11 += (uint64_t)__builtin_popcountll(r1[k] ^ x1);                                    \
        s20 += (uint64_t)__builtin_popcountll(r2[k] ^ x0);                                    \
        s21 += (uint64_t)__builtin_popcountll(r2[k] ^ x1);                                    \
        s30 += (uint64_t)__builtin_popcountll(r3[k] ^ x0);                                    \
        s31 += (uint64_t)__builtin_popcountll(r3[k] ^ x1);                                    \
    } while (0)
#define SCALAR_STORE()                                                                        \
    do {                                                                                      \
        counts_sx[p][2 * gp] = (int64_t)s00, counts_sx[p][2 * gp + 1] = (int64_t)s01;         \
        counts_sx[p + 1][2 * gp] = (int64_t)s10, counts_sx[p + 1][2 * gp + 1] = (int64_t)s11; \
        counts_sx[p + 2][2 * gp] = (int64_t)s20, counts_sx[p + 2][2 * gp + 1] = (int64_t)s21; \
        counts_sx[p + 3][2 * gp] = (int64_t)s30, counts_sx[p + 3][2 * gp + 1] = (int64_t)s31; \
    } while (0)

/* One AVX2 form; SPLIT and HYBRID are compile-time constants, so each instance is
 * straight-line code with 8 ymm accumulators. */
static inline __attribute__((always_inline, target("avx2,popcnt"))) void
avx2_form(const int split, const int hybrid) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1,
                                           1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    for (int gp = 0; gp < NCH / 8; gp++)
        for (int p = 0; p < NPIX; p += 4) {
            __m256i acc[4][2];
            uint64_t s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
            const uint64_t *r0 = a[p], *r1 = a[p + 1], *r2 = a[p + 2], *r3 = a[p + 3];
            const uint64_t *x0p = ws[2 * gp], *x1p = ws[2 * gp + 1];
            for (int i = 0; i < 4; i++) acc[i][0] = acc[i][1] = zero;
            for (int k = 0; k < K; k++) {
                if (split) {
                    __m256i wl[2], wh[2];
                    for (int g = 0; g < 2; g++) {
                        wl[g] = _mm256_loadu_si256((const __m256i *)&w_split[2 * gp + g][k][0]);
                        wh[g] = _mm256_loadu_si256((const __m256i *)&w_split[2 * gp + g][k][4]);
                    }
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) {
                        const __m256i al = _mm256_set1_epi64x((long long)a_split[p + i][k][0]);
                        const __m256i ah = _mm256_set1_epi64x((long long)a_split[p + i][k][1]);
                        for (int g = 0; g < 2; g++) {
                            const __m256i lo =
                                _mm256_shuffle_epi8(table, _mm256_xor_si256(al, wl[g]));
                            const __m256i hi =
                                _mm256_shuffle_epi8(table, _mm256_xor_si256(ah, wh[g]));
                            acc[i][g] = _mm256_add_epi8(_mm256_add_epi8(acc[i][g], lo), hi);
                        }
                    }
                } else {
                    __m256i wv[2];
                    for (int g = 0; g < 2; g++)
                        wv[g] = _mm256_loadu_si256((const __m256i *)&w[2 * gp + g][k][0]);
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) {
                        const __m256i av = _mm256_set1_epi64x((long long)a[p + i][k]);
                        for (int g = 0; g < 2; g++) {
                            const __m256i x = _mm256_xor_si256(av, wv[g]);
                            const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(x, low));
                            const __m256i hi = _mm256_shuffle_epi8(
                                table, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
                            acc[i][g] = _mm256_add_epi8(acc[i][g], _mm256_add_epi8(lo, hi));
                        }
                    }
                }
                if (hybrid) SCALAR_STEP(k);
            }
            for (int i = 0; i < 4; i++)
                for (int g = 0; g < 2; g++) {
                    int64_t t[4];
                    _mm256_storeu_si256((__m256i *)t, _mm256_sad_epu8(acc[i][g], zero));
                    memcpy(&counts[p + i][(2 * gp + g) * 4], t, sizeof t);
                }
            if (hybrid) SCALAR_STORE();
        }
}

AVX2 static void form_lookup(void) { avx2_form(0, 0); }
AVX2 static void form_split(void) { avx2_form(1, 0); }
AVX2 static void form_lookup_popcnt(void) { avx2_form(0, 1); }
AVX2 static void form_split_popcnt(void) { avx2_form(1, 1); }

__attribute__((target("popcnt"), noinline)) static void form_popcnt(void) {
    for (int c = 0; c < NCH; c += 2)
        for (int p = 0; p < NPIX; p += 4) {
            uint64_t s[4][2] = {{0}};
            for (int k = 0; k < K; k++) {
                const uint64_t x0 = w[c / 4][k][c % 4], x1 = w[c / 4][k][c % 4 + 1];
                for (int i = 0; i < 4; i++) {
                    s[i][0] += (uint64_t)__builtin_popcountll(a[p + i][k] ^ x0);
                    s[i][1] += (uint64_t)__builtin_popcountll(a[p + i][k] ^ x1);
                }
            }
            for (int i = 0; i < 4; i++)
                counts[p + i][c] = (int64_t)s[i][0], counts[p + i][c + 1] = (int64_t)s[i][1];
        }
}

AVX512 static void form_vpopcntq(void) {
    for (int gp = 0; gp < NCH / 16; gp++)
        for (int p = 0; p < NPIX; p += 4) {
            __m512i acc[4][2];
            for (int i = 0; i < 4; i++) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
            for (int k = 0; k < K; k++) {
                const __m512i w0 = _mm512_loadu_si512(&w8[2 * gp][k][0]);
                const __m512i w1 = _mm512_loadu_si512(&w8[2 * gp + 1][k][0]);
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    const __m512i av = _mm512_set1_epi64((long long)a[p + i][k]);
                    acc[i][0] = _mm512_add_epi64(acc[i][0],
                                                 _mm512_popcnt_epi64(_mm512_xor_si512(av, w0)));
                    acc[i][1] = _mm512_add_epi64(acc[i][1],
                                                 _mm512_popcnt_epi64(_mm512_xor_si512(av, w1)));
                }
            }
            for (int i = 0; i < 4; i++)
                for (int g = 0; g < 2; g++)
                    _mm512_storeu_si512(&counts[p + i][(2 * gp + g) * 8], acc[i][g]);
        }
}

static int64_t reference(const uint64_t *row, const uint64_t *weights, size_t stride) {
    int64_t n = 0;
    for (int k = 0; k < K; k++) n += __builtin_popcountll(row[k] ^ weights[(size_t)k * stride]);
    return n;
}

/* 0 when the last form's counts (and, for hybrids, scalar counts) equal plain C. */
static int check(int hybrid) {
    for (int p = 0; p < NPIX; p++) {
        for (int c = 0; c < NCH; c++)
            if (counts[p][c] != reference(a[p], &w[c / 4][0][c % 4], 4)) return 1;
        if (hybrid)
            for (int c = 0; c < NSX; c++)
                if (counts_sx[p][c] != reference(a[p], ws[c], 1)) return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const double seconds = argc > 1 ? atof(argv[1]) : 0.3;
    uint64_t seed = 1;
    for (int p = 0; p < NPIX; p++)
        for (int k = 0; k < K; k++) {
            a[p][k] = next_random(&seed);
            a_split[p][k][0] = a[p][k] & NIB, a_split[p][k][1] = (a[p][k] >> 4) & NIB;
        }
    for (int c = 0; c < NCH; c++)
        for (int k = 0; k < K; k++) {
            const uint64_t v = next_random(&seed);
            w[c / 4][k][c % 4] = v, w8[c / 8][k][c % 8] = v;
            w_split[c / 4][k][c % 4] = v & NIB, w_split[c / 4][k][4 + c % 4] = (v >> 4) & NIB;
        }
    for (int c = 0; c < NSX; c++)
        for (int k = 0; k < K; k++) ws[c][k] = next_random(&seed);

    __builtin_cpu_init();
    struct {
        const char *name;
        void (*fn)(void);
        int hybrid, ok;
    } forms[] = {
        {"lookup", form_lookup, 0, __builtin_cpu_supports("avx2")},
        {"split", form_split, 0, __builtin_cpu_supports("avx2")},
        {"lookup+popcnt", form_lookup_popcnt, 1, __builtin_cpu_supports("avx2")},
        {"split+popcnt", form_split_popcnt, 1, __builtin_cpu_supports("avx2")},
        {"popcnt", form_popcnt, 0, __builtin_cpu_supports("popcnt")},
        {"vpopcntq", form_vpopcntq, 0,
         __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")},
    };
    const int n_forms = (int)(sizeof forms / sizeof forms[0]);
    double best[sizeof forms / sizeof forms[0]] = {0};
    for (int f = 0; f < n_forms; f++) {
        if (!forms[f].ok) continue;
        memset(counts, 0, sizeof counts), memset(counts_sx, 0, sizeof counts_sx);
        forms[f].fn();
        if (check(forms[f].hybrid)) {
            fprintf(stderr, "%s: counts differ from plain C\n", forms[f].name);
            return 1;
        }
    }
    /* rounds of every form in turn, so drift of the machine hits each alike; best of */
    const int rounds = 7;
    for (int r = 0; r < rounds; r++)
        for (int f = 0; f < n_forms; f++) {
            if (!forms[f].ok) continue;
            long calls = 0;
            const double t0 = now();
            double t = t0;
            while (t - t0 < seconds / rounds) {
                for (int i = 0; i < 20; i++) forms[f].fn();
                calls += 20;
                t = now();
            }
            const double bits =
                (double)NPIX * K * 64 * (NCH + (forms[f].hybrid ? NSX : 0)) * (double)calls;
            if (bits / (t - t0) > best[f]) best[f] = bits / (t - t0);
        }
    for (int f = 0; f < n_forms; f++)
        if (forms[f].ok) printf("%s %.6e\n", forms[f].name, best[f]);
    return 0;
}
