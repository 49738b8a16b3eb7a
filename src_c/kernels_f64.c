/* The double instance of every kernel: the template bodies (.inc, see fastconv.h)
 * compiled with REAL = double and names ending in _f64. kernels_f32.c and
 * kernels_f64.c list the same files in the same order; an .inc relies on the
 * ones above it. */
#include "fastconv.h"

#define REAL double
#define FC_NAME(name) fc_##name##_f64

#include "im2col.inc"
#include "pooling.inc"
#include "batchnorm.inc"
#include "relu.inc"
#include "optimizer.inc"
#include "gemm.inc"
#include "winograd.inc"
#include "depthwise.inc"
#include "conv.inc"
#include "linear.inc"
#include "gelu.inc"
#include "epilogue.inc"
