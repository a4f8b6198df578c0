// seemoe/nn/projector.hpp — MultiModalProjector: maps vision features into the decoder's space.
//
// The bridge between the two towers, as in LLaVA: fc1 (D -> 4D), GELU, fc2 (4D -> C), dropout.
// Each visual feature of width D becomes one "visual token" of width C that the decoder reads like
// a word embedding.
#pragma once

#include "mlp.hpp"

namespace seemoe::nn {

template <typename T>
class MultiModalProjector : public MLP<T> {
public:
    MultiModalProjector() = default;
    MultiModalProjector(Index vision_dim, Index text_dim, T dropout_p, Rng& rng)
        : MLP<T>(vision_dim, 4 * vision_dim, text_dim, Activation::GELU, dropout_p, rng) {}
};

}  // namespace seemoe::nn
