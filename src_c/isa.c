/* Which instruction-set variant of the hot loops runs (see fc_target.h):
 * compiled once, not per float type. */
#include <stdatomic.h>

#include "fastconv.h"
#include "fc_target.h"

/* Baseline until the library's constructor below picks the default (see
 * fc_isa_best); only ever set to a variant the CPU runs. */
atomic_int fc_isa_selected = FC_ISA_BASELINE;

int fc_isa_compiled(int isa)
{
    if (FC_MULTI_ISA)
        return isa >= 0 && isa < FC_ISA_COUNT;
    return isa == FC_ISA_BASELINE;
}

int fc_isa_supported(int isa)
{
    if (!fc_isa_compiled(isa))
        return 0;
#if FC_MULTI_ISA
    /* libgcc's checks include the operating system's support for the wider
     * registers (XGETBV), as target_clones' resolver does. */
    __builtin_cpu_init();
    switch (isa) {
    case FC_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") != 0;
    case FC_ISA_AVX2:
        /* arch=haswell may use AVX2, FMA, BMI1/2, F16C, LZCNT and MOVBE:
         * the x86-64-v3 level. */
        return __builtin_cpu_supports("x86-64-v3") != 0;
    default:
        return 1;
    }
#else
    return 1;
#endif
}

/* The variant target_clones' resolver picked, kept as the default so that no
 * machine changes speed: AVX-512 where the CPU has it, AVX2 only on a
 * processor libgcc identifies as Haswell by model (the resolver's one test
 * for its arch=haswell copy), else baseline. Every x86-64-v3 CPU can still be
 * switched to AVX2, and the tests run it there; but the matrix kernel's tile
 * is sized for AVX-512's 32 registers and spills on 16, so the AVX2 variant
 * measured slower than the baseline one (docs/engine.md). */
int fc_isa_best(void)
{
    if (fc_isa_supported(FC_ISA_AVX512))
        return FC_ISA_AVX512;
#if FC_MULTI_ISA
    if (fc_isa_supported(FC_ISA_AVX2) && __builtin_cpu_is("haswell"))
        return FC_ISA_AVX2;
#endif
    return FC_ISA_BASELINE;
}

int fc_set_isa(int isa)
{
    if (!fc_isa_supported(isa))
        return -1;
    atomic_store_explicit(&fc_isa_selected, isa, memory_order_relaxed);
    return 0;
}

int fc_get_isa(void)
{
    return fc_isa_in_use();
}

#if FC_MULTI_ISA
__attribute__((constructor)) static void fc_isa_at_load(void)
{
    fc_set_isa(fc_isa_best());
}
#endif
