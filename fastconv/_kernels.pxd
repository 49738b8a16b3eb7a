# C declarations of the kernels in src_c/ (see src_c/fastconv.h and the buffer
# shapes documented at each kernel's definition in the src_c/*.inc files).
from libc.stdint cimport int64_t


cdef extern from "fastconv.h" nogil:
    ctypedef struct fc_window:
        int64_t h, w
        int64_t kh, kw
        int64_t sh, sw
        int64_t ph, pw
        int64_t oh, ow

    int fc_openmp_enabled()
    void fc_set_num_threads(int n)
    int fc_get_num_threads()
    enum:
        FC_WINOGRAD_OFF
        FC_WINOGRAD_AUTO
        FC_WINOGRAD_ALWAYS
    void fc_set_winograd(int mode)
    int fc_winograd_enabled()
    int fc_isa_compiled(int isa)
    int fc_isa_supported(int isa)
    int fc_isa_best()
    int fc_get_isa()
    int fc_set_isa(int isa)

    void fc_im2col_f32(float *cols, const float *x, int64_t n_images, int64_t channels,
                       const fc_window *g, int64_t ld)
    void fc_im2col_f64(double *cols, const double *x, int64_t n_images, int64_t channels,
                       const fc_window *g, int64_t ld)
    void fc_col2im_f32(float *x, const float *cols, int64_t n_images, int64_t channels,
                       const fc_window *g, int64_t ld)
    void fc_col2im_f64(double *x, const double *cols, int64_t n_images, int64_t channels,
                       const fc_window *g, int64_t ld)
    int fc_conv_forward_f32(float *y, const float *x, const float *weight, const float *bias,
                            int64_t n_images, int64_t channels, int64_t filters,
                            int64_t groups, const fc_window *g)
    int fc_conv_forward_f64(double *y, const double *x, const double *weight,
                            const double *bias, int64_t n_images, int64_t channels,
                            int64_t filters, int64_t groups, const fc_window *g)
    enum:
        FC_CONV_SHIFTED
        FC_CONV_UNFOLDED
        FC_CONV_WINOGRAD
        FC_CONV_DEPTHWISE
    int fc_conv_path_f32(int64_t n_images, int64_t channels, int64_t filters, int64_t groups, const fc_window *g)
    int fc_conv_path_f64(int64_t n_images, int64_t channels, int64_t filters, int64_t groups, const fc_window *g)
    int fc_conv_backward_f32(float *dx, float *dweight, float *dbias, const float *dy,
                             const float *x, const float *weight, int64_t n_images,
                             int64_t channels, int64_t filters, int64_t groups,
                             const fc_window *g)
    int fc_conv_backward_f64(double *dx, double *dweight, double *dbias, const double *dy,
                             const double *x, const double *weight, int64_t n_images,
                             int64_t channels, int64_t filters, int64_t groups,
                             const fc_window *g)
    void fc_channel_sums_f32(float *sums, const float *y,
                             int64_t n_images, int64_t channels, int64_t plane)
    void fc_channel_sums_f64(double *sums, const double *y,
                             int64_t n_images, int64_t channels, int64_t plane)

    int fc_linear_forward_f32(float *y, const float *x, const float *weight, const float *bias,
                              int64_t n, int64_t in_f, int64_t out_f)
    int fc_linear_forward_f64(double *y, const double *x, const double *weight,
                              const double *bias, int64_t n, int64_t in_f, int64_t out_f)
    int fc_linear_backward_f32(float *dx, float *dweight, float *dbias, const float *dy,
                               const float *x, const float *weight, int64_t n, int64_t in_f,
                               int64_t out_f)
    int fc_linear_backward_f64(double *dx, double *dweight, double *dbias, const double *dy,
                               const double *x, const double *weight, int64_t n,
                               int64_t in_f, int64_t out_f)

    void fc_maxpool_forward_f32(float *y, int64_t *argmax, const float *x, int64_t planes,
                                const fc_window *g)
    void fc_maxpool_forward_f64(double *y, int64_t *argmax, const double *x, int64_t planes,
                                const fc_window *g)
    int64_t fc_maxpool_backward_f32(float *dx, const float *dy, const int64_t *argmax,
                                    int64_t planes, int64_t in_plane, int64_t out_plane)
    int64_t fc_maxpool_backward_f64(double *dx, const double *dy, const int64_t *argmax,
                                    int64_t planes, int64_t in_plane, int64_t out_plane)
    void fc_avgpool_forward_f32(float *y, const float *x, int64_t planes, const fc_window *g)
    void fc_avgpool_forward_f64(double *y, const double *x, int64_t planes, const fc_window *g)
    void fc_avgpool_backward_f32(float *dx, const float *dy, int64_t planes, const fc_window *g)
    void fc_avgpool_backward_f64(double *dx, const double *dy, int64_t planes, const fc_window *g)

    void fc_batchnorm_forward_train_f32(float *y, double *stats, float *mean, float *var,
                                        float *inv_std, const float *x, const float *weight,
                                        const float *bias, double eps, int64_t n_images,
                                        int64_t channels, int64_t plane, int relu)
    void fc_batchnorm_forward_train_f64(double *y, double *stats, double *mean, double *var,
                                        double *inv_std, const double *x, const double *weight,
                                        const double *bias, double eps, int64_t n_images,
                                        int64_t channels, int64_t plane, int relu)
    void fc_batchnorm_forward_eval_f32(float *y, const float *x, const float *weight,
                                       const float *bias, const float *running_mean,
                                       const float *running_var, float eps, int64_t n_images,
                                       int64_t channels, int64_t plane)
    void fc_batchnorm_forward_eval_f64(double *y, const double *x, const double *weight,
                                       const double *bias, const double *running_mean,
                                       const double *running_var, double eps, int64_t n_images,
                                       int64_t channels, int64_t plane)
    void fc_batchnorm_backward_f32(float *dx, float *dweight, float *dbias, const float *dy,
                                   const float *x, const double *stats, const float *weight,
                                   const float *inv_std, int64_t n_images, int64_t channels,
                                   int64_t plane, int relu, int through_relu)
    void fc_batchnorm_backward_f64(double *dx, double *dweight, double *dbias, const double *dy,
                                   const double *x, const double *stats, const double *weight,
                                   const double *inv_std, int64_t n_images, int64_t channels,
                                   int64_t plane, int relu, int through_relu)

    void fc_channel_epilogue_f32(float *y, const float *scale, const float *shift, int64_t n_images,
                                 int64_t channels, int64_t plane, int relu)
    void fc_channel_epilogue_f64(double *y, const double *scale, const double *shift, int64_t n_images,
                                 int64_t channels, int64_t plane, int relu)
    void fc_epilogue_maxpool_f32(float *out, const float *y, const float *scale, const float *shift,
                                 int64_t n_images, int64_t channels, const fc_window *g, int relu)
    void fc_epilogue_maxpool_f64(double *out, const double *y, const double *scale, const double *shift,
                                 int64_t n_images, int64_t channels, const fc_window *g, int relu)
    void fc_relu_forward_f32(float *y, const float *x, int64_t size)
    void fc_relu_forward_f64(double *y, const double *x, int64_t size)
    void fc_relu_backward_f32(float *dx, const float *dy, const float *y, int64_t size)
    void fc_relu_backward_f64(double *dx, const double *dy, const double *y, int64_t size)
    void fc_relu6_forward_f32(float *y, const float *x, int64_t size)
    void fc_relu6_forward_f64(double *y, const double *x, int64_t size)
    void fc_relu6_backward_f32(float *dx, const float *dy, const float *y, int64_t size)
    void fc_relu6_backward_f64(double *dx, const double *dy, const double *y, int64_t size)

    void fc_adam_update_f32(float *param, const float *grad, float *exp_avg, float *exp_avg_sq,
                            int64_t size, double one_minus_beta1, double beta2,
                            double one_minus_beta2, double bias_correction2_sqrt, double eps,
                            double step_size)
    void fc_adam_update_f64(double *param, const double *grad, double *exp_avg,
                            double *exp_avg_sq, int64_t size, double one_minus_beta1,
                            double beta2, double one_minus_beta2,
                            double bias_correction2_sqrt, double eps, double step_size)

    void fc_gelu_forward_f32(float *y, const float *x, int64_t size)
    void fc_gelu_forward_f64(double *y, const double *x, int64_t size)
    void fc_gelu_backward_f32(float *dx, const float *dy, const float *x, int64_t size)
    void fc_gelu_backward_f64(double *dx, const double *dy, const double *x, int64_t size)
