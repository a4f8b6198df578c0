// tests/gradcheck.hpp — finite-difference gradient checks for the tests, in double.
//
// gradcheck(fn, inputs) treats L = sum(seed * fn(inputs)) with a fixed random seed tensor (so
// every output element gets a different weight), computes dL/dinput by backward, and compares
// with central differences (L(x+eps) - L(x-eps)) / 2eps for every element of every input that
// requires grad. The error of one element is |analytic - numeric| / max(|analytic|, |numeric|, 1):
// relative for gradients of magnitude >= 1, absolute below that.
//
// Whole-model checks pass max_per_input: then a seeded random subset of that many elements of each
// input is checked (every element when the input is smaller), which keeps a check of a model with
// thousands of parameters to seconds while still touching every tensor.
#pragma once

#include <seemoe/core/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace seemoe::testing {

struct GradcheckResult {
    double max_error = 0.0;
    std::string worst;  // "input 1 element 7: analytic 0.25 numeric 0.2500001"
};

inline GradcheckResult gradcheck(const std::function<Tensord(const std::vector<Tensord>&)>& fn,
                                 std::vector<Tensord> inputs, double eps = 1e-5,
                                 std::uint64_t seed = 1234, Index max_per_input = 0) {
    Rng rng(seed);
    Tensord out = fn(inputs);
    Tensord weights = Tensord::randn(out.shape(), rng);
    for (auto& in : inputs) {
        if (in.requires_grad()) in.reset_grad();
    }
    out.backward(weights);

    auto loss_at = [&]() {
        NoGradGuard no_grad;
        Tensord y = fn(inputs);
        double total = 0.0;
        for (Index i = 0; i < y.numel(); ++i) total += weights.data()[i] * y.data()[i];
        return total;
    };

    GradcheckResult result;
    for (std::size_t k = 0; k < inputs.size(); ++k) {
        Tensord& in = inputs[k];
        if (!in.requires_grad()) continue;
        const Tensord analytic = in.grad();
        std::vector<Index> elements(static_cast<std::size_t>(in.numel()));
        for (Index i = 0; i < in.numel(); ++i) elements[i] = i;
        if (max_per_input > 0 && in.numel() > max_per_input) {
            for (Index i = 0; i < max_per_input; ++i)  // partial Fisher-Yates: a random subset
                std::swap(elements[i], elements[rng.randint(i, in.numel())]);
            elements.resize(static_cast<std::size_t>(max_per_input));
        }
        for (Index i : elements) {
            const double saved = in.data()[i];
            in.data()[i] = saved + eps;
            const double plus = loss_at();
            in.data()[i] = saved - eps;
            const double minus = loss_at();
            in.data()[i] = saved;
            const double numeric = (plus - minus) / (2 * eps);
            const double a = analytic.data()[i];
            const double err = std::fabs(a - numeric) / std::max({std::fabs(a), std::fabs(numeric), 1.0});
            if (err > result.max_error) {
                result.max_error = err;
                std::ostringstream msg;
                msg << "input " << k << " element " << i << ": analytic " << a << " numeric " << numeric;
                result.worst = msg.str();
            }
        }
    }
    return result;
}

// Inputs for gradchecks: N(0,1) values, requires_grad on.
inline Tensord grad_input(const Shape& shape, Rng& rng, double scale = 1.0) {
    Tensord t = Tensord::randn(shape, rng, 0.0, scale);
    t.requires_grad_();
    return t;
}

}  // namespace seemoe::testing

// Use as: CHECK_GRADCHECK(gradcheck(fn, {a, b}));  fails with the worst element named.
#define CHECK_GRADCHECK(expr)                                  \
    do {                                                       \
        const auto gc_result_ = (expr);                        \
        INFO("worst: " << gc_result_.worst);                   \
        CHECK(gc_result_.max_error < 1e-6);                    \
    } while (0)
