/*
 * avx512_emulated_harness.c - runs an AVX-512 panel kernel's C code on any x86-64 CPU by
 * replacing the AVX-512 intrinsics it uses with plain C lane loops (the 128/256-bit ones
 * are the real SSE/AVX2 instructions), and compares it with the scalar panel kernel:
 * xnor_panel__avx512vpopcnt.c, or xnor_panel__avx512bw.c when built with -DEMU_BW.
 * This checks the kernel's logic (tiling, tails, padded lanes, segmented pixel rows, byte
 * count folds, both output layouts and their stores), not the compiler's instruction
 * selection: the real kernels run in test_kernels.py on CPUs with AVX-512 (VPOPCNTDQ).
 * Built by test_avx512_emulated.py; prints "ok <cases>".
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf_common.h"

/* the kernel is compiled for AVX2 here; its AVX-512 intrinsics are the functions below */
#undef BF_TARGET_AVX512
#define BF_TARGET_AVX512 BF_TARGET_AVX2
#undef BF_TARGET_AVX512VPOPCNT
#define BF_TARGET_AVX512VPOPCNT BF_TARGET_AVX2

typedef struct {
    uint64_t v[8];
} emu_m512i;

static inline emu_m512i emu_setzero(void) {
    emu_m512i r;
    memset(&r, 0, sizeof r);
    return r;
}
static inline emu_m512i emu_loadu(const void *p) {
    emu_m512i r;
    memcpy(r.v, p, sizeof r.v);
    return r;
}
static inline emu_m512i emu_set1(long long x) {
    emu_m512i r;
    for (int i = 0; i < 8; i++) r.v[i] = (uint64_t)x;
    return r;
}
static inline emu_m512i emu_add(emu_m512i a, emu_m512i b) {
    for (int i = 0; i < 8; i++) a.v[i] += b.v[i];
    return a;
}
static inline emu_m512i emu_xor(emu_m512i a, emu_m512i b) {
    for (int i = 0; i < 8; i++) a.v[i] ^= b.v[i];
    return a;
}
static inline emu_m512i emu_popcnt(emu_m512i a) {
    for (int i = 0; i < 8; i++) a.v[i] = (uint64_t)__builtin_popcountll(a.v[i]);
    return a;
}
/* byte lanes, for the BW kernel's nibble counts */
static inline emu_m512i emu_set1_epi8(char x) {
    emu_m512i r;
    memset(r.v, (unsigned char)x, sizeof r.v);
    return r;
}
static inline BF_TARGET_AVX2 emu_m512i emu_broadcast_i32x4(__m128i a) {
    emu_m512i r;
    for (int i = 0; i < 4; i++) _mm_storeu_si128((__m128i *)(r.v + 2 * i), a);
    return r;
}
static inline emu_m512i emu_srli_epi64(emu_m512i a, unsigned n) {
    for (int i = 0; i < 8; i++) a.v[i] = n < 64 ? a.v[i] >> n : 0;
    return a;
}
/* bit i of the result = bit (a_i << 2 | b_i << 1 | c_i) of imm */
static inline emu_m512i emu_ternarylogic(emu_m512i a, emu_m512i b, emu_m512i c, int imm) {
    emu_m512i r;
    for (int i = 0; i < 8; i++) {
        r.v[i] = 0;
        for (int bit = 0; bit < 64; bit++) {
            const unsigned sel = (unsigned)((a.v[i] >> bit & 1) << 2 | (b.v[i] >> bit & 1) << 1 |
                                            (c.v[i] >> bit & 1));
            r.v[i] |= (uint64_t)((unsigned)imm >> sel & 1) << bit;
        }
    }
    return r;
}
/* per 128-bit lane: byte j = table byte (idx_j & 15), or 0 when idx_j has bit 7 set */
static inline emu_m512i emu_shuffle_epi8(emu_m512i table, emu_m512i idx) {
    unsigned char t[64], x[64], r[64];
    memcpy(t, table.v, 64);
    memcpy(x, idx.v, 64);
    for (int j = 0; j < 64; j++) r[j] = (x[j] & 0x80) ? 0 : t[(j & ~15) + (x[j] & 15)];
    emu_m512i out;
    memcpy(out.v, r, 64);
    return out;
}
static inline emu_m512i emu_add_epi8(emu_m512i a, emu_m512i b) {
    unsigned char x[64], y[64];
    memcpy(x, a.v, 64);
    memcpy(y, b.v, 64);
    for (int j = 0; j < 64; j++) x[j] = (unsigned char)(x[j] + y[j]);
    memcpy(a.v, x, 64);
    return a;
}
/* per 64-bit lane: the sum of |a_j - b_j| over its 8 bytes */
static inline emu_m512i emu_sad_epu8(emu_m512i a, emu_m512i b) {
    unsigned char x[64], y[64];
    memcpy(x, a.v, 64);
    memcpy(y, b.v, 64);
    emu_m512i r;
    for (int i = 0; i < 8; i++) {
        r.v[i] = 0;
        for (int j = 0; j < 8; j++) r.v[i] += (uint64_t)abs(x[8 * i + j] - y[8 * i + j]);
    }
    return r;
}
/* 32-bit views of the 512-bit type for the stores of the counts */
static inline emu_m512i emu_from32(const int32_t *t) {
    emu_m512i r;
    memcpy(r.v, t, sizeof r.v);
    return r;
}
static inline emu_m512i emu_setr_epi32(int e0, int e1, int e2, int e3, int e4, int e5, int e6,
                                       int e7, int e8, int e9, int e10, int e11, int e12,
                                       int e13, int e14, int e15) {
    const int32_t t[16] = {e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, e15};
    return emu_from32(t);
}
static inline emu_m512i emu_set1_epi32(int x) {
    int32_t t[16];
    for (int i = 0; i < 16; i++) t[i] = x;
    return emu_from32(t);
}
static inline emu_m512i emu_add_epi32(emu_m512i a, emu_m512i b) {
    int32_t x[16], y[16];
    memcpy(x, a.v, sizeof x);
    memcpy(y, b.v, sizeof y);
    for (int i = 0; i < 16; i++) x[i] = (int32_t)((uint32_t)x[i] + (uint32_t)y[i]);
    return emu_from32(x);
}
static inline emu_m512i emu_permutex2var_epi32(emu_m512i a, emu_m512i idx, emu_m512i b) {
    int32_t x[16], y[16], ix[16], r[16];
    memcpy(x, a.v, sizeof x);
    memcpy(y, b.v, sizeof y);
    memcpy(ix, idx.v, sizeof ix);
    for (int i = 0; i < 16; i++) r[i] = (ix[i] & 16) ? y[ix[i] & 15] : x[ix[i] & 15];
    return emu_from32(r);
}
static inline BF_TARGET_AVX2 __m128i emu_extracti32x4(emu_m512i a, int quarter) {
    return _mm_loadu_si128((const __m128i *)(a.v + 2 * (quarter & 3)));
}
static inline BF_TARGET_AVX2 __m256i emu_castsi512_si256(emu_m512i a) {
    return _mm256_loadu_si256((const __m256i *)a.v);
}
static inline BF_TARGET_AVX2 __m128i emu_castsi512_si128(emu_m512i a) {
    return _mm_loadu_si128((const __m128i *)a.v);
}
static inline void emu_storeu(void *p, emu_m512i a) { memcpy(p, a.v, sizeof a.v); }
/* 8 int32 sign-extended to 64-bit lanes */
static inline BF_TARGET_AVX2 emu_m512i emu_cvtepi32_epi64(__m256i a) {
    int32_t t[8];
    _mm256_storeu_si256((__m256i *)t, a);
    emu_m512i r;
    for (int i = 0; i < 8; i++) r.v[i] = (uint64_t)(int64_t)t[i];
    return r;
}
/* the 32-bit lanes of a selected by mask to p (128-bit form) */
static inline BF_TARGET_AVX2 void emu_mask_storeu_epi32_128(void *p, unsigned mask, __m128i a) {
    int32_t t[4];
    _mm_storeu_si128((__m128i *)t, a);
    for (int i = 0; i < 4; i++)
        if (mask >> i & 1) memcpy((char *)p + 4 * i, &t[i], 4);
}

