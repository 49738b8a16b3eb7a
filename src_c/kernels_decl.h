/* Prototypes of the kernels for one float type; fastconv.h includes this file once
 * per type with REAL and FC_NAME defined. Buffer shapes are documented at each
 * definition in kernels_impl.h. No include guard on purpose. */

void FC_NAME(im2col)(REAL *cols, const REAL *x, int64_t n_images, int64_t channels,
                     const fc_window *g, int64_t ld);
void FC_NAME(col2im)(REAL *x, const REAL *cols, int64_t n_images, int64_t channels,
                     const fc_window *g, int64_t ld);
void FC_NAME(channel_sums)(REAL *sums, const REAL *y,
                           int64_t n_images, int64_t channels, int64_t plane);

int FC_NAME(conv_forward)(REAL *y, const REAL *x, const REAL *weight, const REAL *bias,
                          int64_t n_images, int64_t channels, int64_t filters,
                          const fc_window *g);
int FC_NAME(conv_uses_winograd)(int64_t channels, int64_t filters, const fc_window *g);
int FC_NAME(conv_backward)(REAL *dx, REAL *dweight, REAL *dbias, const REAL *dy,
                           const REAL *x, const REAL *weight, int64_t n_images,
                           int64_t channels, int64_t filters, const fc_window *g);

int FC_NAME(linear_forward)(REAL *y, const REAL *x, const REAL *weight, const REAL *bias,
                            int64_t n, int64_t in_f, int64_t out_f);
int FC_NAME(linear_backward)(REAL *dx, REAL *dweight, REAL *dbias, const REAL *dy,
                             const REAL *x, const REAL *weight, int64_t n, int64_t in_f,
                             int64_t out_f);

void FC_NAME(maxpool_forward)(REAL *y, int64_t *argmax, const REAL *x, int64_t planes,
                              const fc_window *g);
int64_t FC_NAME(maxpool_backward)(REAL *dx, const REAL *dy, const int64_t *argmax,
                                  int64_t planes, int64_t in_plane, int64_t out_plane);
void FC_NAME(avgpool_forward)(REAL *y, const REAL *x, int64_t planes, const fc_window *g);
void FC_NAME(avgpool_backward)(REAL *dx, const REAL *dy, int64_t planes, const fc_window *g);

void FC_NAME(batchnorm_forward_train)(REAL *y, double *stats, REAL *mean, REAL *var,
                                      REAL *inv_std, const REAL *x, const REAL *weight,
                                      const REAL *bias, double eps, int64_t n_images,
                                      int64_t channels, int64_t plane, int relu);
void FC_NAME(batchnorm_forward_eval)(REAL *y, const REAL *x, const REAL *weight,
                                     const REAL *bias, const REAL *running_mean,
                                     const REAL *running_var, REAL eps, int64_t n_images,
                                     int64_t channels, int64_t plane);
void FC_NAME(batchnorm_backward)(REAL *dx, REAL *dweight, REAL *dbias, const REAL *dy,
                                 const REAL *x, const double *stats, const REAL *weight,
                                 const REAL *inv_std, int64_t n_images, int64_t channels,
                                 int64_t plane, int relu, int through_relu);

void FC_NAME(relu_forward)(REAL *y, const REAL *x, int64_t size);
void FC_NAME(relu_backward)(REAL *dx, const REAL *dy, const REAL *y, int64_t size);

void FC_NAME(adam_update)(REAL *param, const REAL *grad, REAL *exp_avg, REAL *exp_avg_sq,
                          int64_t size, double one_minus_beta1, double beta2,
                          double one_minus_beta2, double bias_correction2_sqrt, double eps,
                          double step_size);
