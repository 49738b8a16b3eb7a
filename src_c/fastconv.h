/* C kernels of fastconv: the interface the Cython wrapper (fastconv/_kernels.pyx) calls.
 *
 * Every kernel exists for float (suffix _f32) and double (suffix _f64); both are
 * generated from one body written in REAL and FC_NAME. All sizes and indices are
 * 64-bit. Kernels write into buffers the caller allocated and never print or
 * exit. They trust their arguments: the wrapper validates everything a user can
 * pass, and a debug build (FASTCONV_DEBUG=1 or FASTCONV_SANITIZE=1 to setup.py)
 * checks the preconditions with assert; release builds define NDEBUG.
 *
 * Scratch memory. Most kernels allocate nothing. Four allocate scratch with
 * malloc/calloc on every call (plans and offset tables, and per-thread buffers
 * inside their parallel regions) and free it before they return:
 *   conv_forward, conv_backward, linear_forward, linear_backward.
 * Each returns 0 on success, or -1 when an allocation failed, in which case its
 * outputs are partly written and must be discarded; the wrapper raises
 * MemoryError on any nonzero status. maxpool_backward returns a count (see its
 * definition in pooling.inc) and conv_path a path's number; the others return
 * nothing.
 *
 * How src_c/ is laid out:
 *   *.h    headers that stand alone: each compiles by itself, in any order, and
 *          includes what it uses. They hold what does not depend on the float
 *          type: this interface (fastconv.h), the OpenMP and instruction-set
 *          macros (fc_omp.h, fc_target.h), the matrix kernel's tile sizes and
 *          thread-sharing helpers (gemm.h) and the convolution plan
 *          (conv_plan.h).
 *   *.inc  template bodies written in REAL and FC_NAME, one operation each:
 *          im2col, pooling, batchnorm, relu, optimizer (Adam), gemm (the
 *          register-tiled matrix kernel and its packing), winograd,
 *          depthwise, conv, linear, gelu and epilogue (a convolution's
 *          evaluation-mode output pass). Only the per-type .c files
 *          include them, with REAL and FC_NAME defined, in the order the .c
 *          files list (an .inc relies on the ones before it: gemm.inc before
 *          winograd.inc, depthwise.inc, conv.inc and linear.inc; im2col.inc,
 *          winograd.inc and depthwise.inc before conv.inc).
 *   *.c    kernels_f32.c and kernels_f64.c instantiate every .inc for float and
 *          double; threads.c holds the thread-count and Winograd switches,
 *          isa.c the choice of instruction-set variant.
 * Buffer shapes are documented at each kernel's definition in its .inc file.
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

/* Whether g is a window the kernels can take: positive sizes and strides,
 * padding not negative, and every window inside the padded plane. oh may be
 * smaller than the formula above (the wrapper gives a single window stride 1),
 * never larger. For the kernels' asserts. */
static inline int fc_window_valid(const fc_window *g)
{
    return g && g->h > 0 && g->w > 0 && g->kh > 0 && g->kw > 0 && g->sh > 0 && g->sw > 0
           && g->ph >= 0 && g->pw >= 0 && g->oh > 0 && g->ow > 0
           && (g->oh - 1) * g->sh + g->kh <= g->h + 2 * g->ph
           && (g->ow - 1) * g->sw + g->kw <= g->w + 2 * g->pw;
}

/* Threads used by the parallel loops; 1 when built without OpenMP. */
int fc_openmp_enabled(void);
void fc_set_num_threads(int n);
int fc_get_num_threads(void);
/* Threads worth starting for a loop touching `work` elements. */
int fc_threads_for(int64_t work);
/* Whether stride-1 3x3 convolutions go through Winograd F(2x2, 3x3) where its
 * cost model says it is faster (FC_WINOGRAD_AUTO, the default), all take the
 * direct kernel (FC_WINOGRAD_OFF), or all take Winograd whatever their size
 * (FC_WINOGRAD_ALWAYS, for the tests: the cost model never picks the narrow
 * layers and small planes where the transforms' edge cases lie). Any other
 * nonzero value means FC_WINOGRAD_AUTO; fc_winograd_enabled returns the mode. */
#define FC_WINOGRAD_OFF 0
#define FC_WINOGRAD_AUTO 1
#define FC_WINOGRAD_ALWAYS 2
void fc_set_winograd(int mode);
int fc_winograd_enabled(void);
/* Instruction-set variants of the hot loops (fc_target.h, isa.c), by index:
 * 0 baseline x86-64 (the only one off GCC on x86-64), 1 AVX2, 2 AVX-512.
 * Whether this build has variant isa; whether the CPU also runs it; the
 * default (the one in use after loading, see isa.c); the one in use, and a
 * switch to another, which returns -1 and changes nothing when the CPU does
 * not run it. */
