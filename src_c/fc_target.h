/* Instruction sets the hot loops are compiled for. A header: stands alone (see
 * fastconv.h). */
#ifndef FC_TARGET_H
#define FC_TARGET_H

/* target_clones compiles a function for AVX-512, AVX2 and baseline x86-64 and
 * picks one at load time, so one build runs at full vector width on the
 * machine it lands on. Only GCC on x86-64 does it; a debug build keeps one
 * copy for the debugger. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FASTCONV_DEBUG)
#define FC_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define FC_CLONES
#endif
#define FC_INLINE static inline __attribute__((always_inline))

#endif
