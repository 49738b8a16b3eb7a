/* Thread count shared by every parallel loop of the kernels, and the switch
 * between Winograd and the direct convolution: compiled once, not per float
 * type (see fastconv.h).
 *
 * It is one process-wide value rather than OpenMP's per-thread setting, because
 * the kernels run on whichever Python thread calls them and all of those threads
 * must obey set_num_threads. */
#include <stdatomic.h>

#include "fastconv.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many elements a loop costs less than waking the thread team. */
#define FC_MIN_PARALLEL_WORK ((int64_t)1 << 15)

/* 0 until set_num_threads is called: OpenMP's default then applies. */
static atomic_int configured_threads = 0;

int fc_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

void fc_set_num_threads(int n)
{
    atomic_store_explicit(&configured_threads, n > 0 ? n : 1, memory_order_relaxed);
}

int fc_get_num_threads(void)
{
#ifdef _OPENMP
    int n = atomic_load_explicit(&configured_threads, memory_order_relaxed);
    return n > 0 ? n : omp_get_max_threads();
#else
    return 1;
#endif
}

int fc_threads_for(int64_t work)
{
    return work < FC_MIN_PARALLEL_WORK ? 1 : fc_get_num_threads();
}

/* FC_WINOGRAD_AUTO by default; FC_WINOGRAD_OFF makes every convolution take
 * the direct kernel, FC_WINOGRAD_ALWAYS every stride-1 3x3 one take Winograd,
 * for the tests and benchmarks that compare the two. */
static atomic_int winograd_mode = FC_WINOGRAD_AUTO;

void fc_set_winograd(int mode)
{
    atomic_store_explicit(&winograd_mode,
                          mode == FC_WINOGRAD_ALWAYS ? FC_WINOGRAD_ALWAYS
                          : mode != FC_WINOGRAD_OFF  ? FC_WINOGRAD_AUTO
                                                     : FC_WINOGRAD_OFF,
                          memory_order_relaxed);
}

int fc_winograd_enabled(void)
{
    return atomic_load_explicit(&winograd_mode, memory_order_relaxed);
}
