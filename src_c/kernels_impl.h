/* Body of every kernel, written once for both float types: kernels_f32.c and
 * kernels_f64.c include it with REAL and FC_NAME defined.
 *
 * Layouts follow fastconv/reference.py: images are NCHW and contiguous, and
 * "cols" (im2col's result) has row c*KH*KW + i*KW + j for kernel tap (i, j) of
 * channel c and column n*OH*OW + oh*OW + ow for output pixel (oh, ow) of image n.
 *
 * Backward kernels that scatter (col2im, pooling backward) accumulate with += into
 * a buffer the caller zeroed; every parallel loop gives each thread whole output
 * planes, so no two threads ever add into the same element.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "fc_omp.h"
#include "fc_target.h"

/* The square root in REAL's own precision, one rounding, as NumPy's. */
#define REAL_SQRT(x) _Generic((x), float: sqrtf, default: sqrt)(x)

/* Output positions o in [*lo, *hi) of a window sweep whose input position
 * o*stride + offset lands inside [0, n_in); clipped to [0, n_out). */
static void valid_range(int64_t n_out, int64_t stride, int64_t offset, int64_t n_in,
                        int64_t *lo, int64_t *hi)
{
    int64_t first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    int64_t last_in = n_in - 1 - offset;
    int64_t end = last_in < 0 ? 0 : last_in / stride + 1;
    if (first > n_out)
        first = n_out;
    if (end > n_out)
        end = n_out;
    if (end < first)
        end = first;
    *lo = first;
    *hi = end;
}

/* dst: (OH, OW), the values kernel tap (i, j) sees over one input plane (H, W),
 * zero where it falls into the padding. */
static void unfold_tap(REAL *dst, const REAL *plane, const fc_window *g, int64_t i, int64_t j)
{
    int64_t lo, hi;
    valid_range(g->ow, g->sw, j - g->pw, g->w, &lo, &hi);
    for (int64_t oh = 0; oh < g->oh; oh++, dst += g->ow) {
        const int64_t ih = oh * g->sh - g->ph + i;
        if (ih < 0 || ih >= g->h) {
            for (int64_t ow = 0; ow < g->ow; ow++)
                dst[ow] = 0;
            continue;
        }
        /* Input column of output column ow is ow*sw + base. */
        const REAL *row = plane + ih * g->w;
        const int64_t base = j - g->pw;
        for (int64_t ow = 0; ow < lo; ow++)
            dst[ow] = 0;
        if (g->sw == 1) {
            for (int64_t ow = lo; ow < hi; ow++)
                dst[ow] = row[ow + base];
        } else {
            for (int64_t ow = lo; ow < hi; ow++)
                dst[ow] = row[ow * g->sw + base];
        }
        for (int64_t ow = hi; ow < g->ow; ow++)
            dst[ow] = 0;
    }
}

/* plane: (H, W) += the values src (OH, OW) of kernel tap (i, j); the adjoint of
 * unfold_tap, values falling into the padding are dropped. */
static void fold_tap(REAL *plane, const REAL *src, const fc_window *g, int64_t i, int64_t j)
{
    int64_t lo, hi;
    valid_range(g->ow, g->sw, j - g->pw, g->w, &lo, &hi);
    for (int64_t oh = 0; oh < g->oh; oh++, src += g->ow) {
        const int64_t ih = oh * g->sh - g->ph + i;
        if (ih < 0 || ih >= g->h)
            continue;
        REAL *row = plane + ih * g->w;
        const int64_t base = j - g->pw;
        if (g->sw == 1) {
            for (int64_t ow = lo; ow < hi; ow++)
                row[ow + base] += src[ow];
        } else {
            for (int64_t ow = lo; ow < hi; ow++)
                row[ow * g->sw + base] += src[ow];
        }
    }
}

/* cols: (C*KH*KW rows, row stride ld), image n filling columns n*OH*OW to
 *       (n+1)*OH*OW - 1 (ld >= n_images*OH*OW);
 * x:    (n_images, C, H, W). */
