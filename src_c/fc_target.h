/* Instruction sets the hot loops are compiled for, and the switch between
 * them. A header: stands alone (see fastconv.h).
 *
 * Each hot loop is written once, as an always-inline body, and compiled
 * into one function per variant: AVX-512 (FC_TARGET_AVX512), AVX2
 * (FC_TARGET_AVX2) and baseline x86-64, the three targets target_clones
 * used to produce. A table of the three, indexed by the variant in use, sits
 * behind a function of the loop's name, so callers do not change. isa.c
 * picks the variant target_clones would have picked when the library loads
 * (the widest, but for AVX2, see fc_isa_best); fc_set_isa
 * switches, so that the tests run every variant the machine supports rather
 * than only the one it would pick.
 *
 * Only GCC on x86-64 builds the variants; any other compiler or CPU gets the
 * baseline one alone, compiled as plain functions. */
#ifndef FC_TARGET_H
#define FC_TARGET_H

#include <stdatomic.h>

/* The variants, by index: the order of fastconv._kernels.ISA_NAMES. */
enum { FC_ISA_BASELINE = 0, FC_ISA_AVX2 = 1, FC_ISA_AVX512 = 2, FC_ISA_COUNT = 3 };

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FC_MULTI_ISA 1
#else
#define FC_MULTI_ISA 0
#endif

/* The AVX2 variant is -march=haswell's instruction sets (GCC 12's list)
 * with the default tuning, which is what target_clones' "arch=haswell" copy
 * was compiled with (the variants' code matches the copies' up to register
 * allocation and scheduling). "arch=haswell" itself cannot be used: GCC
 * refuses to inline a function of another arch, even an always-inline one,
 * and the bodies and their helpers are compiled for the default arch
 * (target_clones escaped this by inlining before it cloned). */
#define FC_TARGET_AVX2                                                                    \
    __attribute__((target("avx2,bmi,bmi2,crc32,cx16,f16c,fma,fsgsbase,hle,lzcnt,movbe,"  \
                          "mwait,pclmul,popcnt,rdrnd,sahf,xsave,xsaveopt")))
#define FC_TARGET_AVX512 __attribute__((target("avx512f")))
/* noinline: GCC would otherwise split each variant's early return off into
 * a part of its own, which target_clones' copies never were. */
#define FC_VARIANT_ATTRIBUTES __attribute__((noinline))

#define FC_INLINE static inline __attribute__((always_inline))

/* The variant in use (isa.c); always one the CPU runs. */
extern atomic_int fc_isa_selected;

FC_INLINE int fc_isa_in_use(void)
{
    return atomic_load_explicit(&fc_isa_selected, memory_order_relaxed);
}

/* FC_VARIANTS(ret, name, (params), (args), attributes...) after
 *     FC_INLINE ret name_body(params) { ... }
 * defines name_avx512, name_avx2 and name_baseline, each the body compiled
 * for its target with the given attributes (optimize(...), say), and
 * `static ret name(params)`, which calls the one in use. FC_VARIANTS_VOID is
 * the same for a body that returns nothing. args names the parameters in
 * order. */
#define FC_VARIANTS(ret, name, params, args, ...) \
    FC_VARIANTS_(ret, return, name, params, args, __VA_ARGS__)
#define FC_VARIANTS_VOID(name, params, args, ...) \
    FC_VARIANTS_(void, , name, params, args, __VA_ARGS__)

#if FC_MULTI_ISA
#define FC_VARIANTS_(ret, ret_kw, name, params, args, ...)                                    \
    FC_TARGET_AVX512 FC_VARIANT_ATTRIBUTES __VA_ARGS__ static ret name##_avx512 params        \
    {                                                                                        \
        ret_kw name##_body args;                                                             \
    }                                                                                        \
    FC_TARGET_AVX2 FC_VARIANT_ATTRIBUTES __VA_ARGS__ static ret name##_avx2 params            \
    {                                                                                        \
        ret_kw name##_body args;                                                             \
    }                                                                                        \
    FC_VARIANT_ATTRIBUTES __VA_ARGS__ static ret name##_baseline params                      \
    {                                                                                        \
        ret_kw name##_body args;                                                             \
    }                                                                                        \
    static ret (*const name##_by_isa[FC_ISA_COUNT]) params = {                               \
        [FC_ISA_BASELINE] = name##_baseline,                                                 \
        [FC_ISA_AVX2] = name##_avx2,                                                         \
        [FC_ISA_AVX512] = name##_avx512,                                                     \
    };                                                                                       \
    FC_INLINE ret name params                                                                \
    {                                                                                        \
        ret_kw name##_by_isa[fc_isa_in_use()] args;                                          \
    }
#else
#define FC_VARIANTS_(ret, ret_kw, name, params, args, ...)                                    \
    __VA_ARGS__ static ret name params                                                       \
    {                                                                                        \
        ret_kw name##_body args;                                                             \
    }
#endif

#endif
