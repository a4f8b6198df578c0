// seemoe/nn/embedding.hpp — Embedding: a (V, C) table of learned rows looked up by id.
//
// Like torch.nn.Embedding, ids of any shape give ids_shape + (C). Rows start ~ N(0, init_std^2);
// torch uses std 1, the seeMoE decoder passes 0.02 (GPT-2 style) so the initial loss sits at
// ln(vocab). Backward scatter-adds into the rows that were used.
#pragma once

#include <string>
#include <vector>

#include "../ops/indexing.hpp"
#include "module.hpp"

namespace seemoe::nn {

template <typename T>
class Embedding : public Module<T> {
public:
    Embedding() = default;
    Embedding(Index num_embeddings, Index dim, Rng& rng, T init_std = T(1)) {
        weight = detail::parameter(Tensor<T>::randn({num_embeddings, dim}, rng, T(0), init_std));
    }

    // ids of shape ids_shape -> ids_shape + (C)
    Tensor<T> forward(const std::vector<Index>& ids, const Shape& ids_shape) const {
        return embedding(weight, ids, ids_shape);
    }

    Tensor<T> weight;  // (V, C)

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->param(v, prefix, "weight", weight);
    }
};

}  // namespace seemoe::nn