void FC_NAME(im2col)(REAL *cols, const REAL *x, int64_t n_images, int64_t channels,
                     const fc_window *g, int64_t ld)
{
    const int64_t taps = g->kh * g->kw;
    const int64_t rows = channels * taps;
    const int64_t out_plane = g->oh * g->ow;
    const int64_t in_plane = g->h * g->w;
    FC_OMP(parallel for collapse(2) schedule(static)
           num_threads(fc_threads_for(rows * n_images * out_plane)))
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t n = 0; n < n_images; n++) {
            const int64_t c = r / taps, i = r % taps / g->kw, j = r % g->kw;
            unfold_tap(cols + r * ld + n * out_plane, x + (n * channels + c) * in_plane,
                       g, i, j);
        }
    }
}

/* x:    (n_images, C, H, W), accumulated into;
 * cols: laid out as in im2col, row stride ld. */
void FC_NAME(col2im)(REAL *x, const REAL *cols, int64_t n_images, int64_t channels,
                     const fc_window *g, int64_t ld)
{
    const int64_t taps = g->kh * g->kw;
    const int64_t out_plane = g->oh * g->ow;
    const int64_t in_plane = g->h * g->w;
    const int64_t planes = n_images * channels;
    /* One thread per (image, channel) plane: the taps of a plane overlap, so
     * splitting any finer would race. */
    FC_OMP(parallel for schedule(static)
           num_threads(fc_threads_for(planes * taps * out_plane)))
    for (int64_t p = 0; p < planes; p++) {
        const int64_t n = p / channels, c = p % channels;
        for (int64_t t = 0; t < taps; t++)
            fold_tap(x + p * in_plane, cols + (c * taps + t) * ld + n * out_plane,
                     g, t / g->kw, t % g->kw);
    }
}

/* sums: (channels,), the sum over images and pixels of y (n_images, channels, plane),
 * accumulated in double. */
void FC_NAME(channel_sums)(REAL *sums, const REAL *y,
                           int64_t n_images, int64_t channels, int64_t plane)
{
    FC_OMP(parallel for schedule(static)
           num_threads(fc_threads_for(n_images * channels * plane)))
    for (int64_t c = 0; c < channels; c++) {
        double total = 0.0;
        for (int64_t n = 0; n < n_images; n++) {
            const REAL *src = y + (n * channels + c) * plane;
            FC_OMP(simd reduction(+:total))
            for (int64_t q = 0; q < plane; q++)
                total += src[q];
        }
        sums[c] = (REAL)total;
    }
}

/* Window taps [*lo, *hi) that land inside [0, n_in) for a window of k taps
 * starting at input position start (negative inside the padding). */
static void taps_inside(int64_t start, int64_t k, int64_t n_in, int64_t *lo, int64_t *hi)
{
    *lo = start < 0 ? -start : 0;
    *hi = n_in - start < k ? n_in - start : k;
}

/* y, argmax: (planes, OH, OW); x: (planes, H, W).
 * argmax holds ih*W + iw of each window's maximum, the first in row-major window
 * order, a NaN beating any number. The padding counts as -inf, so a window whose
 * values are all -inf reports its first tap even when that tap is padding (this
 * matches numpy.argmax over the padded window in reference.py). */
/* Whether v replaces best as a window's maximum: larger, or the first NaN. */
static inline int beats(REAL v, REAL best)
{
    return v > best || (isnan(v) && !isnan(best));
}

/* The common 2x2 window, stride 2, no padding: the four taps read directly,
 * without the general loop's clipping of each window to the plane. */
static void maxpool_2x2(REAL *y, int64_t *argmax, const REAL *src, const fc_window *g)
{
    for (int64_t oh = 0; oh < g->oh; oh++) {
        const int64_t top = 2 * oh * g->w;
        for (int64_t ow = 0; ow < g->ow; ow++) {
            const int64_t at0 = top + 2 * ow;
            const int64_t at[4] = {at0, at0 + 1, at0 + g->w, at0 + g->w + 1};
            REAL best = src[at[0]];
            int64_t best_at = at[0];
            for (int t = 1; t < 4; t++) {
                if (beats(src[at[t]], best)) {
                    best = src[at[t]];
                    best_at = at[t];
                }
            }
            y[oh * g->ow + ow] = best;
            argmax[oh * g->ow + ow] = best_at;
        }
    }
}

/* maxpool_2x2 for a plane without NaN, where the first maximum needs no NaN
 * test: plain compares and selects, half the work of beats'. The selects are
 * written as max and as a mask so that GCC emits no branch: on ReLU outputs
 * the winning tap is unpredictable, and a branch on it made the pass 3.9x
 * slower (3.3 ms against 0.85 ms on a 128x32x28x28 batch, 2 threads). GCC
 * vectorizes the scan for NaN, not the selects with their int64 argmax.
 * Returns 0, having written nothing, when the plane holds a NaN. */