#undef __m512i
#define __m512i emu_m512i
#undef _mm512_setzero_si512
#define _mm512_setzero_si512 emu_setzero
#undef _mm512_loadu_si512
#define _mm512_loadu_si512 emu_loadu
#undef _mm512_set1_epi64
#define _mm512_set1_epi64 emu_set1
#undef _mm512_add_epi64
#define _mm512_add_epi64 emu_add
#undef _mm512_xor_si512
#define _mm512_xor_si512 emu_xor
#undef _mm512_popcnt_epi64
#define _mm512_popcnt_epi64 emu_popcnt
#undef _mm512_castsi512_si256
#define _mm512_castsi512_si256 emu_castsi512_si256
#undef _mm512_storeu_si512
#define _mm512_storeu_si512 emu_storeu
#undef _mm512_setr_epi32
#define _mm512_setr_epi32 emu_setr_epi32
#undef _mm512_set1_epi32
#define _mm512_set1_epi32 emu_set1_epi32
#undef _mm512_add_epi32
#define _mm512_add_epi32 emu_add_epi32
#undef _mm512_permutex2var_epi32
#define _mm512_permutex2var_epi32 emu_permutex2var_epi32
#undef _mm512_extracti32x4_epi32
#define _mm512_extracti32x4_epi32 emu_extracti32x4
#undef _mm512_castsi512_si128
#define _mm512_castsi512_si128 emu_castsi512_si128
#undef _mm_mask_storeu_epi32
#define _mm_mask_storeu_epi32 emu_mask_storeu_epi32_128
#undef _mm512_cvtepi32_epi64
#define _mm512_cvtepi32_epi64 emu_cvtepi32_epi64

