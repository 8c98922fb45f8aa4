/*
 * bf_cpu.h - CPU feature detection, read once at import, and the ISA levels the
 * dispatcher chooses between (best available first, BITFACTOR_ISA may force a lower one).
 */
#ifndef BF_CPU_H
#define BF_CPU_H

typedef enum {
    BF_ISA_SCALAR = 0,
    BF_ISA_NEON = 1,
    BF_ISA_AVX2 = 2,
    BF_ISA_AVX512BW = 3, /* AVX-512 F/BW/VL with OS support for the ZMM state (Skylake-SP,
                            Cascade Lake): popcounts by vpshufb nibble lookup */
    BF_ISA_AVX512 = 4,   /* the same + VPOPCNTDQ (Ice Lake and later, Zen 4 and later) */
} bf_isa;

/* The best ISA this CPU and OS support. */
bf_isa bf_cpu_best_isa(void);
/* Whether this CPU and OS support `isa`. */
int bf_cpu_supports(bf_isa isa);
/* Whether the CPU has the POPCNT instruction (x86; 0 elsewhere). */
int bf_cpu_has_popcnt(void);
/* "scalar", "neon", "avx2", "avx512bw", "avx512". */
const char *bf_isa_name(bf_isa isa);
/* Parse a name as above; returns -1 for an unknown name. */
int bf_isa_parse(const char *name);

#endif /* BF_CPU_H */