FC_CLONES static int maxpool_2x2_no_nan(REAL *y, int64_t *argmax, const REAL *src,
                                        const fc_window *g)
{
    int has_nan = 0;
    for (int64_t k = 0; k < 2 * g->oh * g->w; k++)
        has_nan |= src[k] != src[k];
    if (has_nan)
        return 0;
    for (int64_t oh = 0; oh < g->oh; oh++) {
        const int64_t top = 2 * oh * g->w;
        const REAL *row0 = src + top, *row1 = row0 + g->w;
        REAL *out = y + oh * g->ow;
        int64_t *out_at = argmax + oh * g->ow;
        for (int64_t ow = 0; ow < g->ow; ow++) {
            const REAL a = row0[2 * ow], b = row0[2 * ow + 1];
            const REAL c = row1[2 * ow], d = row1[2 * ow + 1];
            /* Ties go to the earlier tap: only a strictly larger value wins. */
            const REAL ab = b > a ? b : a, cd = d > c ? d : c;
            const int64_t at_ab = b > a, at_cd = g->w + (d > c);
            const int64_t lower = -(int64_t)(cd > ab); /* all ones or zero */
            out[ow] = cd > ab ? cd : ab;
            out_at[ow] = top + 2 * ow + (at_ab ^ ((at_ab ^ at_cd) & lower));
        }
    }
    return 1;
}

void FC_NAME(maxpool_forward)(REAL *y, int64_t *argmax, const REAL *x, int64_t planes,
                              const fc_window *g)
{
    const int64_t in_plane = g->h * g->w;
    const int64_t out_plane = g->oh * g->ow;
    const int two_by_two = g->kh == 2 && g->kw == 2 && g->sh == 2 && g->sw == 2
                           && g->ph == 0 && g->pw == 0 && g->oh > 1 && g->ow > 1;
    FC_OMP(parallel for schedule(static)
           num_threads(fc_threads_for(planes * in_plane)))
    for (int64_t p = 0; p < planes; p++) {
        if (two_by_two) {
            if (!maxpool_2x2_no_nan(y + p * out_plane, argmax + p * out_plane, x + p * in_plane, g))
                maxpool_2x2(y + p * out_plane, argmax + p * out_plane, x + p * in_plane, g);
            continue;
        }
        const REAL *src = x + p * in_plane;
        for (int64_t oh = 0; oh < g->oh; oh++) {
            const int64_t top = oh * g->sh - g->ph;
            int64_t i_lo, i_hi;
            taps_inside(top, g->kh, g->h, &i_lo, &i_hi);
            for (int64_t ow = 0; ow < g->ow; ow++) {
                const int64_t left = ow * g->sw - g->pw;
                int64_t j_lo, j_hi;
                taps_inside(left, g->kw, g->w, &j_lo, &j_hi);
                REAL best = -INFINITY;
                int64_t best_at = top * g->w + left;
                for (int64_t i = i_lo; i < i_hi; i++) {
                    for (int64_t j = j_lo; j < j_hi; j++) {
                        const int64_t at = (top + i) * g->w + left + j;
                        const REAL v = src[at];
                        if (beats(v, best)) {
                            best = v;
                            best_at = at;
                        }
                    }
                }
                y[p * out_plane + oh * g->ow + ow] = best;
                argmax[p * out_plane + oh * g->ow + ow] = best_at;
            }
        }
    }
}

/* dx: (planes, in_plane), accumulated into; dy, argmax: (planes, out_plane).
 * An argmax value outside [0, in_plane) is skipped and counted: the count is
 * returned, so the caller can reject argmax without a pass of its own. */
int64_t FC_NAME(maxpool_backward)(REAL *dx, const REAL *dy, const int64_t *argmax,
                                  int64_t planes, int64_t in_plane, int64_t out_plane)
{
    int64_t outside = 0;
    FC_OMP(parallel for schedule(static) reduction(+:outside)
           num_threads(fc_threads_for(planes * out_plane)))
    for (int64_t p = 0; p < planes; p++) {
        REAL *dst = dx + p * in_plane;
        const REAL *src = dy + p * out_plane;
        const int64_t *at = argmax + p * out_plane;
        for (int64_t q = 0; q < out_plane; q++) {
            if ((uint64_t)at[q] < (uint64_t)in_plane)
                dst[at[q]] += src[q];
            else
                outside++;
        }
    }
    return outside;
}

