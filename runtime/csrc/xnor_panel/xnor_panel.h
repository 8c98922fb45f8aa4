/*
 * xnor_panel.h - the "outer-product" XOR/popcount product used by binary convolution:
 * vectorized across OUTPUT CHANNELS, so accumulator lanes are channels and no horizontal
 * reduction is needed.
 *
 * Weights are repacked once per channel block into lane-interleaved panels
 *
 *   panel[(g * kw + k) * L + l] = weight row (g * L + l), word k      (zero past n_ch)
 *
 * with L = the kernel's lane count (bf_xnor_panel_lanes). The kernel computes
 *
 *   c[ch * ldc + p] = sum_{k < kw} popcount(a[p * lda + k] ^ W_ch[k])
 *
 * for p < n_pix, ch < n_ch (channel-major, as the bconv transform reads it). Padded lanes
 * are computed and discarded. The scalar kernel is the specification; every ISA's kernel
 * equals it (and the plain xnor_gemm) exactly.
 */
#ifndef BF_XNOR_PANEL_H
#define BF_XNOR_PANEL_H

#include "../bf_common.h"

typedef void (*bf_xnor_panel_fn)(size_t n_pix, size_t n_ch, size_t kw, const bf_word *a,
                                 size_t lda, const bf_word *panel, int32_t *c, size_t ldc);

/* Words a panel of n_ch channels x kw words with `lanes` lanes takes. */
size_t bf_xnor_panel_words(size_t lanes, size_t n_ch, size_t kw);
/* Repack n_ch weight rows (row stride ldw words, first kw words used) into `panel`. */
void bf_xnor_panel_pack(size_t lanes, size_t n_ch, size_t kw, const bf_word *w, size_t ldw,
                        bf_word *panel);

/* L = 4 (any L works for scalar code; 4 keeps 2 pixels x 4 channels in registers). */
#define BF_PANEL_LANES_SCALAR 4
void bf_xnor_panel__scalar(size_t n_pix, size_t n_ch, size_t kw, const bf_word *a, size_t lda,
                           const bf_word *panel, int32_t *c, size_t ldc);
#if BF_ARCH_X86
void bf_xnor_panel__scalar_popcnt(size_t n_pix, size_t n_ch, size_t kw, const bf_word *a,
                                  size_t lda, const bf_word *panel, int32_t *c, size_t ldc);
#define BF_PANEL_LANES_AVX2 4
void bf_xnor_panel__avx2(size_t n_pix, size_t n_ch, size_t kw, const bf_word *a, size_t lda,
                         const bf_word *panel, int32_t *c, size_t ldc);
#define BF_PANEL_LANES_AVX512 8
void bf_xnor_panel__avx512vpopcnt(size_t n_pix, size_t n_ch, size_t kw, const bf_word *a,
                                  size_t lda, const bf_word *panel, int32_t *c, size_t ldc);
#endif

#endif