#undef _mm512_set1_epi8
#define _mm512_set1_epi8 emu_set1_epi8
#undef _mm512_broadcast_i32x4
#define _mm512_broadcast_i32x4 emu_broadcast_i32x4
#undef _mm512_srli_epi64
#define _mm512_srli_epi64 emu_srli_epi64
#undef _mm512_ternarylogic_epi64
#define _mm512_ternarylogic_epi64 emu_ternarylogic
#undef _mm512_shuffle_epi8
#define _mm512_shuffle_epi8 emu_shuffle_epi8
#undef _mm512_add_epi8
#define _mm512_add_epi8 emu_add_epi8
#undef _mm512_sad_epu8
#define _mm512_sad_epu8 emu_sad_epu8

#ifdef EMU_BW
#include "xnor_panel/xnor_panel__avx512bw.c"
#define KERNEL bf_xnor_panel__avx512bw
#else
#include "xnor_panel/xnor_panel__avx512vpopcnt.c"
#define KERNEL bf_xnor_panel__avx512vpopcnt
#endif

static uint64_t state = 0x9E3779B97F4A7C15ULL;

static uint64_t next_word(void) { /* xorshift64* */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
}

/* The kernels on pixel rows of kw words read as n_seg segments (segment s of pixel p at
 * word p * lda + s * seg_stride), into counts with strides (c_ch, c_pix); with_add: add
 * rows (negative values too) for all pixels but every third. */