/* The divisor of average pooling: the whole window, padding included. */
static REAL window_area(const fc_window *g)
{
    return (REAL)((double)g->kh * (double)g->kw);
}

/* y: (planes, OH, OW); x: (planes, H, W). */
void FC_NAME(avgpool_forward)(REAL *y, const REAL *x, int64_t planes, const fc_window *g)
{
    const int64_t in_plane = g->h * g->w;
    const int64_t out_plane = g->oh * g->ow;
    const REAL area = window_area(g);
    FC_OMP(parallel for schedule(static)
           num_threads(fc_threads_for(planes * in_plane)))
    for (int64_t p = 0; p < planes; p++) {
        const REAL *src = x + p * in_plane;
        for (int64_t oh = 0; oh < g->oh; oh++) {
            const int64_t top = oh * g->sh - g->ph;
            int64_t i_lo, i_hi;
            taps_inside(top, g->kh, g->h, &i_lo, &i_hi);
            for (int64_t ow = 0; ow < g->ow; ow++) {
                const int64_t left = ow * g->sw - g->pw;
                int64_t j_lo, j_hi;
                taps_inside(left, g->kw, g->w, &j_lo, &j_hi);
                REAL total = 0;
                for (int64_t i = i_lo; i < i_hi; i++)
                    for (int64_t j = j_lo; j < j_hi; j++)
                        total += src[(top + i) * g->w + left + j];
                y[p * out_plane + oh * g->ow + ow] = total / area;
            }
        }
    }
}

/* dx: (planes, H, W), accumulated into; dy: (planes, OH, OW). */
void FC_NAME(avgpool_backward)(REAL *dx, const REAL *dy, int64_t planes, const fc_window *g)
{
    const int64_t in_plane = g->h * g->w;
    const int64_t out_plane = g->oh * g->ow;
    const REAL area = window_area(g);
    FC_OMP(parallel for schedule(static)
           num_threads(fc_threads_for(planes * in_plane)))
    for (int64_t p = 0; p < planes; p++) {
        REAL *dst = dx + p * in_plane;
        for (int64_t oh = 0; oh < g->oh; oh++) {
            const int64_t top = oh * g->sh - g->ph;
            int64_t i_lo, i_hi;
            taps_inside(top, g->kh, g->h, &i_lo, &i_hi);
            for (int64_t ow = 0; ow < g->ow; ow++) {
                const int64_t left = ow * g->sw - g->pw;
                int64_t j_lo, j_hi;
                taps_inside(left, g->kw, g->w, &j_lo, &j_hi);
                const REAL share = dy[p * out_plane + oh * g->ow + ow] / area;
                for (int64_t i = i_lo; i < i_hi; i++)
                    for (int64_t j = j_lo; j < j_hi; j++)
                        dst[(top + i) * g->w + left + j] += share;
            }
        }
    }
}

/* y, x: (n_images, channels, plane); mean, var, inv_std, weight, bias: (channels,);
 * stats: (2, channels), the mean and inv_std in double, for batchnorm_backward.
 * The statistics take two passes in double, the mean and then the squared deviations
 * from it (the corrected two-pass algorithm), so a large offset does not cancel the
 * variance away in float32. var is
 * the biased variance, inv_std = 1 / sqrt(var + eps), xhat = (x - mean) * inv_std and
 * y = xhat * weight + bias. The backward pass recomputes xhat from x and stats
 * rather than read a copy the size of x. */

/* The value batch norm reads from x: x itself, or max(x, 0) as relu_forward
 * computes it (a NaN passes) when the channel is the ReLU's output fused in.
 * The functions that take max(x, 0) are compiled without trapping math:
 * otherwise GCC keeps the compare, which may raise a flag on a NaN, as a
 * branch, and these loops ran scalar (cifar6's training step took 280 ms
 * instead of 128). No result changes. */
#define BN_INPUT(v, relu) ((relu) && (v) < 0 ? (REAL)0 : (v))

/* One channel: x and y point at its plane in the first image, the next
 * image's `stride` elements on; with relu, of max(x, 0). Returns the mean,
 * inv_std and variance in moments[0..2]. Inlined into one clone per value of
 * relu, so that neither pays for the other's test. */
