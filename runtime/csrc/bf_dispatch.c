/* bf_dispatch.c - see bf_dispatch.h. */
#include "bf_dispatch.h"

static const bf_kernels bf_table_scalar = {BF_ISA_SCALAR, bf_popcount__scalar,
                                           bf_xnor_gemm_2x2__scalar, bf_sign_pack__scalar,
                                           BF_PANEL_LANES_SCALAR, bf_xnor_panel__scalar,
                                           BF_FCONV_MR_SCALAR, BF_FCONV_NR_SCALAR, bf_fconv_4x8__scalar,
    bf_maxpool2d__scalar, bf_flinear__scalar, bf_dwconv_plane__scalar};
#if BF_ARCH_X86
/* The same scalar code compiled with the POPCNT instruction, used when the CPU has it. */
static const bf_kernels bf_table_scalar_popcnt = {
    BF_ISA_SCALAR,         bf_popcount__scalar,          bf_xnor_gemm_2x2__scalar_popcnt,
    bf_sign_pack__scalar,  BF_PANEL_LANES_SCALAR,        bf_xnor_panel__scalar_popcnt,
    BF_FCONV_MR_SCALAR, BF_FCONV_NR_SCALAR, bf_fconv_4x8__scalar,
    bf_maxpool2d__scalar, bf_flinear__scalar, bf_dwconv_plane__scalar};
static const bf_kernels bf_table_avx2 = {BF_ISA_AVX2, bf_popcount__avx2, bf_xnor_gemm_2x5__avx2,
                                         bf_sign_pack__avx2,   BF_PANEL_LANES_AVX2,
                                         bf_xnor_panel__avx2,
                                         BF_FCONV_MR_AVX2, BF_FCONV_NR_AVX2, bf_fconv_4x24__avx2,
    bf_maxpool2d__avx2, bf_flinear__avx2, bf_dwconv_plane__avx2};
static const bf_kernels bf_table_avx512 = {BF_ISA_AVX512, bf_popcount__avx512vpopcnt,
                                           bf_xnor_gemm_4x4__avx512vpopcnt, bf_sign_pack__avx512,
                                           BF_PANEL_LANES_AVX512,
                                           bf_xnor_panel__avx512vpopcnt,
                                           BF_FCONV_MR_AVX512, BF_FCONV_NR_AVX512,
                                           bf_fconv_8x32__avx512,
    bf_maxpool2d__avx512, bf_flinear__avx512, bf_dwconv_plane__avx512};
/* AVX-512 without VPOPCNTDQ: the AVX-512 float, packing and panel kernels (the panel counting
 * bits by nibble lookup); the general product and popcount are AVX2's. */
static const bf_kernels bf_table_avx512bw = {BF_ISA_AVX512BW, bf_popcount__avx2,
                                             bf_xnor_gemm_2x5__avx2, bf_sign_pack__avx512,
                                             BF_PANEL_LANES_AVX512, bf_xnor_panel__avx512bw,
                                             BF_FCONV_MR_AVX512, BF_FCONV_NR_AVX512,
                                             bf_fconv_8x32__avx512,
    bf_maxpool2d__avx512, bf_flinear__avx512, bf_dwconv_plane__avx512};
#endif
#if BF_ARCH_ARM64
static const bf_kernels bf_table_neon = {BF_ISA_NEON, bf_popcount__neon, bf_xnor_gemm_2x4__neon,
                                         bf_sign_pack__scalar, BF_PANEL_LANES_SCALAR,
                                         bf_xnor_panel__scalar,
                                         BF_FCONV_MR_SCALAR, BF_FCONV_NR_SCALAR, bf_fconv_4x8__scalar,
    bf_maxpool2d__scalar, bf_flinear__scalar, bf_dwconv_plane__scalar};
#endif

static const bf_kernels *bf_current = &bf_table_scalar;

const bf_kernels *bf_dispatch_for(bf_isa isa) {
    if (!bf_cpu_supports(isa)) return NULL;
    switch (isa) {
#if BF_ARCH_X86
    case BF_ISA_SCALAR: return bf_cpu_has_popcnt() ? &bf_table_scalar_popcnt : &bf_table_scalar;
#else
    case BF_ISA_SCALAR: return &bf_table_scalar;
#endif
#if BF_ARCH_X86
    case BF_ISA_AVX2: return &bf_table_avx2;
    case BF_ISA_AVX512BW: return &bf_table_avx512bw;
    case BF_ISA_AVX512: return &bf_table_avx512;
#endif
#if BF_ARCH_ARM64
    case BF_ISA_NEON: return &bf_table_neon;
#endif
    default: return NULL;
    }
}

const bf_kernels *bf_dispatch_current(void) { return bf_current; }

int bf_dispatch_select(bf_isa isa) {
    const bf_kernels *table = bf_dispatch_for(isa);
    if (!table) return -1;
    bf_current = table;
    return 0;
}
