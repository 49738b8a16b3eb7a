/* Winograd F(2x2, 3x3) for stride-1 3x3 convolutions, written once for both
 * float types and included by conv_impl.h (whose micro-kernel, multiply, does
 * the products).
 *
 * Why: a 2x2 block of outputs of one filter over one channel costs 36
 * multiply-adds directly and 16 in the Winograd domain, where the convolution
 * becomes 16 independent matrix products, one per position xi of a 4x4 tile:
 *   M[xi] (F x tiles) = U[xi] (F x C) @ V[xi] (C x tiles),
 * with U = G g G^T the transformed 3x3 filters and V = B^T d B the transformed
 * 4x4 input tiles (stride 2, overlapping by 2). The transforms cost additions
 * only, proportional to C + F per tile rather than C * F, so on layers with
 * tens of channels the products dominate and the layer runs in about half the
 * multiply-adds. Its rounding differs from the direct sum by a few units in
 * the last place (the transforms add and subtract before multiplying); the
 * tests hold it to the same tolerances as the direct kernel.
 *
 *   B^T = | 1  0 -1  0 |   G = | 1    0    0  |   A^T = | 1  1  1  0 |
 *         | 0  1  1  0 |       | 1/2  1/2  1/2 |         | 0  1 -1 -1 |
 *         | 0 -1  1  0 |       | 1/2 -1/2  1/2 |
 *         | 0  1  0 -1 |       | 0    0    1  |
 *   y (2x2) = A^T (U (.) V) A, correlation as in every CNN layer.
 *
 * Work is cut into units, one row of output tiles of one image (two output
 * rows); each thread takes a contiguous run of units and handles them in
 * chunks whose transformed tiles fit in L2. A chunk spans several images when
 * the planes are small, so that the products on 8x8 planes are still wide.
 * Every output depends on its own tile only, so the result does not depend on
 * the thread count or the chunking.
 */

/* Chunks of tile rows: transformed tiles of about WINO_CHUNK_BYTES (V, with
 * M or the transformed gradients beside it, stays in L2), but at least
 * WINO_MIN_COLS tiles, so that the products are wide enough to keep the
 * micro-kernel busy on the small late layers. Both measured on cifar6's layers
 * (256 KiB chunks were 5-10% slower, 64 KiB ones starved the 8x8 layers). */
#define WINO_CHUNK_BYTES ((int64_t)128 * 1024)
#define WINO_MIN_COLS 64
/* What the transforms cost per vector of tiles of one tile row, in vector
 * multiply-adds (two per cycle): per input channel (split, transform, the
 * stores of V and their reloads by the products) and per filter (the output
 * transform).
 * Fitted, with the 0.85 margin of winograd_applies, to timings of both
 * paths (forward and weight gradient, batch 64) on 80 layer shapes: 8x8 to
 * 32x32 planes, 16 to 128 channels and filters. It picks the faster path for
 * every pass of every cifar6 and mnist2 layer; where it errs on the other
 * shapes, the path it picks was at most 13% slower than the other. The fit
 * predates the tap planes of wino_split, which made the input transform of
 * short tile rows cheaper; it still picks the faster path on every cifar6
 * and mnist2 layer (measured again after), and charging the input transform
 * per tile instead of per whole vector would wrongly send mnist2's conv2
 * through Winograd (forward 2.25 ms against 1.94 ms direct). */
#define WINO_COST_PER_CHANNEL 230
#define WINO_COST_PER_FILTER 20

typedef struct {
    int64_t channels, filters;
    const fc_window *g;
    int64_t tiles_h, tiles_w;   /* output tiles per image: ceil(OH/2) x ceil(OW/2) */
    int64_t chunk;              /* units per product */
    int64_t v_xi, m_xi;         /* distance between the 16 matrices of V and of M */
    int64_t cols;               /* columns of V and M: chunk * tiles_w, whole vectors, + 1 */
    int64_t *filter_rows;       /* (F,): f*C, rows of U[xi] */
    int64_t *channel_rows;      /* (C,): c*cols, rows of V[xi] */
} wino_plan;

/* A distance of at least n elements between the 16 matrices of a transform,
 * one vector past a multiple of 4 KiB: the transforms write and read the 16
 * at once, and 16 streams a multiple of 4 KiB apart would all fall into one
 * set of the L1 cache, which holds only 8 to 12 lines of a set. */
static int64_t spread_stride(int64_t n)
{
    return round_up(n, 4096 / (int64_t)sizeof(REAL)) + VLEN;
}