FC_INLINE void batchnorm_channel_body(REAL *y, double *moments, const REAL *x, REAL gamma,
                                      REAL beta, double eps, int64_t n_images,
                                      int64_t stride, int64_t plane, const int relu)
{
    const double count = (double)n_images * (double)plane;
    double total = 0.0;
    for (int64_t n = 0; n < n_images; n++) {
        const REAL *src = x + n * stride;
        FC_OMP(simd reduction(+:total))
        for (int64_t q = 0; q < plane; q++)
            total += BN_INPUT(src[q], relu);
    }
    const double rough_mu = total / count;
    /* The second pass also sums the deviations from the first pass's mean,
     * whose rounding depends on the order of the sum (the vector width): the
     * corrected mean is that error taken back, so a constant channel gets its
     * value as its mean exactly, and xhat exactly 0, on every machine. */
    double deviations = 0.0, squares = 0.0;
    for (int64_t n = 0; n < n_images; n++) {
        const REAL *src = x + n * stride;
        FC_OMP(simd reduction(+:deviations, squares))
        for (int64_t q = 0; q < plane; q++) {
            const double d = (double)BN_INPUT(src[q], relu) - rough_mu;
            deviations += d;
            squares += d * d;
        }
    }
    /* An inf or NaN in the channel makes the deviations NaN: the statistics
     * are then the uncorrected ones, as NaN or inf as the twin's. */
    const double shift = deviations / count;
    const int corrected = isfinite(shift);
    const double mu = corrected ? rough_mu + shift : rough_mu;
    const double spread = corrected ? squares / count - shift * shift : squares / count;
    /* Never below 0 by rounding; a NaN stays NaN. */
    const double sigma2 = spread < 0 ? 0.0 : spread;
    const double inv = 1.0 / sqrt(sigma2 + eps);
    for (int64_t n = 0; n < n_images; n++) {
        const REAL *src = x + n * stride;
        REAL *dst = y + n * stride;
        for (int64_t q = 0; q < plane; q++)
            dst[q] = (REAL)(((double)BN_INPUT(src[q], relu) - mu) * inv) * gamma + beta;
    }
    moments[0] = mu;
    moments[1] = inv;
    moments[2] = sigma2;
}

FC_CLONES static void batchnorm_channel(REAL *y, double *moments, const REAL *x, REAL gamma,
                                        REAL beta, double eps, int64_t n_images,
                                        int64_t stride, int64_t plane)
{
    batchnorm_channel_body(y, moments, x, gamma, beta, eps, n_images, stride, plane, 0);
}

FC_CLONES __attribute__((optimize("no-trapping-math")))
static void batchnorm_channel_relu(REAL *y, double *moments, const REAL *x, REAL gamma,
                                   REAL beta, double eps, int64_t n_images, int64_t stride,
                                   int64_t plane)
{
    batchnorm_channel_body(y, moments, x, gamma, beta, eps, n_images, stride, plane, 1);
}

/* relu: normalize max(x, 0) rather than x, the ReLU before the batch norm
 * fused in. */
void FC_NAME(batchnorm_forward_train)(REAL *y, double *stats, REAL *mean, REAL *var,
                                      REAL *inv_std, const REAL *x, const REAL *weight,
                                      const REAL *bias, double eps, int64_t n_images,
                                      int64_t channels, int64_t plane, int relu)
{
    FC_OMP(parallel for schedule(static)
           num_threads(fc_threads_for(n_images * channels * plane)))
    for (int64_t c = 0; c < channels; c++) {
        double moments[3];
        (relu ? batchnorm_channel_relu : batchnorm_channel)(
            y + c * plane, moments, x + c * plane, weight[c], bias[c], eps, n_images,
            channels * plane, plane);
        stats[c] = moments[0];
        stats[channels + c] = moments[1];
        mean[c] = (REAL)moments[0];
        inv_std[c] = (REAL)moments[1];
        var[c] = (REAL)moments[2];
    }
}

/* y, x: (n_images, channels, plane); weight, bias, running_mean, running_var:
 * (channels,). y = x * scale + shift with scale = weight / sqrt(running_var + eps)
 * and shift = bias - running_mean * scale, in REAL like reference.py. */
