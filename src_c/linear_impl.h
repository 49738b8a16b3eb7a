/* Fully connected layers, y = x @ W^T + b, and their gradients, on the
 * convolutions' micro-kernel; included by conv_impl.h, whose operands,
 * multiply, transpose_to_rows and share it uses.
 *
 * Each product is arranged so that the weight matrix W (out_f x in_f), by
 * far the largest operand, is read in place and as few times as possible,
 * and so that the batch, however small, never decides the vector width of
 * the weight gradient or of the input gradient:
 *   forward:  y^T (out_f x N) = W @ x^T, the batch padded to whole vectors;
 *   dx:       dx (N x in_f)   = dy @ W;
 *   dW:       dW (out_f x in_f) = dy^T @ x.
 * Why not BLAS: NumPy's BLAS runs its own thread pool, which spins against
 * the kernels' OpenMP team between calls, and on one thread it took 1.6 ms
 * for the forward product of mnist2's fc1, against 0.94 ms here on two
 * (see docs/engine.md). */

/* Threads for a product of m x n x depth multiply-adds. */
static int product_threads(int64_t m, int64_t n, int64_t depth)
{
    const double work = (double)m * (double)n * (double)depth / 16;
    return fc_threads_for(work > 1e15 ? (int64_t)1e15 : (int64_t)work);
}

/* C (m x n) = A (m x depth) @ B (depth x n), for any n:
 * A(r, k) = a[r*a_row + k*a_step], B(k, j) = b[k*ldb + j],
 * C(r, j) = c[r*ldc + j]. The whole vectors of columns are read and written
 * in place; the last n % VLEN go through a zero-padded copy of B's and a
 * scratch C, so nothing past the end of a row is touched. The threads share
 * out the rows (by_rows) or the column vectors. Returns 0, or -1 when memory
 * ran out. */
static int matmul(REAL *c, int64_t ldc, const REAL *a, int64_t a_row, int64_t a_step,
                  const REAL *b, int64_t ldb, int64_t m, int64_t n, int64_t depth,
                  int by_rows)
{
    const int64_t whole = n / VLEN * VLEN, tail = n - whole;
    int64_t *a_rows = malloc((size_t)m * sizeof *a_rows);
    int64_t *b_rows = malloc((size_t)depth * sizeof *b_rows);
    int64_t *tail_rows = tail ? malloc((size_t)depth * sizeof *tail_rows) : NULL;
    REAL *b_tail = tail ? calloc((size_t)(depth * VLEN), sizeof(REAL)) : NULL;
    REAL *c_tail = tail ? calloc((size_t)(m * VLEN), sizeof(REAL)) : NULL;
    int status = -1;
    if (!a_rows || !b_rows || (tail && (!tail_rows || !b_tail || !c_tail)))
        goto done;
    for (int64_t r = 0; r < m; r++)
        a_rows[r] = r * a_row;
    for (int64_t k = 0; k < depth; k++)
        b_rows[k] = k * ldb;
    for (int64_t k = 0; tail && k < depth; k++) {
        tail_rows[k] = k * VLEN;
        memcpy(b_tail + k * VLEN, b + k * ldb + whole, (size_t)tail * sizeof(REAL));
    }
    /* The tail counts as one more vector of columns when they are shared out. */
    const int64_t columns = whole + (tail ? VLEN : 0);
    FC_OMP(parallel num_threads(product_threads(m, n, depth)))
    {
        int64_t lo, hi;
        share(by_rows ? m : columns, by_rows ? 1 : VLEN, THREAD_ID(), TEAM_SIZE(), &lo, &hi);
        const int64_t r_lo = by_rows ? lo : 0, r_hi = by_rows ? hi : m;
        const int64_t j_lo = by_rows ? 0 : lo, j_hi = by_rows ? whole : (hi < whole ? hi : whole);
        const int edge_too = tail && (by_rows || hi > whole);
        /* One depth block at a time across all the thread's columns, so
         * that the block of A stays in cache while every column panel reuses
         * it: with the whole depth per panel, mnist2's fc1 forward pass took
         * 1.49 ms instead of 1.02 ms. */
        for (int64_t k0 = 0; k0 < depth; k0 += DEPTH_BLOCK) {
            const int64_t kd = depth - k0 < DEPTH_BLOCK ? depth - k0 : DEPTH_BLOCK;
            const int add = k0 > 0;
            const operands body = {a + k0 * a_step, a_rows, a_step, b, b_rows + k0, c, ldc};
            const operands edge = {a + k0 * a_step, a_rows, a_step, b_tail, tail_rows + k0,
                                   c_tail, VLEN};
            multiply(&body, r_lo, r_hi, j_lo, j_hi, kd, add);
            if (edge_too)
                multiply(&edge, r_lo, r_hi, 0, VLEN, kd, add);
        }
    }
    for (int64_t r = 0; tail && r < m; r++)
        memcpy(c + r * ldc + whole, c_tail + r * VLEN, (size_t)tail * sizeof(REAL));
    status = 0;
done:
    free(a_rows);
    free(b_rows);
    free(tail_rows);
    free(b_tail);
    free(c_tail);
    return status;
}

