/* The specification of sign_pack (sign_pack.h). */
#include "sign_pack.h"

#include <string.h>

void bf_sign_pack__scalar(const float *x, const float *threshold, bf_word *out, size_t n,
                          size_t c, size_t s) {
    const size_t cw = BF_WORDS_FOR(c);
    memset(out, 0, n * s * cw * sizeof(bf_word));
    for (size_t b = 0; b < n; b++) {
        bf_word *ob = out + b * s * cw;
        for (size_t ch = 0; ch < c; ch++) {
            const float t = threshold ? threshold[ch] : 0.0f;
            const float *xc = x + (b * c + ch) * s;
            const bf_word bit = (bf_word)1 << (ch % BF_WORD_BITS);
            bf_word *o = ob + ch / BF_WORD_BITS;
            for (size_t p = 0; p < s; p++)
                if (xc[p] < t) o[p * cw] |= bit;
        }
    }
}
