/*
 * AVX-512 (F + BW) sign_pack, 64 pixels at a time, no bit transposes:
 *   - per channel, four 16-pixel compares (ordered less-than: NaN packs as +1) joined into
 *     one 64-bit mask (bit j = pixel j), spread to bytes (vpmovm2b) and merged under the
 *     channel's bit (vpternlogd) into its octet's register: byte j of R_o then holds pixel
 *     j's signs of channels 8o .. 8o + 7;
 *   - the eight R_o are byte-interleaved (unpack 8 -> 16 -> 32 -> 64 bits within 128-bit
 *     lanes) into pixel words, stored two at a time.
 * The last block of a row of pixels loads under a mask and stores through a stack tile.
 */
#include "sign_pack.h"

#if BF_ARCH_X86
#include <immintrin.h>
#include <string.h>

/* Pixel words of one group for pixels [p, p + np) (np <= 64) of image xb. */
BF_TARGET_AVX512 static void pack_block(const float *xg, const float *threshold, size_t live,
                                        size_t s, size_t p, size_t np, uint64_t *words) {
    const __mmask16 k0 = (__mmask16)(np >= 16 ? 0xffffu : (1u << np) - 1u);
    const __mmask16 k1 = (__mmask16)(np >= 32 ? 0xffffu : np > 16 ? (1u << (np - 16)) - 1u : 0);
    const __mmask16 k2 = (__mmask16)(np >= 48 ? 0xffffu : np > 32 ? (1u << (np - 32)) - 1u : 0);
    const __mmask16 k3 = (__mmask16)(np >= 64 ? 0xffffu : np > 48 ? (1u << (np - 48)) - 1u : 0);
    __m512i r[8];
    for (size_t o = 0; o < 8; o++) {
        __m512i acc = _mm512_setzero_si512();
        for (size_t i = 0; i < 8; i++) {
            const size_t ch = 8 * o + i;
            if (ch >= live) break;
            const float *row = xg + ch * s + p;
            const __m512 t = _mm512_set1_ps(threshold ? threshold[ch] : 0.0f);
            const __mmask16 m0 =
                _mm512_mask_cmp_ps_mask(k0, _mm512_maskz_loadu_ps(k0, row), t, _CMP_LT_OQ);
            const __mmask16 m1 = _mm512_mask_cmp_ps_mask(k1, _mm512_maskz_loadu_ps(k1, row + 16),
                                                         t, _CMP_LT_OQ);
            const __mmask16 m2 = _mm512_mask_cmp_ps_mask(k2, _mm512_maskz_loadu_ps(k2, row + 32),
                                                         t, _CMP_LT_OQ);
            const __mmask16 m3 = _mm512_mask_cmp_ps_mask(k3, _mm512_maskz_loadu_ps(k3, row + 48),
                                                         t, _CMP_LT_OQ);
            const __mmask64 m = _mm512_kunpackd(
                (__mmask64)_mm512_kunpackw((__mmask32)m3, (__mmask32)m2),
                (__mmask64)_mm512_kunpackw((__mmask32)m1, (__mmask32)m0));
            /* acc |= bytes(m) & (1 << i) */
            acc = _mm512_ternarylogic_epi32(acc, _mm512_movm_epi8(m),
                                            _mm512_set1_epi8((char)(1u << i)), 0xF8);
        }
        r[o] = acc;
    }
    /* byte-interleave: word of pixel j = r[0][j] | r[1][j] << 8 | ... | r[7][j] << 56 */
    const __m512i a0 = _mm512_unpacklo_epi8(r[0], r[1]), a1 = _mm512_unpackhi_epi8(r[0], r[1]);
    const __m512i a2 = _mm512_unpacklo_epi8(r[2], r[3]), a3 = _mm512_unpackhi_epi8(r[2], r[3]);
    const __m512i a4 = _mm512_unpacklo_epi8(r[4], r[5]), a5 = _mm512_unpackhi_epi8(r[4], r[5]);
    const __m512i a6 = _mm512_unpacklo_epi8(r[6], r[7]), a7 = _mm512_unpackhi_epi8(r[6], r[7]);
    /* a0: lane L pixels 16L+0..7 (16-bit: channels 0-15), a1: 16L+8..15 */
    const __m512i b0 = _mm512_unpacklo_epi16(a0, a2), b1 = _mm512_unpackhi_epi16(a0, a2);
    const __m512i b2 = _mm512_unpacklo_epi16(a4, a6), b3 = _mm512_unpackhi_epi16(a4, a6);
    const __m512i b4 = _mm512_unpacklo_epi16(a1, a3), b5 = _mm512_unpackhi_epi16(a1, a3);
    const __m512i b6 = _mm512_unpacklo_epi16(a5, a7), b7 = _mm512_unpackhi_epi16(a5, a7);
    /* b0: 16L+0..3 (32-bit: channels 0-31), b1: 16L+4..7; b2/b3 the same for 32-63;
     * b4..b7 likewise for 16L+8..15 */
    const __m512i w[8] = {
        _mm512_unpacklo_epi32(b0, b2), /* 16L+0..1 */
        _mm512_unpackhi_epi32(b0, b2), /* 16L+2..3 */
        _mm512_unpacklo_epi32(b1, b3), /* 16L+4..5 */
        _mm512_unpackhi_epi32(b1, b3), /* 16L+6..7 */
        _mm512_unpacklo_epi32(b4, b6), /* 16L+8..9 */
        _mm512_unpackhi_epi32(b4, b6), /* 16L+10..11 */
        _mm512_unpacklo_epi32(b5, b7), /* 16L+12..13 */
        _mm512_unpackhi_epi32(b5, b7), /* 16L+14..15 */
    };
    for (int v = 0; v < 8; v++) {
        _mm_storeu_si128((__m128i *)(words + 2 * v), _mm512_castsi512_si128(w[v]));
        _mm_storeu_si128((__m128i *)(words + 16 + 2 * v), _mm512_extracti32x4_epi32(w[v], 1));
        _mm_storeu_si128((__m128i *)(words + 32 + 2 * v), _mm512_extracti32x4_epi32(w[v], 2));
        _mm_storeu_si128((__m128i *)(words + 48 + 2 * v), _mm512_extracti32x4_epi32(w[v], 3));
    }
}

BF_TARGET_AVX512 void bf_sign_pack__avx512(const float *x, const float *threshold, bf_word *out,
                                           size_t n, size_t c, size_t s) {
    const size_t cw = BF_WORDS_FOR(c);
    uint64_t tile[64];
    for (size_t b = 0; b < n; b++) {
        const float *xb = x + b * c * s;
        bf_word *ob = out + b * s * cw;
        for (size_t g = 0; g < cw; g++) {
            const size_t c0 = g * BF_WORD_BITS;
            const size_t live = c - c0 < BF_WORD_BITS ? c - c0 : BF_WORD_BITS;
            const float *xg = xb + c0 * s;
            const float *tg = threshold ? threshold + c0 : NULL;
            for (size_t p = 0; p < s; p += 64) {
                const size_t np = s - p < 64 ? s - p : 64;
                if (np == 64 && cw == 1) {
                    pack_block(xg, tg, live, s, p, 64, ob + p);
                    continue;
                }
                pack_block(xg, tg, live, s, p, np, tile);
                for (size_t j = 0; j < np; j++) ob[(p + j) * cw + g] = tile[j];
            }
        }
    }
}
#endif
