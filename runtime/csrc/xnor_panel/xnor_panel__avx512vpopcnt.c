/*
 * AVX-512 VPOPCNTDQ panel product (xnor_panel.h), L = 8 channels per zmm. Mirrors the
 * AVX2 kernel: tile of up to 4 pixels x 4 channel groups (32 channels, 16 accumulators),
 * K innermost; per word k: load the groups' weight vectors, broadcast each pixel's word
 * (embedded-broadcast operand of vpxorq), xor, vpopcntq, vpaddq into 64-bit lanes, which
 * are the channels' counts. The pixels' words come from their segment pointers (one
 * segment per kernel row: the convolution's input itself, no im2col). Stores and loops:
 * xnor_panel__avx512.h.
 */
#include "xnor_panel__avx512.h"

#if BF_ARCH_X86
#define BF_PANEL_TARGET BF_TARGET_AVX512VPOPCNT
#define BF_PANEL_INLINE static inline __attribute__((always_inline)) BF_TARGET_AVX512VPOPCNT
#define BF_PANEL_GROUPS 4
#define BF_PANEL_ENTRY bf_xnor_panel__avx512vpopcnt

BF_PANEL_INLINE void tile(const int P, const int G, const bf_word *const *rows, size_t n_seg,
                          size_t seg_len, const bf_word *w, size_t kw,
                          const int32_t *const *add, size_t ch0, int32_t *c, size_t c_ch,
                          size_t c_pix, size_t lanes) {
    __m512i acc[4][4];
    for (int p = 0; p < P; p++)
        for (int g = 0; g < G; g++) acc[p][g] = _mm512_setzero_si512();
    for (size_t s = 0; s < n_seg; s++) {
        const bf_word *ap[4];
        for (int p = 0; p < P; p++) ap[p] = rows[(size_t)p * n_seg + s];
        const bf_word *ws = w + s * seg_len * L;
        for (size_t k = 0; k < seg_len; k++) {
            __m512i wv[4];
            for (int g = 0; g < G; g++) wv[g] = _mm512_loadu_si512(ws + (g * kw + k) * L);
            for (int p = 0; p < P; p++) {
                const __m512i av = _mm512_set1_epi64((long long)ap[p][k]);
                for (int g = 0; g < G; g++)
                    acc[p][g] = _mm512_add_epi64(
                        acc[p][g], _mm512_popcnt_epi64(_mm512_xor_si512(av, wv[g])));
            }
        }
    }
    store_tile(P, G, acc, add, ch0, c, c_ch, c_pix, lanes);
}

#include "xnor_panel__avx512_driver.h"
#endif
