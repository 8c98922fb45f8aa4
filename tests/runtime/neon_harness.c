/*
 * neon_harness.c - checks the NEON kernels against the scalar ones on aarch64 (built by
 * tests/runtime/test_neon.py with aarch64-linux-gnu-gcc and run under qemu-aarch64).
 * Deterministic pseudo-random inputs over awkward sizes; prints "ok <cases>" or the first
 * mismatch and exits non-zero.
 */
#include <stdio.h>
#include <stdlib.h>

#include "popcount/popcount.h"
#include "xnor_gemm/xnor_gemm.h"
#include "xnor_panel/xnor_panel.h"

static uint64_t state = 0x9E3779B97F4A7C15ULL;

static uint64_t next_word(void) { /* xorshift64* */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
}

int main(void) {
    static const size_t sizes[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 17, 31, 33};
    static const size_t kws[] = {1, 2, 3, 4, 5, 9, 10, 18, 36, 63, 64, 65, 129, 1000, 9001};
    const size_t ns = sizeof(sizes) / sizeof(sizes[0]), nk = sizeof(kws) / sizeof(kws[0]);
    long cases = 0;
    for (size_t ki = 0; ki < nk; ki++) {
        const size_t kw = kws[ki], lda = kw + 1, ldb = kw + 3;
        for (size_t mi = 0; mi < ns; mi++) {
            for (size_t ni = 0; ni < ns; ni += (kw > 1000 ? 5 : 1)) {
                const size_t m = sizes[mi], n = sizes[ni];
                bf_word *a = malloc(m * lda * sizeof(bf_word));
                bf_word *b = malloc(n * ldb * sizeof(bf_word));
                int32_t *c0 = malloc(m * n * sizeof(int32_t));
                int32_t *c1 = malloc(m * n * sizeof(int32_t));
                if (!a || !b || !c0 || !c1) return 2;
                const int all_ones = (ki + mi) % 7 == 0; /* saturating counts */
                for (size_t i = 0; i < m * lda; i++) a[i] = all_ones ? ~(bf_word)0 : next_word();
                for (size_t i = 0; i < n * ldb; i++) b[i] = all_ones ? 0 : next_word();
                bf_xnor_gemm_2x2__scalar(m, n, kw, a, lda, b, ldb, c0, n);
                bf_xnor_gemm_2x4__neon(m, n, kw, a, lda, b, ldb, c1, n);
                for (size_t i = 0; i < m * n; i++) {
                    if (c0[i] != c1[i]) {
                        printf("xnor_gemm mismatch m=%zu n=%zu kw=%zu at %zu: %d vs %d\n", m, n,
                               kw, i, c0[i], c1[i]);
                        return 1;
                    }
                }
                /* the NEON table's convolution product: the panel kernel, channels = a rows */
                bf_word *panel = malloc(bf_xnor_panel_words(BF_PANEL_LANES_SCALAR, m, kw) * 8);
                const bf_word **rows = malloc(n * sizeof(*rows));
                if (!panel || !rows) return 2;
                for (size_t p = 0; p < n; p++) rows[p] = b + p * ldb;
                bf_xnor_panel_pack(BF_PANEL_LANES_SCALAR, m, kw, a, lda, panel);
                bf_xnor_panel__scalar(n, m, rows, 1, kw, panel, kw, NULL, c1, n, 1);
                free(rows);
                free(panel);
                for (size_t i = 0; i < m * n; i++) {
                    if (c0[i] != c1[i]) {
                        printf("xnor_panel mismatch m=%zu n=%zu kw=%zu at %zu: %d vs %d\n", m, n,
                               kw, i, c0[i], c1[i]);
                        return 1;
                    }
                }
                if (bf_popcount__scalar(a, m * lda) != bf_popcount__neon(a, m * lda)) {
                    printf("popcount mismatch over %zu words\n", m * lda);
                    return 1;
                }
                cases++;
                free(a);
                free(b);
                free(c0);
                free(c1);
            }
        }
    }
    printf("ok %ld\n", cases);
    return 0;
}