int fc_isa_compiled(int isa);
int fc_isa_supported(int isa);
int fc_isa_best(void);
int fc_get_isa(void);
int fc_set_isa(int isa);

/* im2col.inc */
void fc_im2col_f32(float *cols, const float *x, int64_t n_images, int64_t channels,
                   const fc_window *g, int64_t ld);
void fc_im2col_f64(double *cols, const double *x, int64_t n_images, int64_t channels,
                   const fc_window *g, int64_t ld);

void fc_col2im_f32(float *x, const float *cols, int64_t n_images, int64_t channels,
                   const fc_window *g, int64_t ld);
void fc_col2im_f64(double *x, const double *cols, int64_t n_images, int64_t channels,
                   const fc_window *g, int64_t ld);

/* conv.inc (and winograd.inc, depthwise.inc); conv_forward and conv_backward
 * allocate scratch and return 0, or -1 when memory ran out. channels and
 * filters count the whole layer's; groups divides both. */
int fc_conv_forward_f32(float *y, const float *x, const float *weight, const float *bias,
                        int64_t n_images, int64_t channels, int64_t filters, int64_t groups,
                        const fc_window *g);
int fc_conv_forward_f64(double *y, const double *x, const double *weight,
                        const double *bias, int64_t n_images, int64_t channels,
                        int64_t filters, int64_t groups, const fc_window *g);

/* The path conv_forward takes: the matrix kernel on taps read from the padded
 * image (stride 1) or on unfolded columns (other strides), Winograd, or the
 * direct depthwise kernel (one input channel a group). */
#define FC_CONV_SHIFTED 0
#define FC_CONV_UNFOLDED 1
#define FC_CONV_WINOGRAD 2
#define FC_CONV_DEPTHWISE 3
int fc_conv_path_f32(int64_t n_images, int64_t channels, int64_t filters, int64_t groups, const fc_window *g);
int fc_conv_path_f64(int64_t n_images, int64_t channels, int64_t filters, int64_t groups, const fc_window *g);

int fc_conv_backward_f32(float *dx, float *dweight, float *dbias, const float *dy,
                         const float *x, const float *weight, int64_t n_images,
                         int64_t channels, int64_t filters, int64_t groups,
                         const fc_window *g);
int fc_conv_backward_f64(double *dx, double *dweight, double *dbias, const double *dy,
                         const double *x, const double *weight, int64_t n_images,
                         int64_t channels, int64_t filters, int64_t groups,
                         const fc_window *g);

void fc_channel_sums_f32(float *sums, const float *y, int64_t n_images, int64_t channels,
                         int64_t plane);
void fc_channel_sums_f64(double *sums, const double *y, int64_t n_images, int64_t channels,
                         int64_t plane);

/* linear.inc; both allocate scratch and return 0, or -1 when memory ran out. */
int fc_linear_forward_f32(float *y, const float *x, const float *weight, const float *bias,
                          int64_t n, int64_t in_f, int64_t out_f);
int fc_linear_forward_f64(double *y, const double *x, const double *weight,
                          const double *bias, int64_t n, int64_t in_f, int64_t out_f);

int fc_linear_backward_f32(float *dx, float *dweight, float *dbias, const float *dy,
                           const float *x, const float *weight, int64_t n, int64_t in_f,
                           int64_t out_f);
int fc_linear_backward_f64(double *dx, double *dweight, double *dbias, const double *dy,
                           const double *x, const double *weight, int64_t n, int64_t in_f,
                           int64_t out_f);

/* pooling.inc */
void fc_maxpool_forward_f32(float *y, int64_t *argmax, const float *x, int64_t planes,
                            const fc_window *g);
void fc_maxpool_forward_f64(double *y, int64_t *argmax, const double *x, int64_t planes,
                            const fc_window *g);

int64_t fc_maxpool_backward_f32(float *dx, const float *dy, const int64_t *argmax,
                                int64_t planes, int64_t in_plane, int64_t out_plane);
int64_t fc_maxpool_backward_f64(double *dx, const double *dy, const int64_t *argmax,
                                int64_t planes, int64_t in_plane, int64_t out_plane);

