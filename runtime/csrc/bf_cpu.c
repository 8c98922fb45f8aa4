/* bf_cpu.c - see bf_cpu.h. */
#include "bf_cpu.h"

#include <string.h>

#include "bf_common.h"

#if BF_ARCH_X86
#include <cpuid.h>

static unsigned long long bf_xgetbv0(void) {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

static int bf_x86_has_avx2(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, popcnt = (c >> 23) & 1;
    /* the float kernels' AVX2 level uses FMA and F16C */
    const int fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx || !popcnt || !fma || !f16c) return 0;
    /* The OS must save XMM and YMM state (XCR0 bits 1 and 2). */
    if ((bf_xgetbv0() & 0x6) != 0x6) return 0;
    if (__get_cpuid_max(0, 0) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1, bmi2 = (b >> 8) & 1;
    return avx2 && bmi2;
}

static int bf_x86_has_avx512(void) {
    unsigned int a, b, c, d;
    if (!bf_x86_has_avx2()) return 0;
    /* The OS must also save opmask, ZMM0-15 upper halves and ZMM16-31 (XCR0 bits 5-7). */
    if ((bf_xgetbv0() & 0xE6) != 0xE6) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const int f = (b >> 16) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    return f && bw && vl;
}

static int bf_x86_has_avx512_vpopcntdq(void) {
    unsigned int a, b, c, d;
    if (!bf_x86_has_avx512()) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (c >> 14) & 1;
}
#endif

int bf_cpu_has_popcnt(void) {
#if BF_ARCH_X86
    static int cached = -1;
    if (cached < 0) {
        unsigned int a, b, c, d;
        cached = __get_cpuid(1, &a, &b, &c, &d) ? (int)((c >> 23) & 1) : 0;
    }
    return cached;
#else
    return 0;
#endif
}

int bf_cpu_supports(bf_isa isa) {
    static int cached[5] = {-1, -1, -1, -1, -1};
    if ((int)isa < 0 || (int)isa > 4) return 0;
    if (cached[isa] >= 0) return cached[isa];
    int ok = 0;
    switch (isa) {
    case BF_ISA_SCALAR: ok = 1; break;
    case BF_ISA_NEON: ok = BF_ARCH_ARM64; break;
#if BF_ARCH_X86
    case BF_ISA_AVX2: ok = bf_x86_has_avx2(); break;
    case BF_ISA_AVX512BW: ok = bf_x86_has_avx512(); break;
    case BF_ISA_AVX512: ok = bf_x86_has_avx512_vpopcntdq(); break;
#else
    default: ok = 0; break;
#endif
    }
    cached[isa] = ok;
    return ok;
}

bf_isa bf_cpu_best_isa(void) {
    if (bf_cpu_supports(BF_ISA_AVX512)) return BF_ISA_AVX512;
    if (bf_cpu_supports(BF_ISA_AVX512BW)) return BF_ISA_AVX512BW;
    if (bf_cpu_supports(BF_ISA_AVX2)) return BF_ISA_AVX2;
    if (bf_cpu_supports(BF_ISA_NEON)) return BF_ISA_NEON;
    return BF_ISA_SCALAR;
}

const char *bf_isa_name(bf_isa isa) {
    switch (isa) {
    case BF_ISA_SCALAR: return "scalar";
    case BF_ISA_NEON: return "neon";
    case BF_ISA_AVX2: return "avx2";
    case BF_ISA_AVX512BW: return "avx512bw";
    case BF_ISA_AVX512: return "avx512";
    }
    return "unknown";
}

int bf_isa_parse(const char *name) {
    if (!name) return -1;
    if (strcmp(name, "scalar") == 0) return BF_ISA_SCALAR;
    if (strcmp(name, "neon") == 0) return BF_ISA_NEON;
    if (strcmp(name, "avx2") == 0) return BF_ISA_AVX2;
    if (strcmp(name, "avx512bw") == 0) return BF_ISA_AVX512BW;
    if (strcmp(name, "avx512") == 0) return BF_ISA_AVX512;
    return -1;
}