void FC_NAME(batchnorm_forward_eval)(REAL *y, const REAL *x, const REAL *weight,
                                     const REAL *bias, const REAL *running_mean,
                                     const REAL *running_var, REAL eps, int64_t n_images,
                                     int64_t channels, int64_t plane)
{
    FC_OMP(parallel for collapse(2) schedule(static)
           num_threads(fc_threads_for(n_images * channels * plane)))
    for (int64_t n = 0; n < n_images; n++) {
        for (int64_t c = 0; c < channels; c++) {
            const REAL scale = weight[c] / (REAL)sqrt((double)(running_var[c] + eps));
            const REAL shift = bias[c] - running_mean[c] * scale;
            const int64_t off = (n * channels + c) * plane;
            for (int64_t q = 0; q < plane; q++)
                y[off + q] = x[off + q] * scale + shift;
        }
    }
}

/* dx, dy, x: (n_images, channels, plane); weight, inv_std, dweight, dbias:
 * (channels,); stats: (2, channels) from batchnorm_forward_train. With xhat
 * recomputed from x (in double, without the forward pass's rounding to REAL),
 * dbias = sum(dy) and dweight = sum(dy * xhat) are accumulated in double;
 * dx = weight * inv_std * (dy - dbias/m - xhat * dweight/m) over the m values
 * of each channel. */

/* One channel, laid out as in batchnorm_channel; returns sum(dy) and
 * sum(dy * xhat) in sums[0..1]. With relu the forward pass normalized
 * max(x, 0); with mask as well, dx is the gradient with respect to x itself,
 * zero where x is not positive, as relu_backward makes it. */
FC_INLINE void batchnorm_channel_backward_body(REAL *dx, double *sums, const REAL *dy,
                                               const REAL *x, double mu, double inv,
                                               double scale, int64_t n_images,
                                               int64_t stride, int64_t plane,
                                               const int relu, const int mask)
{
    const double count = (double)n_images * (double)plane;
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t n = 0; n < n_images; n++) {
        const REAL *g = dy + n * stride, *src = x + n * stride;
        FC_OMP(simd reduction(+:sum_dy, sum_dy_xhat))
        for (int64_t q = 0; q < plane; q++) {
            sum_dy += g[q];
            sum_dy_xhat += (double)g[q] * (((double)BN_INPUT(src[q], relu) - mu) * inv);
        }
    }
    const double mean_dy = sum_dy / count, mean_dy_xhat = sum_dy_xhat / count;
    for (int64_t n = 0; n < n_images; n++) {
        const REAL *g = dy + n * stride, *src = x + n * stride;
        REAL *dst = dx + n * stride;
        for (int64_t q = 0; q < plane; q++) {
            const REAL d = (REAL)(scale * ((double)g[q] - mean_dy
                                           - ((double)BN_INPUT(src[q], relu) - mu) * inv
                                                 * mean_dy_xhat));
            dst[q] = mask && !(src[q] > 0) ? (REAL)0 : d;
        }
    }
    sums[0] = sum_dy;
    sums[1] = sum_dy_xhat;
}

FC_CLONES static void batchnorm_channel_backward(REAL *dx, double *sums, const REAL *dy,
    const REAL *x, double mu, double inv, double scale, int64_t n_images, int64_t stride,
    int64_t plane)
{
    batchnorm_channel_backward_body(dx, sums, dy, x, mu, inv, scale, n_images, stride, plane,
                                    0, 0);
}

FC_CLONES __attribute__((optimize("no-trapping-math")))
static void batchnorm_channel_backward_relu(REAL *dx, double *sums, const REAL *dy,
    const REAL *x, double mu, double inv, double scale, int64_t n_images, int64_t stride,
    int64_t plane)
{
    batchnorm_channel_backward_body(dx, sums, dy, x, mu, inv, scale, n_images, stride, plane,
                                    1, 0);
}

FC_CLONES __attribute__((optimize("no-trapping-math")))
static void batchnorm_channel_backward_through_relu(REAL *dx, double *sums, const REAL *dy,
    const REAL *x, double mu, double inv, double scale, int64_t n_images, int64_t stride,
    int64_t plane)
{
    batchnorm_channel_backward_body(dx, sums, dy, x, mu, inv, scale, n_images, stride, plane,
                                    1, 1);
}

/* relu: the forward pass normalized max(x, 0); through_relu (with relu): dx
 * is the gradient with respect to x, through the ReLU. */
