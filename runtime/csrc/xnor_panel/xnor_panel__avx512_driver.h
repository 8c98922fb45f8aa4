/*
 * xnor_panel__avx512_driver.h - the loops over 4-group channel blocks and pixel tiles of an
 * AVX-512 panel kernel (xnor_panel__avx512.h), included once by its file after its tile().
 * The includer defines BF_PANEL_INLINE (always_inline + its target), BF_PANEL_TARGET,
 * BF_PANEL_ENTRY (the entry point's name) and BF_PANEL_GROUPS (groups per tile, 2 or 4).
 */
BF_PANEL_INLINE void groups_of(const int G, size_t n_pix, const bf_word *const *rows,
                                size_t n_seg, size_t seg_len, const bf_word *w, size_t kw,
                                const int32_t *const *add, size_t ch0, int32_t *cg,
                                size_t c_ch, size_t c_pix, size_t lanes) {
    /* the weights after these groups' (the next groups, or the next call's chunk in a
     * caller's contiguous panels) are brought into L1 a share per tile while these run:
     * a network's binary weights do not stay in L2 between calls. Prefetches never fault,
     * past the end of the panel included. */
    const char *ahead = (const char *)(w + (size_t)G * kw * L);
    const size_t lines = (size_t)G * kw * L * sizeof(bf_word) / 64, tiles = (n_pix + 3) / 4;
    const size_t per_tile = (lines + tiles - 1) / tiles;
    size_t p = 0;
    for (; p + 4 <= n_pix; p += 4) {
        for (size_t l = 0; l < per_tile; l++, ahead += 64) _mm_prefetch(ahead, _MM_HINT_T0);
        tile(4, G, rows + p * n_seg, n_seg, seg_len, w, kw, add ? add + p : NULL, ch0,
             cg + p * c_pix, c_ch, c_pix, lanes);
    }
    const bf_word *const *r = rows + p * n_seg;
    const int32_t *const *ap = add ? add + p : NULL;
    int32_t *cp = cg + p * c_pix;
    switch (n_pix - p) { /* the last 1 to 3 pixels in one tile */
    case 3: tile(3, G, r, n_seg, seg_len, w, kw, ap, ch0, cp, c_ch, c_pix, lanes); break;
    case 2: tile(2, G, r, n_seg, seg_len, w, kw, ap, ch0, cp, c_ch, c_pix, lanes); break;
    case 1: tile(1, G, r, n_seg, seg_len, w, kw, ap, ch0, cp, c_ch, c_pix, lanes); break;
    default: break;
    }
}

BF_PANEL_TARGET void BF_PANEL_ENTRY(BF_XNOR_PANEL_ARGS) {
    const size_t groups = (n_ch + L - 1) / L;
    size_t g = 0;
    for (; g + BF_PANEL_GROUPS <= groups; g += BF_PANEL_GROUPS)
        groups_of(BF_PANEL_GROUPS, n_pix, rows, n_seg, seg_len, panel + g * kw * L, kw, add,
                  g * L, c + g * L * c_ch, c_ch, c_pix, n_ch - g * L);
    const size_t left = groups - g, ch0 = g * L;
    const bf_word *w = panel + g * kw * L;
    int32_t *cg = c + g * L * c_ch;
    const size_t lanes = n_ch - g * L;
    if (BF_PANEL_GROUPS > 3 && left == 3)
        groups_of(3, n_pix, rows, n_seg, seg_len, w, kw, add, ch0, cg, c_ch, c_pix, lanes);
    if (BF_PANEL_GROUPS > 2 && left == 2)
        groups_of(2, n_pix, rows, n_seg, seg_len, w, kw, add, ch0, cg, c_ch, c_pix, lanes);
    if (left == 1)
        groups_of(1, n_pix, rows, n_seg, seg_len, w, kw, add, ch0, cg, c_ch, c_pix, lanes);
}
