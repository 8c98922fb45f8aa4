/*
 * The specification of the panel product (xnor_panel.h) and the panel repacking: plain C,
 * 2 pixels x 4 lanes (channels) per step so each loaded word is used more than once.
 */
#include "xnor_panel.h"

#define L BF_PANEL_LANES_SCALAR
#define BF_ALWAYS_INLINE static inline __attribute__((always_inline))

size_t bf_xnor_panel_words(size_t lanes, size_t n_ch, size_t kw) {
    return (n_ch + lanes - 1) / lanes * lanes * kw;
}

void bf_xnor_panel_pack(size_t lanes, size_t n_ch, size_t kw, const bf_word *w, size_t ldw,
                        bf_word *panel) {
    const size_t groups = (n_ch + lanes - 1) / lanes;
    for (size_t g = 0; g < groups; g++)
        for (size_t l = 0; l < lanes; l++) {
            const size_t ch = g * lanes + l;
            bf_word *dst = panel + g * kw * lanes + l;
            if (ch < n_ch) {
                const bf_word *src = w + ch * ldw;
                for (size_t k = 0; k < kw; k++) dst[k * lanes] = src[k];
            } else {
                for (size_t k = 0; k < kw; k++) dst[k * lanes] = 0;
            }
        }
}

BF_ALWAYS_INLINE void panel_body(size_t n_pix, size_t n_ch, const bf_word *const *rows,
                                 size_t n_seg, size_t seg_len, const bf_word *panel, size_t kw,
                                 const int32_t *const *add, int32_t *c, size_t c_ch,
                                 size_t c_pix) {
    const size_t groups = (n_ch + L - 1) / L;
    for (size_t g = 0; g < groups; g++) {
        const bf_word *w = panel + g * kw * L;
        const size_t lanes = n_ch - g * L < L ? n_ch - g * L : L;
        int32_t *cg = c + g * L * c_ch;
        size_t p = 0;
        for (; p + 2 <= n_pix; p += 2) {
            int64_t s0[L] = {0}, s1[L] = {0};
            for (size_t s = 0; s < n_seg; s++) {
                const bf_word *a0 = rows[p * n_seg + s], *a1 = rows[(p + 1) * n_seg + s];
                const bf_word *ws = w + s * seg_len * L;
                for (size_t k = 0; k < seg_len; k++) {
                    const bf_word x0 = a0[k], x1 = a1[k];
                    for (int l = 0; l < L; l++) {
                        s0[l] += BF_POPCOUNT64(x0 ^ ws[k * L + l]);
                        s1[l] += BF_POPCOUNT64(x1 ^ ws[k * L + l]);
                    }
                }
            }
            for (size_t l = 0; l < lanes; l++) {
                cg[l * c_ch + p * c_pix] = (int32_t)s0[l];
                cg[l * c_ch + (p + 1) * c_pix] = (int32_t)s1[l];
            }
        }
        for (; p < n_pix; p++) {
            int64_t s0[L] = {0};
            for (size_t s = 0; s < n_seg; s++) {
                const bf_word *a0 = rows[p * n_seg + s], *ws = w + s * seg_len * L;
                for (size_t k = 0; k < seg_len; k++)
                    for (int l = 0; l < L; l++) s0[l] += BF_POPCOUNT64(a0[k] ^ ws[k * L + l]);
            }
            for (size_t l = 0; l < lanes; l++) cg[l * c_ch + p * c_pix] = (int32_t)s0[l];
        }
    }
    bf_xnor_panel_add_rows(n_pix, n_ch, add, c, c_ch, c_pix);
}

void bf_xnor_panel_add_rows(size_t n_pix, size_t n_ch, const int32_t *const *add, int32_t *c,
                            size_t c_ch, size_t c_pix) {
    for (size_t p = 0; add && p < n_pix; p++)
        if (add[p])
            for (size_t ch = 0; ch < n_ch; ch++) c[ch * c_ch + p * c_pix] += add[p][ch];
}

void bf_xnor_panel__scalar(BF_XNOR_PANEL_ARGS) {
    panel_body(n_pix, n_ch, rows, n_seg, seg_len, panel, kw, add, c, c_ch, c_pix);
}

#if BF_ARCH_X86
BF_TARGET_POPCNT void bf_xnor_panel__scalar_popcnt(BF_XNOR_PANEL_ARGS) {
    panel_body(n_pix, n_ch, rows, n_seg, seg_len, panel, kw, add, c, c_ch, c_pix);
}
#endif
