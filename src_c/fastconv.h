/* C kernels of fastconv: the interface the Cython wrapper (fastconv/_kernels.pyx) calls.
 *
 * Every kernel exists for float (suffix _f32) and double (suffix _f64); both are
 * generated from one body in kernels_impl.h. Kernels write into buffers the caller
 * allocated, never allocate, print or exit, and trust their arguments: the wrapper
 * validates everything a user can pass. All sizes and indices are 64-bit.
 */
#ifndef FASTCONV_H
#define FASTCONV_H

#include <stdint.h>

/* A sliding window over planes of h x w pixels, padded by ph rows and pw columns on
 * each side; oh = 1 + (h + 2*ph - kh) / sh and ow likewise. */
typedef struct {
    int64_t h, w;
    int64_t kh, kw;
    int64_t sh, sw;
    int64_t ph, pw;
    int64_t oh, ow;
} fc_window;

/* Threads used by the parallel loops; 1 when built without OpenMP. */
int fc_openmp_enabled(void);
void fc_set_num_threads(int n);
int fc_get_num_threads(void);
/* Threads worth starting for a loop touching `work` elements. */
int fc_threads_for(int64_t work);
/* Whether stride-1 3x3 convolutions go through Winograd F(2x2, 3x3) where its
 * cost model says it is faster (the default), or all take the direct kernel. */
void fc_set_winograd(int enabled);
int fc_winograd_enabled(void);

#define REAL float
#define FC_NAME(name) fc_##name##_f32
#include "kernels_decl.h"
#undef REAL
#undef FC_NAME

#define REAL double
#define FC_NAME(name) fc_##name##_f64
#include "kernels_decl.h"
#undef REAL
#undef FC_NAME

#endif