void fc_avgpool_forward_f32(float *y, const float *x, int64_t planes, const fc_window *g);
void fc_avgpool_forward_f64(double *y, const double *x, int64_t planes, const fc_window *g);

void fc_avgpool_backward_f32(float *dx, const float *dy, int64_t planes,
                             const fc_window *g);
void fc_avgpool_backward_f64(double *dx, const double *dy, int64_t planes,
                             const fc_window *g);

/* batchnorm.inc */
void fc_batchnorm_forward_train_f32(float *y, double *stats, float *mean, float *var,
                                    float *inv_std, const float *x, const float *weight,
                                    const float *bias, double eps, int64_t n_images,
                                    int64_t channels, int64_t plane, int relu);
void fc_batchnorm_forward_train_f64(double *y, double *stats, double *mean, double *var,
                                    double *inv_std, const double *x, const double *weight,
                                    const double *bias, double eps, int64_t n_images,
                                    int64_t channels, int64_t plane, int relu);

void fc_batchnorm_forward_eval_f32(float *y, const float *x, const float *weight,
                                   const float *bias, const float *running_mean,
                                   const float *running_var, float eps, int64_t n_images,
                                   int64_t channels, int64_t plane);
void fc_batchnorm_forward_eval_f64(double *y, const double *x, const double *weight,
                                   const double *bias, const double *running_mean,
                                   const double *running_var, double eps, int64_t n_images,
                                   int64_t channels, int64_t plane);

void fc_batchnorm_backward_f32(float *dx, float *dweight, float *dbias, const float *dy,
                               const float *x, const double *stats, const float *weight,
                               const float *inv_std, int64_t n_images, int64_t channels,
                               int64_t plane, int relu, int through_relu);
void fc_batchnorm_backward_f64(double *dx, double *dweight, double *dbias, const double *dy,
                               const double *x, const double *stats, const double *weight,
                               const double *inv_std, int64_t n_images, int64_t channels,
                               int64_t plane, int relu, int through_relu);

/* epilogue.inc: in place on y (n_images, channels, plane); scale and shift
 * (channels,) are both NULL or neither. */
void fc_channel_epilogue_f32(float *y, const float *scale, const float *shift, int64_t n_images,
                             int64_t channels, int64_t plane, int relu);
void fc_channel_epilogue_f64(double *y, const double *scale, const double *shift, int64_t n_images,
                             int64_t channels, int64_t plane, int relu);
/* out (n_images, channels, OH, OW) = the max-pool with window g of the
 * epilogue's values of y (n_images, channels, H, W), y left unchanged. */
void fc_epilogue_maxpool_f32(float *out, const float *y, const float *scale, const float *shift,
                             int64_t n_images, int64_t channels, const fc_window *g, int relu);
void fc_epilogue_maxpool_f64(double *out, const double *y, const double *scale, const double *shift,
                             int64_t n_images, int64_t channels, const fc_window *g, int relu);

/* relu.inc */
void fc_relu_forward_f32(float *y, const float *x, int64_t size);
void fc_relu_forward_f64(double *y, const double *x, int64_t size);

void fc_relu_backward_f32(float *dx, const float *dy, const float *y, int64_t size);
void fc_relu_backward_f64(double *dx, const double *dy, const double *y, int64_t size);

void fc_relu6_forward_f32(float *y, const float *x, int64_t size);
void fc_relu6_forward_f64(double *y, const double *x, int64_t size);

void fc_relu6_backward_f32(float *dx, const float *dy, const float *y, int64_t size);
void fc_relu6_backward_f64(double *dx, const double *dy, const double *y, int64_t size);

/* optimizer.inc */
void fc_adam_update_f32(float *param, const float *grad, float *exp_avg, float *exp_avg_sq,
                        int64_t size, double one_minus_beta1, double beta2,
                        double one_minus_beta2, double bias_correction2_sqrt, double eps,
                        double step_size);
void fc_adam_update_f64(double *param, const double *grad, double *exp_avg,
                        double *exp_avg_sq, int64_t size, double one_minus_beta1,
                        double beta2, double one_minus_beta2, double bias_correction2_sqrt,
                        double eps, double step_size);

/* gelu.inc */
void fc_gelu_forward_f32(float *y, const float *x, int64_t size);
void fc_gelu_forward_f64(double *y, const double *x, int64_t size);

void fc_gelu_backward_f32(float *dx, const float *dy, const float *x, int64_t size);
void fc_gelu_backward_f64(double *dx, const double *dy, const double *x, int64_t size);

#endif
