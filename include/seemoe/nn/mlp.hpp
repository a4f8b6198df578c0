// seemoe/nn/mlp.hpp — MLP: fc1 -> activation -> fc2 -> dropout.
//
// The feed-forward network of a transformer block (ViT blocks, the projector and every MoE expert
// are one). Names fc1/fc2 are the state-dict names. The activation is chosen per use: ReLU for the
// MoE experts (as Mixtral-style seeMoE), GELU (erf form, like nn.GELU()) in the ViT and projector.
#pragma once

#include <string>

#include "../ops/elementwise.hpp"
#include "linear.hpp"

namespace seemoe::nn {

enum class Activation { ReLU, GELU };

template <typename T>
Tensor<T> activate(const Tensor<T>& x, Activation act) {
    return act == Activation::ReLU ? relu(x) : gelu(x);
}

template <typename T>
class MLP : public Module<T> {
public:
    MLP() = default;
    MLP(Index in, Index hidden, Index out, Activation act, T dropout_p, Rng& rng)
        : fc1(in, hidden, rng), fc2(hidden, out, rng), drop(dropout_p), act(act) {}

    Tensor<T> forward(const Tensor<T>& x, Rng& rng) const {        // x (..., in)
        Tensor<T> h = activate(fc1.forward(x), act);                // (..., hidden)
        return drop.forward(fc2.forward(h), rng);                   // (..., out)
    }

    Linear<T> fc1, fc2;
    Dropout<T> drop;
    Activation act = Activation::GELU;

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->child(v, prefix, "fc1", fc1);
        this->child(v, prefix, "fc2", fc2);
        this->child(v, prefix, "drop", drop);
    }
};

}  // namespace seemoe::nn
