/*
 * xnor_panel.h - the "outer-product" XOR/popcount product used by binary convolution:
 * vectorized across OUTPUT CHANNELS, so accumulator lanes are channels and no horizontal
 * reduction is needed.
 *
 * Weights are repacked once per channel block into lane-interleaved panels
 *
 *   panel[(g * kw + k) * L + l] = weight row (g * L + l), word k      (zero past n_ch)
 *
 * with L = the kernel's lane count (bf_xnor_panel_lanes). A pixel's row of K words is
 * read as n_seg segments of seg_len words each (K = n_seg * seg_len <= kw), segment s of
 * pixel p at rows[p * n_seg + s]: a convolution points them straight into its input (one
 * segment per kernel row, or per tap), so no im2col copy is needed. The kernel computes
 *
 *   c[ch * c_ch + p * c_pix] = sum_{s, k < seg_len} popcount(rows[p*n_seg+s][k] ^ W_ch[s*seg_len+k])
 *
 * for p < n_pix, ch < n_ch: channel-major (c_pix = 1) or pixel-major (c_ch = 1) int32
 * counts, or any other strides, plus add[p][ch] where add and add[p] are not NULL (a
 * convolution's padding corrections of its border pixels, added to the counts in
 * registers; add[p] may be read up to a multiple of 8 channels). Padded lanes are computed
 * and discarded. The scalar kernel is the specification; every ISA's kernel equals it
 * exactly.
 */
#ifndef BF_XNOR_PANEL_H
#define BF_XNOR_PANEL_H

#include "../bf_common.h"

typedef void (*bf_xnor_panel_fn)(size_t n_pix, size_t n_ch, const bf_word *const *rows,
                                 size_t n_seg, size_t seg_len, const bf_word *panel, size_t kw,
                                 const int32_t *const *add, int32_t *c, size_t c_ch,
                                 size_t c_pix);
#define BF_XNOR_PANEL_ARGS                                                                    \
    size_t n_pix, size_t n_ch, const bf_word *const *rows, size_t n_seg, size_t seg_len,      \
        const bf_word *panel, size_t kw, const int32_t *const *add, int32_t *c, size_t c_ch,  \
        size_t c_pix

/* Words a panel of n_ch channels x kw words with `lanes` lanes takes. */
size_t bf_xnor_panel_words(size_t lanes, size_t n_ch, size_t kw);
/* Repack n_ch weight rows (row stride ldw words, first kw words used) into `panel`. */
void bf_xnor_panel_pack(size_t lanes, size_t n_ch, size_t kw, const bf_word *w, size_t ldw,
                        bf_word *panel);
/* c[ch * c_ch + p * c_pix] += add[p][ch] for the pixels with add rows (add may be NULL):
 * the scalar and AVX2 kernels' add rows, after their counts (in their counting loops the
 * rows cost registers: scalar 20% slower on 64 channels, AVX2 3%, against 1-2% this way). */
void bf_xnor_panel_add_rows(size_t n_pix, size_t n_ch, const int32_t *const *add, int32_t *c,
                            size_t c_ch, size_t c_pix);

/* L = 4 (any L works for scalar code; 4 keeps 2 pixels x 4 channels in registers). */
#define BF_PANEL_LANES_SCALAR 4
void bf_xnor_panel__scalar(BF_XNOR_PANEL_ARGS);
#if BF_ARCH_X86
void bf_xnor_panel__scalar_popcnt(BF_XNOR_PANEL_ARGS);
#define BF_PANEL_LANES_AVX2 4
void bf_xnor_panel__avx2(BF_XNOR_PANEL_ARGS);
#define BF_PANEL_LANES_AVX512 8
void bf_xnor_panel__avx512vpopcnt(BF_XNOR_PANEL_ARGS);
void bf_xnor_panel__avx512bw(BF_XNOR_PANEL_ARGS); /* same lanes, no VPOPCNTDQ */
#endif

#endif
