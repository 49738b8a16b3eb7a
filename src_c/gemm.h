/* The part of the register-tiled matrix kernel that does not depend on the
 * float type: its tile sizes, and the helpers that share a loop's work out
 * among the OpenMP team. gemm.inc holds the kernel itself, written in REAL;
 * winograd.inc, conv.inc and linear.inc include this header for the helpers.
 * Stands alone: compiles without REAL and in any include order.
 */
#ifndef FC_GEMM_H
#define FC_GEMM_H

#include <assert.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastconv.h"

/* A tile updates 8 rows x 2 vectors of C: 16 accumulators leave registers for
 * the two column loads, and 16 multiply-adds per 10 loads keep the FMA units,
 * not the load ports, the bottleneck. */
#define TILE_ROWS 8
#define TILE_VECS 2
/* Depth handled per pass over a column panel: 128 rows x 2 vectors of B are
 * 16 KiB, which stay in L1 while every row block of C reuses them. */
#define DEPTH_BLOCK 128

/* n rounded up to a multiple of m. */
static int64_t round_up(int64_t n, int64_t m)
{
    assert(n >= 0 && m > 0);
    return (n + m - 1) / m * m;
}

/* Part [*first, *last) of `count` items for thread t of `team`, in whole
 * multiples of `unit`: contiguous, nearly equal shares. */
static void share(int64_t count, int64_t unit, int t, int team, int64_t *first, int64_t *last)
{
    assert(count >= 0 && unit > 0);
    assert(team > 0 && t >= 0 && t < team);
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

/* Threads for a product of m x n x depth multiply-adds. */
static int product_threads(int64_t m, int64_t n, int64_t depth)
{
    const double work = (double)m * (double)n * (double)depth / 16;
    return fc_threads_for(work > 1e15 ? (int64_t)1e15 : (int64_t)work);
}

#endif