void FC_NAME(batchnorm_backward)(REAL *dx, REAL *dweight, REAL *dbias, const REAL *dy,
                                 const REAL *x, const double *stats, const REAL *weight,
                                 const REAL *inv_std, int64_t n_images, int64_t channels,
                                 int64_t plane, int relu, int through_relu)
{
    __typeof__(batchnorm_channel_backward) *channel_backward =
        !relu ? batchnorm_channel_backward
              : through_relu ? batchnorm_channel_backward_through_relu
                             : batchnorm_channel_backward_relu;
    FC_OMP(parallel for schedule(static)
           num_threads(fc_threads_for(n_images * channels * plane)))
    for (int64_t c = 0; c < channels; c++) {
        double sums[2];
        const int64_t off = c * plane;
        channel_backward(dx + off, sums, dy + off, x + off, stats[c], stats[channels + c],
                         (double)weight[c] * (double)inv_std[c], n_images, channels * plane,
                         plane);
        dbias[c] = (REAL)sums[0];
        dweight[c] = (REAL)sums[1];
    }
}

/* y, x: (size,). A NaN fails "x < 0" and so passes through. */
void FC_NAME(relu_forward)(REAL *y, const REAL *x, int64_t size)
{
    FC_OMP(parallel for simd schedule(static) num_threads(fc_threads_for(size)))
    for (int64_t k = 0; k < size; k++)
        y[k] = x[k] < 0 ? (REAL)0 : x[k];
}

/* dx, dy, y: (size,). dy is loaded whatever y is, so that the select
 * compiles to a vector blend rather than a branch per element. */
void FC_NAME(relu_backward)(REAL *dx, const REAL *dy, const REAL *y, int64_t size)
{
    FC_OMP(parallel for simd schedule(static) num_threads(fc_threads_for(size)))
    for (int64_t k = 0; k < size; k++) {
        const REAL d = dy[k];
        dx[k] = y[k] > 0 ? d : (REAL)0;
    }
}

/* ------------------------------------------------------------------------- */
/* Optimizers */

#define ADAM_CHUNK 4096

/* adam_update on one chunk. Each operation is rounded to REAL in the order of
 * fastconv.reference.adam_update, NumPy's in-place steps, so both backends
 * give the same bits: GCC must not fuse a multiply and an add into one
 * rounding, which it does by default wherever FMA is available. */
FC_CLONES __attribute__((optimize("fp-contract=off")))
static void adam_chunk(REAL *param, const REAL *grad, REAL *exp_avg, REAL *exp_avg_sq,
                       int64_t count, REAL one_minus_beta1, REAL beta2, REAL one_minus_beta2,
                       REAL bias_correction2_sqrt, REAL eps, REAL step_size)
{
    for (int64_t k = 0; k < count; k++) {
        const REAL g = grad[k];
        const REAL m = exp_avg[k] + (g - exp_avg[k]) * one_minus_beta1;
        const REAL v = exp_avg_sq[k] * beta2 + g * one_minus_beta2 * g;
        const REAL denominator = REAL_SQRT(v) / bias_correction2_sqrt + eps;
        exp_avg[k] = m;
        exp_avg_sq[k] = v;
        param[k] -= m / denominator * step_size;
    }
}

/* One Adam step on `size` parameters, in place: param, exp_avg, exp_avg_sq
 * and grad (size,); the scalars as fastconv.reference.adam_update computes
 * them, in double, rounded to REAL here. */
void FC_NAME(adam_update)(REAL *param, const REAL *grad, REAL *exp_avg, REAL *exp_avg_sq,
                          int64_t size, double one_minus_beta1, double beta2,
                          double one_minus_beta2, double bias_correction2_sqrt, double eps,
                          double step_size)
{
    const int64_t chunks = (size + ADAM_CHUNK - 1) / ADAM_CHUNK;
    FC_OMP(parallel for schedule(static) num_threads(fc_threads_for(size)))
    for (int64_t i = 0; i < chunks; i++) {
        const int64_t first = i * ADAM_CHUNK;
        const int64_t count = size - first < ADAM_CHUNK ? size - first : ADAM_CHUNK;
        adam_chunk(param + first, grad + first, exp_avg + first, exp_avg_sq + first, count,
                   (REAL)one_minus_beta1, (REAL)beta2, (REAL)one_minus_beta2,
                   (REAL)bias_correction2_sqrt, (REAL)eps, (REAL)step_size);
    }
}

#undef ADAM_CHUNK
