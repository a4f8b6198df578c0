// seemoe/optim/clip.hpp — gradient clipping by global L2 norm, as torch.nn.utils.clip_grad_norm_.
//
//   total_norm = sqrt(sum over all parameters and elements of grad^2)
//   if max_norm / (total_norm + 1e-6) < 1:  every grad *= max_norm / (total_norm + 1e-6)
//
// Convention: returns the norm measured BEFORE clipping (what torch returns and what a training
// log wants). Parameters whose gradient was never allocated are skipped. The sum of squares is
// accumulated in double, so float gradients of large models do not lose small contributions.
// Parameters are summed on the threads, each into its own slot, and the slots added in order: the
// norm does not depend on the thread count.
// A non-finite norm is returned as is and, like torch's default, poisons the gradients (the
// caller sees the nan/inf in the returned norm and can skip the step).
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"

namespace seemoe {

// The global L2 norm of the gradients that exist; no clipping.
template <typename T>
double grad_norm(const std::vector<Tensor<T>>& params) {
    std::vector<double> sums(params.size(), 0.0);
    parallel_for_dynamic(static_cast<Index>(params.size()), [&](Index i) {
        const Tensor<T>& p = params[static_cast<std::size_t>(i)];
        const T* g = p.grad_data_if_any();
        if (g != nullptr)
            sums[static_cast<std::size_t>(i)] = ConstVectorMap<T>(g, p.numel()).template cast<double>().squaredNorm();
    });
    double sum_sq = 0.0;
    for (double s : sums) sum_sq += s;
    return std::sqrt(sum_sq);
}

// Scales all gradients together so their global L2 norm is at most max_norm; returns the norm
// before clipping.
template <typename T>
double clip_grad_norm(const std::vector<Tensor<T>>& params, double max_norm) {
    SEEMOE_CHECK(max_norm >= 0, "[clip_grad_norm] max_norm must be >= 0, got ", max_norm);
    const double total_norm = grad_norm(params);
    const double clip_coef = max_norm / (total_norm + 1e-6);
    // Written as !(coef >= 1) so a nan norm propagates into the grads, as torch does.
    if (!(clip_coef >= 1.0)) {
        parallel_for_dynamic(static_cast<Index>(params.size()), [&](Index i) {
            const Tensor<T>& p = params[static_cast<std::size_t>(i)];
            if (p.has_grad()) VectorMap<T>(p.node()->grad->data(), p.numel()) *= static_cast<T>(clip_coef);
        });
    }
    return total_norm;
}

}  // namespace seemoe
