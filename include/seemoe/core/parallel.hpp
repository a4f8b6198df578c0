// seemoe/core/parallel.hpp — optional OpenMP, in one place.
//
// seemoe builds and runs correctly without OpenMP; with it, hot ops split their outermost loop
// (batch x heads in attention, experts or row blocks in the MoE) across threads. Parallel regions
// are never nested: parallel_for runs serially when called from inside another one, and Eigen's
// own GEMM threading is switched off inside our regions so the two never fight for the cores.
// Thread count: OMP_NUM_THREADS, or set_num_threads() (the example's --threads flag).
#pragma once

#include <Eigen/Core>

#include "common.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace seemoe {

inline int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

inline void set_num_threads(int n) {
    SEEMOE_CHECK(n >= 1, "[set_num_threads] need at least one thread, got ", n);
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    Eigen::setNbThreads(n);
}

inline bool in_parallel_region() {
#ifdef _OPENMP
    return omp_in_parallel() != 0;
#else
    return false;
#endif
}

// Calls body(i) for i in [0, n), split statically over the threads when there is more than one
// item of work and we are not already inside a parallel region. `body` must not throw.
template <typename Body>
void parallel_for(Index n, Body&& body) {
#ifdef _OPENMP
    if (n > 1 && !in_parallel_region() && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
        for (Index i = 0; i < n; ++i) body(i);
        return;
    }
#endif
    for (Index i = 0; i < n; ++i) body(i);
}

// Same, with dynamic scheduling: for items of very different cost (experts with uneven loads).
template <typename Body>
void parallel_for_dynamic(Index n, Body&& body) {
#ifdef _OPENMP
    if (n > 1 && !in_parallel_region() && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(dynamic, 1)
        for (Index i = 0; i < n; ++i) body(i);
        return;
    }
#endif
    for (Index i = 0; i < n; ++i) body(i);
}

}  // namespace seemoe