/* Whether plan p is a stride-1 3x3 convolution that Winograd does faster.
 * Per row of output tiles, in vector multiply-adds: the direct kernel does
 * 9*C*F per pixel of two rows of the wide grid (OW + 2 columns); Winograd
 * does 16*C*F per tile and transforms whose cost grows with C and F but not
 * C*F, and is paid per whole vector of tiles. So Winograd wins on layers with
 * many channels and filters and loses on narrow ones (cifar6's first layer,
 * mnist2's 14x14 planes of 32 channels). */
static int winograd_applies(const conv_plan *p)
{
    const fc_window *g = p->g;
    if (!fc_winograd_enabled() || g->sh != 1 || g->sw != 1 || g->kh != 3 || g->kw != 3)
        return 0;
    const double c = (double)p->channels, f = (double)p->filters;
    const int64_t tiles_w = (g->ow + 1) / 2;
    const double direct = 9 * c * f * 2 * (double)(g->ow + 2) / (2 * VLEN);
    const double winograd = 16 * c * f * (double)tiles_w / (2 * VLEN)
                            + (WINO_COST_PER_CHANNEL * c + WINO_COST_PER_FILTER * f)
                                  * (double)(round_up(tiles_w, VLEN) / VLEN);
    return winograd < 0.85 * direct;
}

static void free_wino_plan(wino_plan *w)
{
    free(w->filter_rows);
    free(w->channel_rows);
}

/* Returns 0, or -1 when the tables could not be allocated. */
static int make_wino_plan(wino_plan *w, const conv_plan *p)
{
    memset(w, 0, sizeof *w);
    w->channels = p->channels;
    w->filters = p->filters;
    w->g = p->g;
    w->tiles_h = (p->g->oh + 1) / 2;
    w->tiles_w = (p->g->ow + 1) / 2;
    const int64_t widest = p->channels > p->filters ? p->channels : p->filters;
    int64_t target = WINO_CHUNK_BYTES / (16 * widest * (int64_t)sizeof(REAL));
    if (target < WINO_MIN_COLS)
        target = WINO_MIN_COLS;
    w->chunk = target / w->tiles_w > 1 ? target / w->tiles_w : 1;
    /* One vector more than the tiles: wino_input stores whole vectors. */
    w->cols = round_up(w->chunk * w->tiles_w, VLEN) + VLEN;
    w->v_xi = spread_stride(p->channels * w->cols);
    w->m_xi = spread_stride(p->filters * w->cols);
    w->filter_rows = malloc((size_t)p->filters * sizeof(int64_t));
    w->channel_rows = malloc((size_t)p->channels * sizeof(int64_t));
    if (!w->filter_rows || !w->channel_rows) {
        free_wino_plan(w);
        return -1;
    }
    for (int64_t f = 0; f < p->filters; f++)
        w->filter_rows[f] = f * p->channels;
    for (int64_t c = 0; c < p->channels; c++)
        w->channel_rows[c] = c * w->cols;
    return 0;
}

/* u (16, F, C) = G g G^T of every 3x3 filter g of weight (F, C, 3, 3). */
static void wino_filters(REAL *u, const REAL *weight, int64_t filters, int64_t channels)
{
    const int64_t fc = filters * channels;
    for (int64_t n = 0; n < fc; n++) {
        const REAL *g = weight + 9 * n;
        REAL t[4][3]; /* G g: rows */
        for (int j = 0; j < 3; j++) {
            t[0][j] = g[j];
            t[1][j] = (REAL)0.5 * (g[j] + g[3 + j] + g[6 + j]);
            t[2][j] = (REAL)0.5 * (g[j] - g[3 + j] + g[6 + j]);
            t[3][j] = g[6 + j];
        }
        for (int i = 0; i < 4; i++) { /* (G g) G^T: columns */
            u[(4 * i + 0) * fc + n] = t[i][0];
            u[(4 * i + 1) * fc + n] = (REAL)0.5 * (t[i][0] + t[i][1] + t[i][2]);
            u[(4 * i + 2) * fc + n] = (REAL)0.5 * (t[i][0] - t[i][1] + t[i][2]);
            u[(4 * i + 3) * fc + n] = t[i][2];
        }
    }
}

/* Length of one tap plane of wino_split: a row of tiles_w for each row pair
 * of the padded image, plus a vector for the loads past the last tile. */
static int64_t tap_plane_length(const wino_plan *w)
{
    return (w->tiles_h + 1) * w->tiles_w + VLEN;
}

/* Values per split image: 8 tap planes per channel. */
static int64_t split_size(const wino_plan *w)
{
    return 8 * w->channels * tap_plane_length(w);
}