/* y (n, out_f) = x (n, in_f) @ weight^T + bias, weight (out_f, in_f), bias
 * (out_f,) or NULL. Returns 0, or -1 when memory ran out. */
int FC_NAME(linear_forward)(REAL *y, const REAL *x, const REAL *weight, const REAL *bias,
                            int64_t n, int64_t in_f, int64_t out_f)
{
    /* x^T with its columns padded by zeros to whole vectors: the padding
     * feeds products that are dropped, and must not be NaN or denormal.
     * Its rows are an odd number of cache lines apart: 2^k lines apart, the
     * rows of a column panel share a few sets of the L1 cache and evict one
     * another (mnist2's fc1 forward pass: 1.02 ms with rows of 512 bytes,
     * 0.94 ms with 576). */
    const int64_t wide = round_up(n, VLEN);
    const int64_t ld = wide / VLEN % 2 ? wide : wide + VLEN;
    REAL *x_t = calloc((size_t)(in_f * ld), sizeof(REAL));
    REAL *y_t = malloc((size_t)(out_f * wide) * sizeof(REAL));
    int status = -1;
    if (x_t && y_t) {
        transpose_to_rows(x_t, ld, x, in_f, n, in_f);
        /* By rows of W: each thread streams its own share of the weights. */
        status = matmul(y_t, wide, weight, in_f, 1, x_t, ld, out_f, wide, in_f, 1);
    }
    if (status == 0) {
        transpose_to_rows(y, out_f, y_t, wide, out_f, n);
        for (int64_t i = 0; bias && i < n; i++)
            for (int64_t f = 0; f < out_f; f++)
                y[i * out_f + f] += bias[f];
    }
    free(x_t);
    free(y_t);
    return status;
}

/* The gradients of linear_forward for dy (n, out_f): dx (n, in_f), dweight
 * (out_f, in_f) and dbias (out_f,), each skipped when NULL. Returns 0, or -1
 * when memory ran out. */
int FC_NAME(linear_backward)(REAL *dx, REAL *dweight, REAL *dbias, const REAL *dy,
                             const REAL *x, const REAL *weight, int64_t n, int64_t in_f,
                             int64_t out_f)
{
    int status = 0;
    if (dweight) /* dy^T: A(f, i) = dy[i*out_f + f] */
        status = matmul(dweight, in_f, dy, 1, out_f, x, in_f, out_f, in_f, n, 0);
    if (status == 0 && dx)
        status = matmul(dx, in_f, dy, out_f, 1, weight, in_f, n, in_f, out_f, 0);
    if (status == 0 && dbias) {
        double *sums = calloc((size_t)out_f, sizeof *sums);
        if (!sums)
            return -1;
        for (int64_t i = 0; i < n; i++)
            for (int64_t f = 0; f < out_f; f++)
                sums[f] += dy[i * out_f + f];
        for (int64_t f = 0; f < out_f; f++)
            dbias[f] = (REAL)sums[f];
        free(sums);
    }
    return status;
}
