/* The float instance of the kernels in kernels_impl.h and conv_impl.h. */
#include "fastconv.h"

#define REAL float
#define FC_NAME(name) fc_##name##_f32
#include "kernels_impl.h"
#include "conv_impl.h"
