/* OpenMP directives that vanish when the compiler has no OpenMP, so the kernels
 * build and run serially without it. A header: stands alone (see fastconv.h). */
#ifndef FC_OMP_H
#define FC_OMP_H

#ifdef _OPENMP
#define FC_PRAGMA(text) _Pragma(#text)
#define FC_OMP(directive) FC_PRAGMA(omp directive)
#else
#define FC_OMP(directive)
#endif

#endif