static int compare(size_t np_, size_t nc, size_t kw, size_t n_seg, int pixel_major,
                   int saturate, int with_add) {
    const size_t seg_len = kw / n_seg, seg_stride = seg_len + 3, lda = n_seg * seg_stride + 1;
    const size_t ldw = kw + 2;
    bf_word *a = malloc(np_ * lda * sizeof(bf_word));
    bf_word *w = malloc(nc * ldw * sizeof(bf_word));
    const bf_word **rows = malloc(np_ * n_seg * sizeof(*rows));
    int32_t *c0 = malloc(np_ * nc * sizeof(int32_t));
    int32_t *c1 = malloc(np_ * nc * sizeof(int32_t));
    const size_t ld_add = (nc + 7) / 8 * 8;
    int32_t *add_rows = malloc(np_ * ld_add * sizeof(int32_t));
    const int32_t **add = malloc(np_ * sizeof(*add));
    const size_t b0 = bf_xnor_panel_words(BF_PANEL_LANES_SCALAR, nc, kw) * 8 + 64;
    const size_t b1 = bf_xnor_panel_words(BF_PANEL_LANES_AVX512, nc, kw) * 8 + 64;
    bf_word *p0 = aligned_alloc(64, (b0 + 63) / 64 * 64);
    bf_word *p1 = aligned_alloc(64, (b1 + 63) / 64 * 64);
    if (!a || !w || !rows || !c0 || !c1 || !p0 || !p1 || !add_rows || !add) return 2;
    for (size_t p = 0; p < np_; p++) {
        for (size_t l = 0; l < ld_add; l++)
            add_rows[p * ld_add + l] = (int32_t)(next_word() % 4001) - 2000;
        add[p] = p % 3 == 2 ? NULL : add_rows + p * ld_add;
    }
    for (size_t i = 0; i < np_ * lda; i++) a[i] = saturate ? ~(bf_word)0 : next_word();
    for (size_t i = 0; i < nc * ldw; i++) w[i] = saturate ? 0 : next_word();
    for (size_t p = 0; p < np_; p++)
        for (size_t s = 0; s < n_seg; s++) rows[p * n_seg + s] = a + p * lda + s * seg_stride;
    for (size_t i = 0; i < np_ * nc; i++) c0[i] = c1[i] = INT32_MIN; /* never a result */
    const size_t c_ch = pixel_major ? 1 : np_, c_pix = pixel_major ? nc : 1;
    bf_xnor_panel_pack(BF_PANEL_LANES_SCALAR, nc, kw, w, ldw, p0);
    bf_xnor_panel__scalar(np_, nc, rows, n_seg, seg_len, p0, kw, with_add ? add : NULL, c0,
                          c_ch, c_pix);
    bf_xnor_panel_pack(BF_PANEL_LANES_AVX512, nc, kw, w, ldw, p1);
    KERNEL(np_, nc, rows, n_seg, seg_len, p1, kw, with_add ? add : NULL, c1, c_ch, c_pix);
    int bad = 0;
    for (size_t i = 0; i < np_ * nc && !bad; i++)
        if (c0[i] != c1[i] || c0[i] == INT32_MIN || (!with_add && c0[i] < 0)) {
            printf("mismatch pixels=%zu channels=%zu kw=%zu n_seg=%zu pixel_major=%d add=%d "
                   "at %zu: %d vs %d\n",
                   np_, nc, kw, n_seg, pixel_major, with_add, i, c0[i], c1[i]);
            bad = 1;
        }
    free(a);
    free(w);
    free(rows);
    free(c0);
    free(c1);
    free(add_rows);
    free(add);
    free(p0);
    free(p1);
    return bad;
}

int main(void) {
    static const size_t pixels[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 49};
    static const size_t channels[] = {1, 3, 7, 8, 9, 16, 24, 31, 32, 33, 40, 63, 64, 65};
    static const size_t kws[] = {1, 2, 3, 5, 9, 18, 31, 32, 33, 72, 100};
    const size_t np_n = sizeof pixels / sizeof *pixels, nc_n = sizeof channels / sizeof *channels;
    const size_t nk = sizeof kws / sizeof *kws;
    long cases = 0;
    for (size_t pi = 0; pi < np_n; pi++)
        for (size_t ci = 0; ci < nc_n; ci++)
            for (size_t ki = 0; ki < nk; ki++)
                for (int pixel_major = 0; pixel_major < 2; pixel_major++) {
                    const size_t kw = kws[ki], n_seg = kw % 3 == 0 ? 3 : 1;
                    const int saturate = (pi + ci + ki) % 5 == 0; /* every bit differs */
                    const int with_add = (pi + ci + ki + (size_t)pixel_major) % 2 == 0;
                    const int r = compare(pixels[pi], channels[ci], kw, n_seg, pixel_major,
                                          saturate, with_add);
                    if (r) return r;
                    cases++;
                }
    printf("ok %ld\n", cases);
    return 0;
}
