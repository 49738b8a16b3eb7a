/* Convolution forward and backward, written once for both float types and
 * included by kernels_f32.c / kernels_f64.c after kernels_impl.h (whose
 * unfold_tap and fold_tap it uses).
 *
 * Why not one BLAS GEMM over the whole batch: on the layer shapes of small
 * CNNs (few output channels, many pixels) a general GEMM packs its operands
 * for nothing and runs at under half its large-matrix rate, a whole-batch
 * column matrix does not fit any cache, and a threaded BLAS fights the
 * OpenMP team of the other kernels for the cores. Instead each OpenMP thread
 * takes whole images and multiplies them with the register-tiled micro-kernel
 * below; scratch stays in the thread's L2 cache, one thread pool does all the
 * work, and the results depend only on the thread count.
 *
 * Stride-1 convolutions never build a column matrix. The image is copied
 * once into a zero-padded plane of width Wp = W + 2*pw; then the row of
 * kernel tap (c, i, j) is that padded image itself, read from offset
 * c*Hp*Wp + i*Wp + j, if the output is computed on a "wide" grid of OH rows
 * of Wp columns (q = oh*Wp + ow) whose last Wp - OW columns are junk and
 * dropped. The junk costs Wp/OW more multiply-adds (6% on 32x32 planes with
 * 3x3 kernels, 25% on 8x8) and saves an unfold that costs about 40% of the
 * multiply. The gradient with respect to the input is then a stride-1
 * convolution of the padded dy with the flipped, transposed weights, done by
 * the same routine. Other strides unfold each image into columns (im2col).
 *
 * The micro-kernel uses GCC's vector extensions; target_clones compiles the
 * per-image routines for AVX-512, AVX2 and baseline x86-64 and picks one at
 * load time, so one build runs at full width on the machine it lands on.
 */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* The vector helpers are inlined into each clone, so the ABI of passing
 * 64-byte vectors between functions, which GCC warns about, never arises. */
#pragma GCC diagnostic ignored "-Wpsabi"

/* 64-byte vectors: 16 floats or 8 doubles, one AVX-512 register. */
#define VLEN ((int64_t)(64 / sizeof(REAL)))
typedef REAL vec __attribute__((vector_size(64)));
/* A tile updates 8 rows x 2 vectors of C: 16 accumulators leave registers for
 * the two column loads, and 16 multiply-adds per 10 loads keep the FMA units,
 * not the load ports, the bottleneck. */
#define TILE_ROWS 8
#define TILE_VECS 2
/* Depth handled per pass over a column panel: 128 rows x 2 vectors of B are
 * 16 KiB, which stay in L1 while every row block of C reuses them. */
#define DEPTH_BLOCK 128

static int64_t round_up(int64_t n, int64_t m)
{
    return (n + m - 1) / m * m;
}

/* The integer vector whose lanes match vec's: the type of a vector comparison. */
typedef __typeof__((vec){0} < (vec){0}) lane_index;

