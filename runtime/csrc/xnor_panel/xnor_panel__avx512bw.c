/*
 * AVX-512 BW panel product (xnor_panel.h) for CPUs without VPOPCNTDQ (Skylake-SP, Cascade
 * Lake): the AVX-512 VPOPCNTDQ kernel's layout and stores (L = 8 channels per zmm) with the
 * AVX2 kernel's byte counts, in tiles of 4 pixels x 2 groups (16 byte counters; 4 x 4 needs
 * 28 live registers and spilled them in the inner loop). Per word k and tile cell: the low
 * and the high nibbles of pixel word ^ weight word in one vpternlogq each ((a ^ w) & 0x0f
 * and ((a >> 4) ^ (w >> 4)) & 0x0f, the shifted words made once per pixel and per group),
 * two vpshufb lookups and two byte adds: 6 ops per 512 binary MACs (the AVX2 kernel: ~8
 * per 256). After at most 31 words (31 * 8 = 248 < 256) one vpsadbw folds the bytes into
 * the 64-bit lanes, which are the channels' counts. Stores and loops: xnor_panel__avx512.h.
 */
#include "xnor_panel__avx512.h"

#if BF_ARCH_X86
#define BF_PANEL_TARGET BF_TARGET_AVX512
#define BF_PANEL_INLINE BF_AVX512_INLINE
#define BF_PANEL_GROUPS 2
#define BF_PANEL_ENTRY bf_xnor_panel__avx512bw
#define CHUNK 31
#define NIBBLE_XOR 0x28 /* vpternlogq: (a ^ b) & c */

BF_PANEL_INLINE void tile(const int P, const int G, const bf_word *const *rows, size_t n_seg,
                          size_t seg_len, const bf_word *w, size_t kw,
                          const int32_t *const *add, size_t ch0, int32_t *c, size_t c_ch,
                          size_t c_pix, size_t lanes) {
    const __m512i table = _mm512_broadcast_i32x4(
        _mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
    const __m512i low = _mm512_set1_epi8(0x0f), zero = _mm512_setzero_si512();
    __m512i acc[4][4], cnt[4][4];
    for (int p = 0; p < P; p++)
        for (int g = 0; g < G; g++) acc[p][g] = cnt[p][g] = zero;
    int counted = 0; /* words in the byte counts (each byte <= 8 per word) */
    for (size_t s = 0; s < n_seg; s++) {
        const bf_word *ap[4];
        for (int p = 0; p < P; p++) ap[p] = rows[(size_t)p * n_seg + s];
        const bf_word *ws = w + s * seg_len * L;
        for (size_t k = 0; k < seg_len; k++) {
            __m512i wv[4], wh[4];
            for (int g = 0; g < G; g++) {
                wv[g] = _mm512_loadu_si512(ws + (g * kw + k) * L);
                wh[g] = _mm512_srli_epi64(wv[g], 4);
            }
            for (int p = 0; p < P; p++) {
                const __m512i av = _mm512_set1_epi64((long long)ap[p][k]);
                const __m512i ah = _mm512_srli_epi64(av, 4);
                for (int g = 0; g < G; g++) {
                    const __m512i lo = _mm512_ternarylogic_epi64(av, wv[g], low, NIBBLE_XOR);
                    const __m512i hi = _mm512_ternarylogic_epi64(ah, wh[g], low, NIBBLE_XOR);
                    cnt[p][g] = _mm512_add_epi8(
                        cnt[p][g], _mm512_add_epi8(_mm512_shuffle_epi8(table, lo),
                                                   _mm512_shuffle_epi8(table, hi)));
                }
            }
            if (++counted == CHUNK) { /* fold before a byte can overflow */
                for (int p = 0; p < P; p++)
                    for (int g = 0; g < G; g++) {
                        acc[p][g] = _mm512_add_epi64(acc[p][g], _mm512_sad_epu8(cnt[p][g], zero));
                        cnt[p][g] = zero;
                    }
                counted = 0;
            }
        }
    }
    for (int p = 0; p < P; p++)
        for (int g = 0; g < G; g++)
            acc[p][g] = _mm512_add_epi64(acc[p][g], _mm512_sad_epu8(cnt[p][g], zero));
    store_tile(P, G, acc, add, ch0, c, c_ch, c_pix, lanes);
}

#include "xnor_panel__avx512_driver.h"
#endif