/* Values of one of wino_split's two row buffers: a padded row, with zeros up
 * to the columns that whole vectors of tiles read past its end. */
static int64_t split_row_buffer(const wino_plan *w)
{
    return round_up(2 * w->tiles_w + 2 * VLEN + 4, VLEN);
}

/* One image (C, H, W), zero-padded and cut into 8 tap planes per channel:
 * plane (c, a, j) holds at r*tiles_w + t the padded pixel (2r + a, 2t + j),
 * for row parity a in {0, 1} and column tap j in 0..3. Tap (i, j) of tile
 * (th, t) is then plane (c, i % 2, j) at (th + i/2)*tiles_w + t: consecutive
 * tiles, across tile rows, are consecutive values, so wino_input fills whole
 * vectors even when a tile row is shorter than one (8x8 planes have 4 tiles
 * a row; a vector per tile row left 12 of 16 lanes idle).
 * Each row is copied into one of the two halves of row_buffer (2 *
 * split_row_buffer values), between the zeros of its padding, and cut from
 * there in whole vectors; the lanes past a plane row's tiles_w
 * values are zeroed, and land on the next rows' place, which is written
 * after, or, below the image, holds zeros anyway.
 * Rows that are all padding are never written: they keep the zeros of the
 * scratch's allocation, which holds split images of this plan only.
 * Returns whether every pixel is finite (x*0 is 0 for a finite x, else NaN). */
FC_CLONES static int wino_split(REAL *planes, REAL *row_buffer, const REAL *image,
                                const wino_plan *w)
{
    vec zero_if_finite = {0};
    REAL tail_zero_if_finite = 0;
    const fc_window *g = w->g;
    const int64_t tw = w->tiles_w, length = tap_plane_length(w);
    lane_index evens, odds, lane; /* lanes of two vectors of columns, a then b */
    for (int k = 0; k < VLEN; k++) {
        evens[k] = 2 * k;
        odds[k] = 2 * k + 1;
        lane[k] = k;
    }
    /* Two row buffers, used in turn: a row is copied into one while the row
     * before is cut from the other. Cut right after its copy, a row's loads
     * straddle its stores, which the CPU cannot forward, and waited for them
     * to retire (37% of the function's time). */
    const int64_t half = split_row_buffer(w);
    memset(row_buffer, 0, (size_t)(2 * half) * sizeof(REAL));
    /* The rows that reach a tile: h + ph <= 2*tiles_h + 1. */
    int64_t rows = 2 * w->tiles_h + 2 - g->ph;
    rows = rows < g->h ? rows : g->h;
    const int64_t count = rows > 0 ? w->channels * rows : 0;
    for (int64_t k = 0; k <= count; k++) {
        if (k < count) { /* copy row k */
            const REAL *src = image + ((k / rows) * g->h + k % rows) * g->w;
            REAL *row = row_buffer + (k % 2) * half + g->pw;
            int64_t q = 0;
            for (; q + VLEN <= g->w; q += VLEN) {
                const vec pixels = load_vec(src + q);
                store_vec(row + q, pixels);
                zero_if_finite += pixels * 0;
            }
            for (; q < g->w; q++) {
                row[q] = src[q];
                tail_zero_if_finite += src[q] * 0;
            }
        }
        if (k == 0)
            continue;
        /* cut row k - 1 */
        const int64_t c = (k - 1) / rows, padded_row = (k - 1) % rows + g->ph;
        const int64_t a = padded_row % 2, r = padded_row / 2;
        const REAL *row = row_buffer + ((k - 1) % 2) * half;
        REAL *plane = planes + (c * 8 + a * 4) * length + r * tw;
        for (int64_t t = 0; t < tw; t += VLEN) {
            /* Lanes past the row's tiles read real pixels (the last tiles'
             * right taps); they are stored as zeros. */
            lane_index keep;
            keep = lane < (__typeof__(lane[0]))(tw - t < VLEN ? tw - t : VLEN);
            const REAL *at = row + 2 * t;
            const vec lo = load_vec(at), hi = load_vec(at + VLEN);
            const vec lo2 = load_vec(at + 2), hi2 = load_vec(at + 2 + VLEN);
            store_vec(plane + t, (vec)((lane_index)__builtin_shuffle(lo, hi, evens) & keep));
            store_vec(plane + length + t, (vec)((lane_index)__builtin_shuffle(lo, hi, odds) & keep));
            store_vec(plane + 2 * length + t,
                      (vec)((lane_index)__builtin_shuffle(lo2, hi2, evens) & keep));
            store_vec(plane + 3 * length + t,
                      (vec)((lane_index)__builtin_shuffle(lo2, hi2, odds) & keep));
        }
    }
    for (int k = 0; k < VLEN; k++)
        tail_zero_if_finite += zero_if_finite[k];
    return tail_zero_if_finite == 0;
}

