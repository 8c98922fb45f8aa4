/*
 * bf_dispatch.h - the kernel table. Filled once from the chosen ISA (best available by
 * default, lower when BITFACTOR_ISA asks); kernels are called only through it, or through
 * bf_dispatch_for() when a caller (a test) names an ISA explicitly.
 */
#ifndef BF_DISPATCH_H
#define BF_DISPATCH_H

#include "bf_cpu.h"
#include "dwconv/dwconv.h"
#include "fconv/fconv.h"
#include "flinear/flinear.h"
#include "maxpool/maxpool.h"
#include "popcount/popcount.h"
#include "sign_pack/sign_pack.h"
#include "xnor_gemm/xnor_gemm.h"
#include "xnor_panel/xnor_panel.h"

typedef struct {
    bf_isa isa;
    bf_popcount_fn popcount;
    bf_xnor_gemm_fn xnor_gemm;
    bf_sign_pack_fn sign_pack;
    size_t panel_lanes;         /* L of the panel layout xnor_panel reads */
    bf_xnor_panel_fn xnor_panel; /* the binary convolution's product */
    size_t fconv_mr, fconv_nr;   /* channels x outputs of a float convolution block */
    bf_fconv_fn fconv;           /* the float convolution's block kernel */
    bf_maxpool2d_fn maxpool2d;
    bf_flinear_fn flinear;       /* real linear layer on F16 weights */
    bf_dwconv_plane_fn dwconv_plane; /* a depthwise convolution's plane */
} bf_kernels;

/* Table for `isa`, or NULL when this CPU or build lacks it. */
const bf_kernels *bf_dispatch_for(bf_isa isa);
/* The table in use. */
const bf_kernels *bf_dispatch_current(void);
/* Select the table in use; returns 0 on success, -1 when `isa` is unsupported. */
int bf_dispatch_select(bf_isa isa);

#endif
