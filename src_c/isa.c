/* Which instruction-set variant of the hot loops runs (see fc_target.h):
 * compiled once, not per float type. */
#include <stdatomic.h>

#include "fastconv.h"
#include "fc_target.h"

/* Baseline until the library's constructor below picks the widest variant
 * the CPU runs; only ever set to a variant it runs. */
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
         * the x86-64-v3 level. (target_clones' resolver asked for a Haswell
         * model by name, so other AVX2 processors ran the baseline.) */
        return __builtin_cpu_supports("x86-64-v3") != 0;
    default:
        return 1;
    }
#else
    return 1;
#endif
}

int fc_isa_best(void)
{
    for (int isa = FC_ISA_COUNT - 1; isa > FC_ISA_BASELINE; isa--)
        if (fc_isa_supported(isa))
            return isa;
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
