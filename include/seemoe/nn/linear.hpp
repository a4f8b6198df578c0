// seemoe/nn/linear.hpp — Linear (y = x W^T + b) and Dropout, the leaf layers of every MLP.
//
// Layouts and initialisation follow PyTorch so state dicts move both ways: weight (out, in),
// bias (out), both ~ U(-1/sqrt(in), 1/sqrt(in)) (torch's kaiming_uniform(a=sqrt(5)) default).
// Dropout is inverted dropout with probability p in training mode and the identity in eval; it has
// no parameters but is a Module so train()/eval() reach it.
#pragma once

#include <cmath>
#include <string>

#include "../ops/functional.hpp"
#include "../ops/matmul.hpp"
#include "module.hpp"

namespace seemoe::nn {

template <typename T>
class Linear : public Module<T> {
public:
    Linear() = default;
    Linear(Index in_features, Index out_features, Rng& rng, bool with_bias = true)
        : in_features(in_features), out_features(out_features) {
        const T bound = T(1) / std::sqrt(static_cast<T>(in_features));
        weight = detail::parameter(Tensor<T>::rand({out_features, in_features}, rng, -bound, bound));
        if (with_bias) bias = detail::parameter(Tensor<T>::rand({out_features}, rng, -bound, bound));
    }

    Tensor<T> forward(const Tensor<T>& x) const { return linear(x, weight, bias); }  // (..., out)

    Index in_features = 0, out_features = 0;
    Tensor<T> weight;  // (out, in)
    Tensor<T> bias;    // (out), or undefined

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->param(v, prefix, "weight", weight);
        this->param(v, prefix, "bias", bias);
    }
};

template <typename T>
class Dropout : public Module<T> {
public:
    Dropout() = default;
    explicit Dropout(T p) : p(p) {
        SEEMOE_CHECK(p >= 0 && p < 1, "[Dropout] probability must be in [0, 1), got ", p);
    }

    Tensor<T> forward(const Tensor<T>& x, Rng& rng) const { return dropout(x, p, this->is_training(), rng); }

    T p = T(0);

protected:
    void visit_members(ModuleVisitor<T>&, const std::string&) override {}
};

}  // namespace seemoe::nn
