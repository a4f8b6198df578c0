// seemoe/nn/layer_norm.hpp — LayerNorm over the last axis, as torch.nn.LayerNorm(C).
//
// y = (x - mean) / sqrt(var + eps) * weight + bias with the biased variance; weight starts at 1,
// bias at 0, eps = 1e-5. The fused op (ops/functional.hpp) keeps mean and 1/std for backward.
#pragma once

#include <string>

#include "../ops/functional.hpp"
#include "module.hpp"

namespace seemoe::nn {

template <typename T>
class LayerNorm : public Module<T> {
public:
    LayerNorm() = default;
    explicit LayerNorm(Index features, T eps = T(1e-5)) : eps(eps) {
        weight = detail::parameter(Tensor<T>::ones({features}));
        bias = detail::parameter(Tensor<T>::zeros({features}));
    }

    Tensor<T> forward(const Tensor<T>& x) const { return layer_norm(x, weight, bias, eps); }  // x's shape

    T eps = T(1e-5);
    Tensor<T> weight;  // (C)
    Tensor<T> bias;    // (C)

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->param(v, prefix, "weight", weight);
        this->param(v, prefix, "bias", bias);
    }
};

}  // namespace seemoe::nn