/* V (16, C, cols), columns col0 .. col0 + (th1 - th0)*tiles_w: the
 * transformed input tiles of tile rows th0 .. th1 - 1 of one image split by
 * wino_split. Whole vectors are stored, so up to VLEN - 1 columns past them
 * are overwritten: the next run's, which are written after, or the padding
 * at the end of each row of V. */
FC_CLONES static void wino_input(REAL *v, int64_t col0, const REAL *planes, int64_t th0,
                                 int64_t th1, const wino_plan *w)
{
    const int64_t tw = w->tiles_w, length = tap_plane_length(w);
    const int64_t plane_stride = w->v_xi;
    const int64_t q0 = th0 * tw, q1 = th1 * tw;
    for (int64_t c = 0; c < w->channels; c++) {
        const REAL *p = planes + c * 8 * length;
        REAL *out = v + c * w->cols + col0 - q0;
        for (int64_t q = q0; q < q1; q += VLEN) {
            vec d[4][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                    d[i][j] = load_vec(p + ((i % 2) * 4 + j) * length + (i / 2) * tw + q);
            for (int j = 0; j < 4; j++) { /* B^T d: rows */
                const vec r0 = d[0][j] - d[2][j], r1 = d[1][j] + d[2][j];
                const vec r2 = d[2][j] - d[1][j], r3 = d[1][j] - d[3][j];
                d[0][j] = r0, d[1][j] = r1, d[2][j] = r2, d[3][j] = r3;
            }
            for (int i = 0; i < 4; i++) { /* (B^T d) B: columns */
                store_vec(out + (4 * i + 0) * plane_stride + q, d[i][0] - d[i][2]);
                store_vec(out + (4 * i + 1) * plane_stride + q, d[i][1] + d[i][2]);
                store_vec(out + (4 * i + 2) * plane_stride + q, d[i][2] - d[i][1]);
                store_vec(out + (4 * i + 3) * plane_stride + q, d[i][1] - d[i][3]);
            }
        }
    }
}

/* dst[0 .. n) = the first n lanes of v, n <= VLEN; nothing when n <= 0. */
FC_INLINE void store_lanes(REAL *dst, vec v, int64_t n)
{
    if (n >= VLEN) {
        store_vec(dst, v);
    } else if (n > 0) {
        REAL lanes[VLEN];
        store_vec(lanes, v);
        memcpy(dst, lanes, (size_t)n * sizeof(REAL));
    }
}

/* Outputs 2t .. 2t + 2*VLEN of a row, from its even (a) and odd (b) columns. */
FC_INLINE void store_interleaved(REAL *y_row, int64_t t, vec a, vec b, int64_t ow)
{
    vec lo, hi;
    interleave(a, b, &lo, &hi);
    store_lanes(y_row + 2 * t, lo, ow - 2 * t);
    store_lanes(y_row + 2 * t + VLEN, hi, ow - 2 * t - VLEN);
}

/* out[r][c]: output (r, c) of a vector of consecutive tiles, from M at `in`
 * (the 16 matrices plane_stride apart), plus b: (A^T M) A. */
FC_INLINE void output_tiles(vec out[2][2], const REAL *in, int64_t plane_stride, vec b)
{
    vec s[2][4]; /* A^T M: rows */
    for (int j = 0; j < 4; j++) {
        const vec m0 = load_vec(in + (0 + j) * plane_stride);
        const vec m1 = load_vec(in + (4 + j) * plane_stride);
        const vec m2 = load_vec(in + (8 + j) * plane_stride);
        const vec m3 = load_vec(in + (12 + j) * plane_stride);
        s[0][j] = m0 + m1 + m2;
        s[1][j] = m1 - m2 - m3;
    }
    for (int r = 0; r < 2; r++) { /* (A^T M) A: columns */
        out[r][0] = s[r][0] + s[r][1] + s[r][2] + b;
        out[r][1] = s[r][1] - s[r][2] - s[r][3] + b;
    }
}

/* The outputs of tile rows th0 .. th1 - 1 of one image y (F, OH, OW) (those
 * below OH and left of OW) from M (16, F, cols), columns col0 ..
 * col0 + (th1 - th0)*tiles_w, plus bias. Only outputs are written: other
 * threads write the rows around them.
 * A tile row as long as a vector or longer is stored a vector of tiles at a
 * time. Shorter ones are transformed as wino_input does, a vector across
 * tile rows, and each tile row's outputs copied to its two rows of y from a
 * buffer: a vector per tile row left half the lanes idle on 16x16 planes and
 * three quarters on 8x8. The copies are loops on purpose: as calls to
 * memcpy, their few values each cost more than the transform saved. */
FC_CLONES __attribute__((optimize("no-tree-loop-distribute-patterns")))
static void wino_output(REAL *y, const REAL *m, int64_t col0, int64_t th0, int64_t th1,
                        const REAL *bias, const wino_plan *w)
{
    const fc_window *g = w->g;
    const int64_t plane_stride = w->m_xi, tw = w->tiles_w;
    const int64_t q0 = th0 * tw, q1 = th1 * tw;
    for (int64_t f = 0; f < w->filters; f++) {
        const vec b = (vec){0} + (bias ? bias[f] : 0);
        const REAL *in = m + f * w->cols + col0 - q0;
        REAL *y_plane = y + f * g->oh * g->ow;
        vec out[2][2];
        if (tw >= VLEN) {
            for (int64_t th = th0; th < th1; th++) {
                for (int64_t t = 0; t < tw; t += VLEN) {
                    output_tiles(out, in + th * tw + t, plane_stride, b);
                    for (int r = 0; r < 2 && 2 * th + r < g->oh; r++)
                        store_interleaved(y_plane + (2 * th + r) * g->ow, t, out[r][0],
                                          out[r][1], g->ow);
                }
            }
            continue;
        }
        for (int64_t q = q0; q < q1; q += VLEN) {
            output_tiles(out, in + q, plane_stride, b);
            REAL pairs[2][2 * VLEN]; /* each row's outputs, tile after tile */
            for (int r = 0; r < 2; r++) {
                vec lo, hi;
                interleave(out[r][0], out[r][1], &lo, &hi);
                store_vec(pairs[r], lo);
                store_vec(pairs[r] + VLEN, hi);
            }
            const int64_t q_end = q + VLEN < q1 ? q + VLEN : q1;
            for (int64_t th = q / tw; th * tw < q_end; th++) {
                const int64_t first = th * tw > q ? th * tw : q;
                const int64_t last = (th + 1) * tw < q_end ? (th + 1) * tw : q_end;
                const int64_t col = 2 * (first - th * tw);
                const int64_t count = col + 2 * (last - first) > g->ow ? g->ow - col
                                                                       : 2 * (last - first);
                for (int r = 0; r < 2 && 2 * th + r < g->oh; r++) {
                    const REAL *src = pairs[r] + 2 * (first - q);
                    REAL *dst = y_plane + (2 * th + r) * g->ow + col;
                    for (int64_t k = 0; k < count; k++)
                        dst[k] = src[k];
                }
            }
        }
    }
}

/* y (n, F, OH, OW) = conv(x, weight) + bias, the filters given transformed,
 * u (16, F, C); not_finite[i] set to 1 for each image i that holds a NaN or
 * an inf (the caller zeroes it). Returns 0, or -1 when scratch ran out. */
static int run_winograd(REAL *y, const REAL *x, const REAL *u, const REAL *bias,
                        int64_t n_images, const wino_plan *w, char *not_finite)
{
    const fc_window *g = w->g;
    const int64_t in_image = w->channels * g->h * g->w;
    const int64_t out_image = w->filters * g->oh * g->ow;
    const int64_t units = n_images * w->tiles_h;
    const int threads = fc_threads_for(n_images * w->filters * g->oh * g->ow * w->channels);
    int failed = 0;
    FC_OMP(parallel num_threads(threads) reduction(|:failed))
    {
        int64_t first, last;
        share(units, 1, THREAD_ID(), TEAM_SIZE(), &first, &last);
        const size_t planes_size = (size_t)split_size(w);
        const size_t v_size = (size_t)(16 * w->v_xi);
        /* calloc: wino_split never writes the padding, and columns past a
         * short chunk's tiles feed products that are dropped, which must not
         * be uninitialized denormals or NaNs. */
        REAL *scratch = calloc(planes_size + v_size + (size_t)(16 * w->m_xi)
                                   + (size_t)(2 * split_row_buffer(w)),
                               sizeof(REAL));
        if (!scratch) {
            failed = 1;
        } else {
            REAL *planes = scratch, *v = planes + planes_size, *m = v + v_size;
            REAL *row_buffer = m + 16 * w->m_xi;
            int64_t split_image = -1;
            for (int64_t u0 = first; u0 < last; u0 += w->chunk) {
                const int64_t count = last - u0 < w->chunk ? last - u0 : w->chunk;
                /* Runs of tile rows of one image, one wino_input call each. */
                for (int64_t k = 0; k < count;) {
                    const int64_t unit = u0 + k, image = unit / w->tiles_h;
                    const int64_t th = unit % w->tiles_h;
                    const int64_t run = count - k < w->tiles_h - th ? count - k : w->tiles_h - th;
                    if (image != split_image) {
                        if (!wino_split(planes, row_buffer, x + image * in_image, w))
                            FC_OMP(atomic write)
                            not_finite[image] = 1;
                        split_image = image;
                    }
                    wino_input(v, k * w->tiles_w, planes, th, th + run, w);
                    k += run;
                }
                const int64_t width = round_up(count * w->tiles_w, VLEN);
                for (int xi = 0; xi < 16; xi++) {
                    const operands o = {u + xi * w->filters * w->channels, w->filter_rows, 1,
                                        v + xi * w->v_xi, w->channel_rows,
                                        m + xi * w->m_xi, w->cols};
                    multiply(&o, 0, w->filters, 0, width, w->channels, 0);
                }
                for (int64_t k = 0; k < count;) {
                    const int64_t unit = u0 + k, th = unit % w->tiles_h;
                    const int64_t run = count - k < w->tiles_h - th ? count - k : w->tiles_h - th;
                    wino_output(y + unit / w->tiles_h * out_image, m, k * w->tiles_w, th,
                                th + run, bias, w);
                    k += run;
                }
            }
        }
        free(scratch);
    }
    return failed ? -1 : 0;
}

/* The forward convolution of plan p through Winograd, for winograd_applies(p).
 * A NaN or inf in a tile spreads to all four of its outputs (the transforms
 * mix every pixel of the tile into every product), where the direct sum puts
 * it only into the outputs whose window holds it: not_finite (n_images, zeroed
 * by the caller) gets a 1 for each such image, whose outputs the caller must
 * compute again directly. Returns 0, or -1 when memory ran out. */
static int winograd_forward(REAL *y, const REAL *x, const REAL *weight, const REAL *bias,
                            int64_t n_images, const conv_plan *p, char *not_finite)
{
    wino_plan w;
    if (make_wino_plan(&w, p) != 0)
        return -1;
    REAL *u = malloc((size_t)(16 * p->filters * p->channels) * sizeof(REAL));
    int status = -1;
    if (u) {
        wino_filters(u, weight, p->filters, p->channels);
        status = run_winograd(y, x, u, bias, n_images, &w, not_finite);
    }
    free(u);
    free_wino_plan(&w);
    return status;
}

/* ------------------------------------------------------------------------- */
/* The weight gradient through Winograd. The adjoint of y = A^T (U . V) A in
 * the filters: each tile's share of dweight is G^T ((A dy A^T) . V) G, where
 * dy is the tile's 2x2 output gradient. G^T (.) G is linear, so the products
 * D[xi] = A dy A^T (tiles x F) and V[xi] (C x tiles) are summed over all the
 * tiles first, 16 products with the long sum over tiles as their depth,
 *   dW^[xi]^T (C x F) += V[xi] (C x tiles) @ D[xi] (tiles x F),
 * and transformed back to 3x3 once at the end. D is built from dy transposed
 * to pixels x filters, so that its transform runs over vectors of filters. */

/* dy_t (2, OW, f_stride): output rows 2th and 2th+1 (zeros past OH) of one
 * image's dy (F, OH, OW), transposed; each filter's sum over them is added
 * to bias_sums[f] when that is not NULL. Only the F real columns are written;
 * the rest keep the zeros of the scratch's allocation. */
static void wino_dy_rows(REAL *dy_t, int64_t f_stride, const REAL *dy, int64_t th,
                         const wino_plan *w, double *bias_sums)
{
    const fc_window *g = w->g;
    const int64_t plane = g->oh * g->ow;
    for (int64_t r = 0; r < 2; r++) {
        const int64_t oh = 2 * th + r;
        REAL *rows = dy_t + r * g->ow * f_stride;
        if (oh >= g->oh) {
            for (int64_t q = 0; q < g->ow; q++)
                memset(rows + q * f_stride, 0, (size_t)w->filters * sizeof(REAL));
            continue;
        }
        transpose_to_rows(rows, f_stride, dy + oh * g->ow, plane, w->filters, g->ow);
        if (bias_sums)
            add_filter_sums(bias_sums, rows, f_stride, g->ow, w->filters);
    }
}

/* D (16, cols, f_stride), rows col0 .. col0 + tiles_w: A dy A^T of every tile
 * of one tile row, from its two rows of dy_t. A tile whose second column lies
 * past OW has a zero gradient there. */
FC_CLONES static void wino_dy_tiles(REAL *d, int64_t col0, int64_t f_stride, const REAL *dy_t,
                                    const wino_plan *w)
{
    const int64_t ow = w->g->ow;
    const int64_t xi_stride = spread_stride(w->cols * f_stride);
    for (int64_t t = 0; t < w->tiles_w; t++) {
        const REAL *row0 = dy_t + 2 * t * f_stride, *row1 = row0 + ow * f_stride;
        const int second = 2 * t + 1 < ow;
        REAL *out = d + (col0 + t) * f_stride;
        for (int64_t v = 0; v < f_stride; v += VLEN) {
            const vec zero = {0};
            vec g[2][4]; /* dy A^T: columns */
            const vec a00 = load_vec(row0 + v), a01 = second ? load_vec(row0 + f_stride + v) : zero;
            const vec a10 = load_vec(row1 + v), a11 = second ? load_vec(row1 + f_stride + v) : zero;
            g[0][0] = a00, g[0][1] = a00 + a01, g[0][2] = a00 - a01, g[0][3] = -a01;
            g[1][0] = a10, g[1][1] = a10 + a11, g[1][2] = a10 - a11, g[1][3] = -a11;
            for (int j = 0; j < 4; j++) { /* A (dy A^T): rows */
                store_vec(out + (0 + j) * xi_stride + v, g[0][j]);
                store_vec(out + (4 + j) * xi_stride + v, g[0][j] + g[1][j]);
                store_vec(out + (8 + j) * xi_stride + v, g[0][j] - g[1][j]);
                store_vec(out + (12 + j) * xi_stride + v, -g[1][j]);
            }
        }
    }
}

/* dweight (F, C, 3, 3) = G^T dW^ G of each filter pair, from dW^ (16, C, f_stride). */
static void wino_filter_grads(REAL *dweight, const REAL *hat, int64_t filters, int64_t channels,
                              int64_t f_stride)
{
    const int64_t xi_stride = channels * f_stride;
    for (int64_t c = 0; c < channels; c++)
        for (int64_t f = 0; f < filters; f++) {
            REAL m[4][4], r[3][4];
            for (int xi = 0; xi < 16; xi++)
                m[xi / 4][xi % 4] = hat[xi * xi_stride + c * f_stride + f];
            for (int j = 0; j < 4; j++) { /* G^T m: rows */
                r[0][j] = m[0][j] + (REAL)0.5 * (m[1][j] + m[2][j]);
                r[1][j] = (REAL)0.5 * (m[1][j] - m[2][j]);
                r[2][j] = (REAL)0.5 * (m[1][j] + m[2][j]) + m[3][j];
            }
            REAL *out = dweight + (f * channels + c) * 9;
            for (int i = 0; i < 3; i++) { /* (G^T m) G: columns */
                out[3 * i + 0] = r[i][0] + (REAL)0.5 * (r[i][1] + r[i][2]);
                out[3 * i + 1] = (REAL)0.5 * (r[i][1] - r[i][2]);
                out[3 * i + 2] = (REAL)0.5 * (r[i][1] + r[i][2]) + r[i][3];
            }
        }
}

/* dweight (F, C, 3, 3), and dbias (F,) unless NULL, of plan p through
 * Winograd, for winograd_applies(p). Each thread sums its tiles into its own
 * dW^ and the threads' sums are added in thread order, so a given thread
 * count always gives the same bits. An image with a NaN or inf is left out
 * and flagged in not_finite (n_images, zeroed by the caller), for the caller
 * to add its gradients directly. Returns 0, or -1 when memory ran out. */
static int winograd_weight_grad(REAL *dweight, REAL *dbias, const REAL *dy, const REAL *x,
                                int64_t n_images, const conv_plan *p, char *not_finite)
{
    wino_plan w;
    if (make_wino_plan(&w, p) != 0)
        return -1;
    const fc_window *g = p->g;
    const int64_t in_image = w.channels * g->h * g->w, out_image = w.filters * g->oh * g->ow;
    const int64_t units = n_images * w.tiles_h;
    const int64_t f_stride = round_up(w.filters, VLEN);
    const int64_t hat_size = 16 * w.channels * f_stride;
    const int threads = fc_threads_for(n_images * w.filters * g->oh * g->ow * w.channels);
    REAL *hats = calloc((size_t)(threads * hat_size), sizeof(REAL));
    double *bias_partial = dbias ? calloc((size_t)(threads * w.filters), sizeof(double)) : NULL;
    int64_t *tile_rows = malloc((size_t)w.cols * sizeof(int64_t));
    int failed = !hats || !tile_rows || (dbias && !bias_partial);
    for (int64_t t = 0; !failed && t < w.cols; t++)
        tile_rows[t] = t * f_stride;
    if (!failed) {
        FC_OMP(parallel num_threads(threads) reduction(|:failed))
        {
            const int thread = THREAD_ID();
            int64_t first, last;
            share(units, 1, thread, TEAM_SIZE(), &first, &last);
            const size_t planes_size = (size_t)split_size(&w);
            const size_t v_size = (size_t)(16 * w.v_xi);
            const int64_t d_xi = spread_stride(w.cols * f_stride);
            const size_t d_size = (size_t)(16 * d_xi);
            /* calloc: see run_winograd; the padding columns of dy_t and D up
             * to f_stride, and D's rows past a short chunk's tiles, are zero. */
            REAL *scratch = calloc(planes_size + v_size + d_size
                                       + (size_t)(2 * g->ow * f_stride)
                                       + (size_t)(2 * split_row_buffer(&w)),
                                   sizeof(REAL));
            REAL *hat = hats + thread * hat_size;
            double *sums = bias_partial ? bias_partial + thread * w.filters : NULL;
            if (!scratch) {
                failed = 1;
            } else {
                REAL *planes = scratch, *v = planes + planes_size;
                REAL *d = v + v_size, *dy_t = d + d_size;
                REAL *row_buffer = dy_t + 2 * g->ow * f_stride;
                int64_t split_image = -1;
                int finite = 1;
                int64_t u0 = first;
                while (u0 < last) {
                    /* Gather up to a chunk of tile rows of finite images, in
                     * runs of tile rows of one image. */
                    int64_t count = 0;
                    while (u0 < last && count < w.chunk) {
                        const int64_t image = u0 / w.tiles_h, th0 = u0 % w.tiles_h;
                        const int64_t left = w.chunk - count < last - u0 ? w.chunk - count : last - u0;
                        const int64_t run = left < w.tiles_h - th0 ? left : w.tiles_h - th0;
                        u0 += run;
                        if (image != split_image) {
                            finite = wino_split(planes, row_buffer, x + image * in_image, &w);
                            split_image = image;
                            if (!finite)
                                FC_OMP(atomic write)
                                not_finite[image] = 1;
                        }
                        if (!finite)
                            continue;
                        wino_input(v, count * w.tiles_w, planes, th0, th0 + run, &w);
                        for (int64_t th = th0; th < th0 + run; th++, count++) {
                            wino_dy_rows(dy_t, f_stride, dy + image * out_image, th, &w, sums);
                            wino_dy_tiles(d, count * w.tiles_w, f_stride, dy_t, &w);
                        }
                    }
                    if (count == 0)
                        continue;
                    /* The sum runs over whole vectors of tiles: the rows of D
                     * past the chunk's tiles must add zero. */
                    const int64_t depth = round_up(count * w.tiles_w, VLEN);
                    for (int xi = 0; xi < 16; xi++)
                        memset(d + xi * d_xi + count * w.tiles_w * f_stride, 0,
                               (size_t)((depth - count * w.tiles_w) * f_stride) * sizeof(REAL));
                    for (int xi = 0; xi < 16; xi++) {
                        const operands o = {v + xi * w.v_xi, w.channel_rows, 1,
                                            d + xi * d_xi, tile_rows,
                                            hat + xi * w.channels * f_stride, f_stride};
                        multiply(&o, 0, w.channels, 0, f_stride, depth, 1);
                    }
                }
            }
            free(scratch);
        }
    }
    if (!failed) {
        for (int t = 1; t < threads; t++)
            for (int64_t k = 0; k < hat_size; k++)
                hats[k] += hats[t * hat_size + k];
        wino_filter_grads(dweight, hats, w.filters, w.channels, f_stride);
        for (int64_t f = 0; dbias && f < w.filters; f++) {
            double total = 0;
            for (int t = 0; t < threads; t++)
                total += bias_partial[t * w.filters + f];
            dbias[f] = (REAL)total;
        }
    }
    free(hats);
    free(bias_partial);
    free(tile_rows);
    free_wino_plan(&w);
    return failed ? -1 : 0;
}

#undef WINO_CHUNK_BYTES
#undef WINO_MIN_COLS
#undef WINO_COST_PER_CHANNEL
#undef WINO_COST_PER_FILTER