FC_INLINE vec load_vec(const REAL *p)
{
    vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

FC_INLINE void store_vec(REAL *p, vec v)
{
    memcpy(p, &v, sizeof v);
}

/* The operands of C (m x n) (+)= A (m x depth) @ B (depth x n), each read in
 * place through offset tables, so one kernel serves weights, transposed
 * weights, column matrices, shifted views of a padded image and transposed
 * gradients:
 *   A(r, k) = a[a_rows[r] + k*a_step],  B(k, j) = b[b_rows[k] + j],
 *   C(r, j) = c[r*ldc + j].
 * n is a multiple of VLEN; every B row must be readable up to n. */
typedef struct {
    const REAL *a;
    const int64_t *a_rows;
    int64_t a_step;
    const REAL *b;
    const int64_t *b_rows;
    REAL *c;
    int64_t ldc;
} operands;

/* rows x vecs*VLEN of C from depth k0..k0+depth; rows and vecs are constants at
 * every call site (the switch in panel), so the accumulators live in registers. */
FC_INLINE void tile(int rows, int vecs, const operands *o, int64_t r0, int64_t j0,
                    int64_t k0, int64_t depth, int add)
{
    vec acc[TILE_ROWS][TILE_VECS];
    const REAL *ap[TILE_ROWS];
    REAL *cp = o->c + r0 * o->ldc + j0;
    for (int r = 0; r < rows; r++) {
        ap[r] = o->a + o->a_rows[r0 + r] + k0 * o->a_step;
        for (int v = 0; v < vecs; v++)
            acc[r][v] = add ? load_vec(cp + r * o->ldc + v * VLEN) : (vec){0};
    }
    const int64_t *b_rows = o->b_rows + k0;
    const REAL *b = o->b + j0;
    for (int64_t k = 0; k < depth; k++) {
        vec col[TILE_VECS];
        for (int v = 0; v < vecs; v++)
            col[v] = load_vec(b + b_rows[k] + v * VLEN);
        for (int r = 0; r < rows; r++) {
            const REAL s = ap[r][k * o->a_step];
            for (int v = 0; v < vecs; v++)
                acc[r][v] += s * col[v];
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vecs; v++)
            store_vec(cp + r * o->ldc + v * VLEN, acc[r][v]);
}

/* Columns j0 to j0 + vecs*VLEN of C, all m rows, in depth blocks. */
FC_INLINE void panel(int vecs, const operands *o, int64_t m, int64_t j0, int64_t depth,
                     int accumulate)
{
    for (int64_t k0 = 0; k0 < depth; k0 += DEPTH_BLOCK) {
        const int64_t kd = depth - k0 < DEPTH_BLOCK ? depth - k0 : DEPTH_BLOCK;
        const int add = accumulate || k0 > 0;
        int64_t r = 0;
        for (; r + TILE_ROWS <= m; r += TILE_ROWS)
            tile(TILE_ROWS, vecs, o, r, j0, k0, kd, add);
        switch (m - r) {
#define REST(n) case n: tile(n, vecs, o, r, j0, k0, kd, add); break;
            REST(1) REST(2) REST(3) REST(4) REST(5) REST(6) REST(7)
#undef REST
        default:
            break;
        }
    }
}

/* C (m x n) = A @ B, or C += A @ B when accumulate; n a multiple of VLEN. */
FC_INLINE void gemm(const operands *o, int64_t m, int64_t n, int64_t depth, int accumulate)
{
    int64_t j = 0;
    for (; j + TILE_VECS * VLEN <= n; j += TILE_VECS * VLEN)
        panel(TILE_VECS, o, m, j, depth, accumulate);
    for (; j < n; j += VLEN)
        panel(1, o, m, j, depth, accumulate);
}

/* Rows [r_lo, r_hi) x columns [j_lo, j_hi) of the product; j_lo and j_hi - j_lo
 * multiples of VLEN. The one entry to the micro-kernel: compiled once per
 * target so the kernel inlined into it gets the widest vectors. */
FC_CLONES static void multiply(const operands *o, int64_t r_lo, int64_t r_hi, int64_t j_lo,
                               int64_t j_hi, int64_t depth, int accumulate)
{
    if (r_hi <= r_lo || j_hi <= j_lo)
        return;
    operands part = *o;
    part.a_rows = o->a_rows + r_lo;
    part.b = o->b + j_lo;
    part.c = o->c + r_lo * o->ldc + j_lo;
    gemm(&part, r_hi - r_lo, j_hi - j_lo, depth, accumulate);
}

/* a and b interleaved, a0 b0 a1 b1 ...: the first half into *lo, the second
 * into *hi. */
FC_INLINE void interleave(vec a, vec b, vec *lo, vec *hi)
{
    lane_index first, second;
    for (int k = 0; k < VLEN; k++) {
        first[k] = k / 2 + (k % 2) * VLEN;
        second[k] = first[k] + VLEN / 2;
    }
    *lo = __builtin_shuffle(a, b, first);
    *hi = __builtin_shuffle(a, b, second);
}

/* A VLEN x VLEN block r transposed in registers: log2(VLEN) rounds that each
 * interleave row i with row i + VLEN/2 into rows 2i and 2i + 1 (each round
 * rotates the bits of the element's index, so the rounds swap row and column
 * bits): VLEN shuffles a round instead of a load and a store per element. */
FC_INLINE void transpose_vectors(vec r[VLEN])
{
    for (int round = 1; round < VLEN; round *= 2) {
        vec next[VLEN];
        for (int i = 0; i < VLEN / 2; i++)
            interleave(r[i], r[i + VLEN / 2], &next[2 * i], &next[2 * i + 1]);
        memcpy(r, next, sizeof next);
    }
}

/* dst[q*ld_dst + f] = src[f*ld_src + q] for f < rows, q < cols: whole
 * VLEN x VLEN blocks in registers, the edges element by element. */
FC_CLONES static void transpose_to_rows(REAL *dst, int64_t ld_dst, const REAL *src,
                                        int64_t ld_src, int64_t rows, int64_t cols)
{
    int64_t f0 = 0;
    for (; f0 + VLEN <= rows; f0 += VLEN) {
        int64_t q0 = 0;
        for (; q0 + VLEN <= cols; q0 += VLEN) {
            vec r[VLEN];
            for (int i = 0; i < VLEN; i++)
                r[i] = load_vec(src + (f0 + i) * ld_src + q0);
            transpose_vectors(r);
            for (int j = 0; j < VLEN; j++)
                store_vec(dst + (q0 + j) * ld_dst + f0, r[j]);
        }
        for (int64_t f = f0; f < f0 + VLEN; f++)
            for (int64_t q = q0; q < cols; q++)
                dst[q * ld_dst + f] = src[f * ld_src + q];
    }
    for (int64_t f = f0; f < rows; f++)
        for (int64_t q = 0; q < cols; q++)
            dst[q * ld_dst + f] = src[f * ld_src + q];
}

/* bias_sums[f] += the sum over `pixels` rows of dy_t (rows of F gradients,
 * f_stride apart), across filters so that the double sums vectorize
 * without reordering. */
FC_CLONES static void add_filter_sums(double *bias_sums, const REAL *dy_t, int64_t f_stride,
                                      int64_t pixels, int64_t filters)
{
    for (int64_t q = 0; q < pixels; q++)
        for (int64_t f = 0; f < filters; f++)
            bias_sums[f] += dy_t[q * f_stride + f];
}

/* ------------------------------------------------------------------------- */
/* The plan of one convolution: geometry, offset tables and scratch sizes,
 * worked out once per call and shared read-only by the threads. */

typedef struct {
    int64_t channels, filters;  /* C in, F out */
    const fc_window *g;
    int64_t k;                  /* C*KH*KW: depth of the forward product */
    int64_t plane;              /* OH*OW: output pixels per image */
    int shifted;                /* stride 1: read taps from the padded image */
    /* shifted: the padded image, (C, Hp, Wp) plus `slack` zeros, and the
     * wide output grid of `wide` = OH*Wp columns rounded up to a vector. */
    int64_t hp, wp, padded_plane, slack, wide;
    /* unfolded: columns (K, OH*OW) with row stride ld. */
    int64_t ld;
    int64_t *tap_rows;          /* (K,): where tap row k starts in the padded image or columns */
    int64_t *weight_rows;       /* (F,): r*K, rows of the weight matrix */
} conv_plan;

static void free_plan(conv_plan *p)
{
    free(p->tap_rows);
    free(p->weight_rows);
}

/* Row stride of a scratch matrix of `plane` columns: whole vectors plus one,
 * so that rows are not a multiple of 4 KiB apart (a 32x32 plane of floats is
 * exactly 4 KiB), which would put every row of a panel in the same L1 set. */
static int64_t padded_stride(int64_t plane)
{
    return round_up(plane, VLEN) + VLEN;
}

/* A plan that reads taps from the padded image when `shifted` and the
 * geometry allows it (stride 1), from unfolded columns otherwise.
 * Returns 0, or -1 when the tables could not be allocated. */
static int make_plan(conv_plan *p, int64_t channels, int64_t filters, const fc_window *g,
                     int shifted)
{
    memset(p, 0, sizeof *p);
    p->channels = channels;
    p->filters = filters;
    p->g = g;
    p->k = channels * g->kh * g->kw;
    p->plane = g->oh * g->ow;
    p->shifted = shifted && g->sh == 1 && g->sw == 1;
    p->tap_rows = malloc((size_t)p->k * sizeof(int64_t));
    p->weight_rows = malloc((size_t)filters * sizeof(int64_t));
    if (!p->tap_rows || !p->weight_rows) {
        free_plan(p);
        return -1;
    }
    for (int64_t f = 0; f < filters; f++)
        p->weight_rows[f] = f * p->k;
    const int64_t taps = g->kh * g->kw;
    if (p->shifted) {
        p->hp = g->h + 2 * g->ph;
        p->wp = g->w + 2 * g->pw;
        p->padded_plane = p->hp * p->wp;
        p->wide = round_up(g->oh * p->wp, VLEN);
        /* The last tap reads up to (KW-1) + wide - OH*Wp past the last plane. */
        p->slack = g->kw + VLEN;
        for (int64_t r = 0; r < p->k; r++)
            p->tap_rows[r] = r / taps * p->padded_plane + r % taps / g->kw * p->wp + r % g->kw;
    } else {
        p->ld = padded_stride(p->plane);
        for (int64_t r = 0; r < p->k; r++)
            p->tap_rows[r] = r * p->ld;
    }
    return 0;
}

/* The zero-padded copy (C, Hp, Wp) of one image, then `slack` zeros. Only
 * the image's own pixels are written: dst comes from scratch that was zeroed
 * when it was allocated and holds padded images of one plan only, so its
 * border and slack are still zero. */
static void pad_image(REAL *dst, const REAL *image, const conv_plan *p)
{
    const fc_window *g = p->g;
    for (int64_t c = 0; c < p->channels; c++)
        for (int64_t h = 0; h < g->h; h++)
            memcpy(dst + c * p->padded_plane + (h + g->ph) * p->wp + g->pw,
                   image + (c * g->h + h) * g->w, (size_t)g->w * sizeof(REAL));
}

/* The column matrix (K, OH*OW), row stride ld, of one image, laid out as im2col's. */
static void unfold_image(REAL *cols, const REAL *image, const conv_plan *p)
{
    const fc_window *g = p->g;
    const int64_t taps = g->kh * g->kw, in_plane = g->h * g->w;
    for (int64_t r = 0; r < p->k; r++)
        unfold_tap(cols + r * p->ld, image + r / taps * in_plane, g, r % taps / g->kw,
                   r % g->kw);
}

/* image (C, H, W) += the columns folded back; the adjoint of unfold_image. */
static void fold_image(REAL *image, const REAL *cols, const conv_plan *p)
{
    const fc_window *g = p->g;
    const int64_t taps = g->kh * g->kw, in_plane = g->h * g->w;
    for (int64_t r = 0; r < p->k; r++)
        fold_tap(image + r / taps * in_plane, cols + r * p->ld, g, r % taps / g->kw,
                 r % g->kw);
}

/* Per-thread scratch of the forward pass: the padded image or the columns,
 * and the product before it is cut to the output's shape. */
static size_t forward_scratch(const conv_plan *p)
{
    if (p->shifted)
        return (size_t)(p->channels * p->padded_plane + p->slack + p->filters * p->wide);
    return (size_t)(p->k * p->ld + p->filters * p->ld);
}

/* The operands of one image's forward product, weight (F, K) @ taps (K, width),
 * with the image laid out in scratch (padded, or unfolded into columns). */
static operands forward_operands(const REAL *image, const REAL *weight, const conv_plan *p,
                                 REAL *scratch, int64_t *width)
{
    operands o = {weight, p->weight_rows, 1, scratch, p->tap_rows, NULL, 0};
    if (p->shifted) {
        pad_image(scratch, image, p);
        o.c = scratch + p->channels * p->padded_plane + p->slack;
        *width = o.ldc = p->wide;
    } else {
        unfold_image(scratch, image, p);
        o.c = scratch + p->k * p->ld;
        *width = round_up(p->plane, VLEN);
        o.ldc = p->ld;
    }
    return o;
}

/* y (F, OH, OW) of one image: the product cut to the output's shape, plus bias. */
static void forward_output(REAL *y, const REAL *bias, const operands *o, const conv_plan *p)
{
    const fc_window *g = p->g;
    const int64_t grid = p->shifted ? p->wp : g->ow;
    for (int64_t f = 0; f < p->filters; f++) {
        const REAL b = bias ? bias[f] : 0;
        const REAL *src = o->c + f * o->ldc;
        REAL *dst = y + f * p->plane;
        for (int64_t oh = 0; oh < g->oh; oh++)
            for (int64_t ow = 0; ow < g->ow; ow++)
                dst[oh * g->ow + ow] = src[oh * grid + ow] + b;
    }
}

/* Threads worth using for a convolution over n_images. When there are fewer
 * images than threads, each image's product is shared out instead. */
static int conv_threads(int64_t n_images, const conv_plan *p)
{
    return fc_threads_for(n_images * p->filters * p->plane * p->k / 16);
}

/* Part [*first, *last) of `count` items for thread t of `team`, in whole
 * multiples of `unit`: contiguous, nearly equal shares. */
static void share(int64_t count, int64_t unit, int t, int team, int64_t *first, int64_t *last)
{
    const int64_t units = count / unit;
    *first = unit * (units * t / team);
    *last = t == team - 1 ? count : unit * (units * (t + 1) / team);
}

#ifdef _OPENMP
#define THREAD_ID() omp_get_thread_num()
#define TEAM_SIZE() omp_get_num_threads()
#else
#define THREAD_ID() 0
#define TEAM_SIZE() 1
#endif

/* y (n, F, OH, OW) = conv(x (n, C, H, W), weight (F, C, KH, KW)) + bias under
 * plan p, directly: whole images per thread, or, with fewer images than threads, each
 * image's output columns split among the threads. Returns 0, or -1 when
 * scratch memory ran out. */
static int direct_forward(REAL *y, const REAL *x, const REAL *weight, const REAL *bias,
                          int64_t n_images, const conv_plan *p)
{
    const int64_t in_image = p->channels * p->g->h * p->g->w;
    const int64_t out_image = p->filters * p->plane;
    const int threads = conv_threads(n_images, p);
    int failed = 0;
    if (n_images < threads) {
        REAL *scratch = calloc(forward_scratch(p), sizeof(REAL));
        if (!scratch)
            return -1;
        for (int64_t i = 0; i < n_images; i++) {
            int64_t width;
            const operands o = forward_operands(x + i * in_image, weight, p, scratch, &width);
            FC_OMP(parallel num_threads(threads))
            {
                int64_t j_lo, j_hi;
                share(width, VLEN, THREAD_ID(), TEAM_SIZE(), &j_lo, &j_hi);
                multiply(&o, 0, p->filters, j_lo, j_hi, p->k, 0);
            }
            forward_output(y + i * out_image, bias, &o, p);
        }
        free(scratch);
        return 0;
    }
    FC_OMP(parallel num_threads(threads) reduction(|:failed))
    {
        int64_t first, last;
        share(n_images, 1, THREAD_ID(), TEAM_SIZE(), &first, &last);
        /* calloc: pad_image never writes the padded border, and the padding
         * columns of unfolded scratch feed junk products that are dropped but
         * must not be uninitialized denormals or NaNs, which would slow the
         * multiply-adds down. */
        REAL *scratch = calloc(forward_scratch(p), sizeof(REAL));
        if (!scratch) {
            failed = 1;
        } else {
            for (int64_t i = first; i < last; i++) {
                int64_t width;
                const operands o = forward_operands(x + i * in_image, weight, p, scratch, &width);
                multiply(&o, 0, p->filters, 0, width, p->k, 0);
                forward_output(y + i * out_image, bias, &o, p);
            }
        }
        free(scratch);
    }
    return failed ? -1 : 0;
}

#include "winograd_impl.h"

/* The forward convolution under plan p, through Winograd where it is faster;
 * the images that Winograd flags as not finite are computed again directly. */
static int run_forward(REAL *y, const REAL *x, const REAL *weight, const REAL *bias,
                       int64_t n_images, const conv_plan *p)
{
    if (!winograd_applies(p))
        return direct_forward(y, x, weight, bias, n_images, p);
    char *not_finite = calloc((size_t)n_images, 1);
    if (!not_finite)
        return -1;
    int status = winograd_forward(y, x, weight, bias, n_images, p, not_finite);
    const int64_t in_image = p->channels * p->g->h * p->g->w;
    const int64_t out_image = p->filters * p->plane;
    for (int64_t i = 0; status == 0 && i < n_images; i++)
        if (not_finite[i])
            status = direct_forward(y + i * out_image, x + i * in_image, weight, bias, 1, p);
    free(not_finite);
    return status;
}

/* 1 when conv_forward takes Winograd for this geometry, else 0. */
int FC_NAME(conv_uses_winograd)(int64_t channels, int64_t filters, const fc_window *g)
{
    conv_plan p;
    memset(&p, 0, sizeof p);
    p.channels = channels;
    p.filters = filters;
    p.g = g;
    return winograd_applies(&p);
}

/* y: (n_images, F, OH, OW); x: (n_images, C, H, W); weight: (F, C, KH, KW);
 * bias: (F,) or NULL. Returns 0, or -1 when memory ran out. */
int FC_NAME(conv_forward)(REAL *y, const REAL *x, const REAL *weight, const REAL *bias,
                          int64_t n_images, int64_t channels, int64_t filters,
                          const fc_window *g)
{
    conv_plan p;
    if (make_plan(&p, channels, filters, g, 1) != 0)
        return -1;
    const int status = run_forward(y, x, weight, bias, n_images, &p);
    free_plan(&p);
    return status;
}

/* ------------------------------------------------------------------------- */
/* Backward */

/* Per-thread scratch of the weight gradient: the padded image or the columns
 * (K rows), and dy transposed to (pixels, F), its rows padded to whole vectors. */
static size_t weight_grad_scratch(const conv_plan *p, int64_t f_stride)
{
    const int64_t pixels = p->shifted ? p->wide : p->plane;
    const size_t taps = p->shifted ? (size_t)(p->channels * p->padded_plane + p->slack)
                                   : (size_t)(p->k * p->ld);
    return taps + (size_t)(pixels * f_stride);
}

/* Whether every value of p[0..n) is finite: x*0 is 0 for a finite x, NaN otherwise. */
static int all_finite(const REAL *p, int64_t n)
{
    REAL zero_if_finite = 0;
    FC_OMP(simd reduction(+:zero_if_finite))
    for (int64_t i = 0; i < n; i++)
        zero_if_finite += p[i] * 0;
    return zero_if_finite == 0;
}

/* dy (F, OH*OW) of one image transposed onto a pixel grid of `grid` columns:
 * row q = oh*grid + ow of dy_t holds the F gradients of pixel (oh, ow). Only
 * the F real columns of the real pixels are written; the rest of dy_t keeps
 * the zeros of the scratch's allocation. When bias_sums is not NULL, each
 * filter's gradients are added to bias_sums[f] on the way, which saves a
 * separate pass over dy for the bias gradient. */
static void transpose_gradient(REAL *dy_t, int64_t f_stride, int64_t grid, const REAL *dy,
                               const conv_plan *p, double *bias_sums)
{
    const fc_window *g = p->g;
    for (int64_t oh = 0; oh < g->oh; oh++) {
        REAL *rows = dy_t + oh * grid * f_stride;
        transpose_to_rows(rows, f_stride, dy + oh * g->ow, p->plane, p->filters, g->ow);
        if (bias_sums)
            add_filter_sums(bias_sums, rows, f_stride, g->ow, p->filters);
    }
}

/* The operands of one image's share of the weight gradient,
 *   dweight_t (K, f_stride) += taps of the image (K, pixels) @ dy^T (pixels, F),
 * the transpose of dweight, so that the long sum over pixels is the depth of
 * the product; pixel_rows is (pixels,) with q*f_stride. *finite tells whether
 * the image holds only finite values (see weight_grad_rows); bias_sums, when
 * not NULL, gets each filter's sum of dy added. */
static operands weight_grad_operands(REAL *dweight_t, int64_t f_stride, const REAL *dy,
                                     const REAL *image, const conv_plan *p,
                                     const int64_t *pixel_rows, REAL *scratch,
                                     double *bias_sums, int64_t *pixels, int *finite)
{
    const fc_window *g = p->g;
    REAL *dy_t;
    int64_t grid;
    if (p->shifted) {
        pad_image(scratch, image, p);
        dy_t = scratch + p->channels * p->padded_plane + p->slack;
        *pixels = p->wide;
        grid = p->wp;
        *finite = all_finite(image, p->channels * g->h * g->w);
    } else {
        unfold_image(scratch, image, p);
        dy_t = scratch + p->k * p->ld;
        *pixels = p->plane;
        grid = g->ow;
        *finite = 1;
    }
    transpose_gradient(dy_t, f_stride, grid, dy, p, bias_sums);
    const operands o = {scratch, p->tap_rows, 1, dy_t, pixel_rows, dweight_t, f_stride};
    return o;
}

/* Rows [r_lo, r_hi) of one image's weight gradient from its operands. On the
 * wide grid a junk pixel has a zero gradient and reads the start of the next
 * padded row, which adds exactly zero when the image is finite: then one
 * product runs over the whole grid. A NaN or inf there, though, times that
 * zero would put NaN in the gradient of a tap that never sees the value, so
 * an image that is not finite is summed one output row at a time over its OW
 * real pixels (short products, several times slower). */
static void weight_grad_rows(const operands *o, const conv_plan *p, int64_t r_lo, int64_t r_hi,
                             int64_t f_stride, int64_t depth, int finite)
{
    if (!p->shifted || finite) {
        multiply(o, r_lo, r_hi, 0, f_stride, depth, 1);
        return;
    }
    for (int64_t oh = 0; oh < p->g->oh; oh++) {
        operands row = *o;
        row.a = o->a + oh * p->wp;
        row.b_rows = o->b_rows + oh * p->wp;
        multiply(&row, r_lo, r_hi, 0, f_stride, p->g->ow, 1);
    }
}

/* dx (C, H, W) of one image from unfolded columns: fold(weight^T (K, F) @ dy (F, P)).
 * dy_rows (F, ld) and dcols (K, ld) are scratch. */
static void input_grad_unfolded(REAL *dx, const REAL *dy, const REAL *weight,
                                const conv_plan *p, const int64_t *weight_cols,
                                const int64_t *dy_row_offsets, REAL *scratch)
{
    REAL *dy_rows = scratch, *dcols = scratch + p->filters * p->ld;
    for (int64_t f = 0; f < p->filters; f++)
        memcpy(dy_rows + f * p->ld, dy + f * p->plane, (size_t)p->plane * sizeof(REAL));
    operands o = {weight, weight_cols, p->k, dy_rows, dy_row_offsets, dcols, p->ld};
    multiply(&o, 0, p->k, 0, round_up(p->plane, VLEN), p->filters, 0);
    memset(dx, 0, (size_t)(p->channels * p->g->h * p->g->w) * sizeof(REAL));
    fold_image(dx, dcols, p);
}

/* Side of the square tiles in which matrices are transposed: a 32 x 32 tile of
 * floats is 32 cache lines on each side, so both the rows read and the rows
 * written stay in L1 however long the matrix rows are (a 4096 x 25088 linear
 * layer's weights transposed element by element miss the cache at every
 * element). */
#define TRANSPOSE_TILE 32

/* The end of the tile that starts at `start` in a dimension of size n. */
FC_INLINE int64_t tile_end(int64_t start, int64_t n)
{
    return start + TRANSPOSE_TILE < n ? start + TRANSPOSE_TILE : n;
}

/* The weights of the convolution that maps dy to dx at stride 1:
 * flipped (F, C, KH, KW) -> (C, F, KH, KW) with taps reversed, tile by tile. */
static void flip_weights(REAL *dst, const REAL *weight, int64_t filters, int64_t channels,
                         int64_t kh, int64_t kw)
{
    const int64_t taps = kh * kw;
    FC_OMP(parallel for collapse(2) schedule(static)
           num_threads(fc_threads_for(filters * channels * taps)))
    for (int64_t f0 = 0; f0 < filters; f0 += TRANSPOSE_TILE) {
        for (int64_t c0 = 0; c0 < channels; c0 += TRANSPOSE_TILE) {
            for (int64_t c = c0; c < tile_end(c0, channels); c++)
                for (int64_t f = f0; f < tile_end(f0, filters); f++)
                    for (int64_t t = 0; t < taps; t++)
                        dst[(c * filters + f) * taps + taps - 1 - t] = weight[(f * channels + c) * taps + t];
        }
    }
}

/* dweight (F, K) = the sum of `buffers` matrices (K, f_stride) laid one after
 * the other, transposed tile by tile and summed in buffer order. */
static void sum_transposed(REAL *dweight, const REAL *partial, int buffers, int64_t k,
                           int64_t filters, int64_t f_stride)
{
    FC_OMP(parallel for collapse(2) schedule(static)
           num_threads(fc_threads_for(k * filters * buffers)))
    for (int64_t f0 = 0; f0 < filters; f0 += TRANSPOSE_TILE) {
        for (int64_t r0 = 0; r0 < k; r0 += TRANSPOSE_TILE) {
            for (int64_t f = f0; f < tile_end(f0, filters); f++) {
                for (int64_t r = r0; r < tile_end(r0, k); r++) {
                    REAL total = 0;
                    for (int t = 0; t < buffers; t++)
                        total += partial[(t * k + r) * f_stride + f];
                    dweight[f * k + r] = total;
                }
            }
        }
    }
}

/* dx of the whole batch. Stride 1 with padding below the kernel size: a
 * forward convolution of dy padded by (KH-1-ph, KW-1-pw) with flipped weights.
 * Otherwise: unfolded columns, folded back. Returns 0 or -1 (out of memory). */
static int input_grad(REAL *dx, const REAL *dy, const REAL *weight, int64_t n_images,
                      const conv_plan *p)
{
    const fc_window *g = p->g;
    int status = 0;
    /* The flipped convolution must reproduce H and W exactly: not so when a
     * single output row or column let make_plan treat a larger stride as 1. */
    const int exact = g->h + 2 * g->ph - g->kh + 1 == g->oh && g->w + 2 * g->pw - g->kw + 1 == g->ow;
    if (p->shifted && exact && g->ph < g->kh && g->pw < g->kw) {
        fc_window back = {g->oh, g->ow, g->kh, g->kw, 1, 1,
                          g->kh - 1 - g->ph, g->kw - 1 - g->pw, g->h, g->w};
        conv_plan bp;
        REAL *flipped = malloc((size_t)(p->k * p->filters) * sizeof(REAL));
        if (!flipped || make_plan(&bp, p->filters, p->channels, &back, 1) != 0) {
            free(flipped);
            return -1;
        }
        flip_weights(flipped, weight, p->filters, p->channels, g->kh, g->kw);
        status = run_forward(dx, dy, flipped, NULL, n_images, &bp);
        free_plan(&bp);
        free(flipped);
        return status;
    }
    conv_plan up;
    int64_t *weight_cols = malloc((size_t)p->k * sizeof(int64_t));
    int64_t *dy_row_offsets = malloc((size_t)p->filters * sizeof(int64_t));
    if (!weight_cols || !dy_row_offsets || make_plan(&up, p->channels, p->filters, g, 0) != 0) {
        free(weight_cols);
        free(dy_row_offsets);
        return -1;
    }
    p = &up;
    for (int64_t r = 0; r < p->k; r++)
        weight_cols[r] = r;
    for (int64_t f = 0; f < p->filters; f++)
        dy_row_offsets[f] = f * p->ld;
    const int64_t in_image = p->channels * g->h * g->w, out_image = p->filters * p->plane;
    int failed = 0;
    int threads = conv_threads(n_images, p);
    if (threads > n_images)
        threads = (int)n_images;
    FC_OMP(parallel num_threads(threads) reduction(|:failed))
    {
        int64_t first, last;
        share(n_images, 1, THREAD_ID(), TEAM_SIZE(), &first, &last);
        REAL *scratch = calloc((size_t)((p->filters + p->k) * p->ld), sizeof(REAL));
        if (!scratch)
            failed = 1;
        else
            for (int64_t i = first; i < last; i++)
                input_grad_unfolded(dx + i * in_image, dy + i * out_image, weight, p,
                                    weight_cols, dy_row_offsets, scratch);
        free(scratch);
    }
    free(weight_cols);
    free(dy_row_offsets);
    free_plan(&up);
    return failed ? -1 : 0;
}

/* dweight (F, K) of the whole batch, and dbias (F,) unless NULL. Each thread
 * sums its images' gradients in its own buffers and the buffers are added in
 * thread order, or, with fewer images than threads, the rows of one buffer are
 * split among the threads; either way a given thread count always gives the
 * same bits. Returns 0 or -1 (out of memory). */
static int weight_grad(REAL *dweight, REAL *dbias, const REAL *dy, const REAL *x,
                       int64_t n_images, const conv_plan *p)
{
    const int threads = conv_threads(n_images, p);
    const int split_images = n_images < threads;
    const int buffers = split_images ? 1 : threads;
    const int64_t f_stride = round_up(p->filters, VLEN);
    const int64_t pixels = p->shifted ? p->wide : p->plane;
    const int64_t in_image = p->channels * p->g->h * p->g->w, out_image = p->filters * p->plane;
    REAL *partial = calloc((size_t)buffers * (size_t)(p->k * f_stride), sizeof(REAL));
    double *bias_partial = dbias ? calloc((size_t)buffers * (size_t)p->filters, sizeof(double))
                                 : NULL;
    int64_t *pixel_rows = malloc((size_t)pixels * sizeof(int64_t));
    /* Scratch is zeroed once (calloc): see pad_image and transpose_gradient. */
    REAL *shared = split_images ? calloc(weight_grad_scratch(p, f_stride), sizeof(REAL)) : NULL;
    int failed = !partial || !pixel_rows || (dbias && !bias_partial) || (split_images && !shared);
    if (!failed) {
        for (int64_t q = 0; q < pixels; q++)
            pixel_rows[q] = q * f_stride;
    }
    if (!failed && split_images) {
        for (int64_t i = 0; i < n_images; i++) {
            int64_t depth;
            int finite;
            const operands o = weight_grad_operands(partial, f_stride, dy + i * out_image,
                                                    x + i * in_image, p, pixel_rows, shared,
                                                    bias_partial, &depth, &finite);
            FC_OMP(parallel num_threads(threads))
            {
                int64_t r_lo, r_hi;
                share(p->k, 1, THREAD_ID(), TEAM_SIZE(), &r_lo, &r_hi);
                weight_grad_rows(&o, p, r_lo, r_hi, f_stride, depth, finite);
            }
        }
    } else if (!failed) {
        FC_OMP(parallel num_threads(threads) reduction(|:failed))
        {
            const int t = THREAD_ID();
            int64_t first, last;
            share(n_images, 1, t, TEAM_SIZE(), &first, &last);
            REAL *scratch = calloc(weight_grad_scratch(p, f_stride), sizeof(REAL));
            double *sums = bias_partial ? bias_partial + t * p->filters : NULL;
            if (!scratch) {
                failed = 1;
            } else {
                for (int64_t i = first; i < last; i++) {
                    int64_t depth;
                    int finite;
                    const operands o = weight_grad_operands(
                        partial + t * p->k * f_stride, f_stride, dy + i * out_image,
                        x + i * in_image, p, pixel_rows, scratch, sums, &depth, &finite);
                    weight_grad_rows(&o, p, 0, p->k, f_stride, depth, finite);
                }
            }
            free(scratch);
        }
    }
    if (!failed) {
        sum_transposed(dweight, partial, buffers, p->k, p->filters, f_stride);
        for (int64_t f = 0; dbias && f < p->filters; f++) {
            double total = 0;
            for (int t = 0; t < buffers; t++)
                total += bias_partial[t * p->filters + f];
            dbias[f] = (REAL)total;
        }
    }
    free(partial);
    free(bias_partial);
    free(pixel_rows);
    free(shared);
    return failed ? -1 : 0;
}

/* dweight and dbias (or NULL) of the whole batch, through Winograd where it
 * is faster; the gradients of the images that Winograd leaves out (not
 * finite) are then added, computed directly. Returns 0 or -1 (out of memory). */
static int run_weight_grad(REAL *dweight, REAL *dbias, const REAL *dy, const REAL *x,
                           int64_t n_images, const conv_plan *p)
{
    if (!winograd_applies(p))
        return weight_grad(dweight, dbias, dy, x, n_images, p);
    char *not_finite = calloc((size_t)n_images, 1);
    REAL *one = malloc((size_t)(p->filters * p->k + p->filters) * sizeof(REAL));
    int status = !not_finite || !one ? -1 : 0;
    if (status == 0)
        status = winograd_weight_grad(dweight, dbias, dy, x, n_images, p, not_finite);
    const int64_t in_image = p->channels * p->g->h * p->g->w;
    const int64_t out_image = p->filters * p->plane;
    REAL *one_bias = one ? one + p->filters * p->k : NULL;
    for (int64_t i = 0; status == 0 && i < n_images; i++) {
        if (!not_finite[i])
            continue;
        status = weight_grad(one, dbias ? one_bias : NULL, dy + i * out_image, x + i * in_image,
                             1, p);
        for (int64_t r = 0; status == 0 && r < p->filters * p->k; r++)
            dweight[r] += one[r];
        for (int64_t f = 0; status == 0 && dbias && f < p->filters; f++)
            dbias[f] += one_bias[f];
    }
    free(not_finite);
    free(one);
    return status;
}

/* dx: (n_images, C, H, W) or NULL; dweight: (F, C, KH, KW) or NULL; dbias: (F,) or NULL;
 * dy: (n_images, F, OH, OW); x, weight as given to conv_forward.
 * Returns 0, or -1 when memory ran out. */
int FC_NAME(conv_backward)(REAL *dx, REAL *dweight, REAL *dbias, const REAL *dy,
                           const REAL *x, const REAL *weight, int64_t n_images,
                           int64_t channels, int64_t filters, const fc_window *g)
{
    conv_plan p;
    if (make_plan(&p, channels, filters, g, 1) != 0)
        return -1;
    int status = dweight ? run_weight_grad(dweight, dbias, dy, x, n_images, &p) : 0;
    if (status == 0 && dx)
        status = input_grad(dx, dy, weight, n_images, &p);
    if (status == 0 && dbias && !dweight)
        FC_NAME(channel_sums)(dbias, dy, n_images, filters, p.plane);
    free_plan(&p);
    return status;
}

#include "linear_impl.h"

#undef VLEN
#undef TILE_ROWS
#undef TILE_VECS
#undef DEPTH_BLOCK
#undef TRANSPOSE_TILE
#undef THREAD_ID
#undef TEAM_SIZE
