// seemoe/nn/attention.hpp — MultiHeadAttention (fused QKV, batched heads), with a cached path.
//
// One Linear makes q|k|v for all heads at once: qkv = x Wqkv^T, (B, T, 3C), with head h of q in
// columns [h*D, (h+1)*D) (D = C/H), exactly torch's .view(B, T, 3, H, D). The fused op
// self_attention computes softmax(q k^T / sqrt(D)) v for every (batch, head) pair and writes
// (B, T, C) directly; then proj mixes the heads. Scale 1/sqrt(head_dim), not 1/sqrt(C) (a fixed
// defect of the original).
//
// Generation uses forward_cached: keys and values of earlier positions stay in a KVCache (the
// kernel and its cache live in ops/attention.hpp), so each new token costs one row of attention
// instead of the whole prefix again. Cached and uncached paths give the same numbers (tested).
#pragma once

#include <string>
#include <vector>

#include "../ops/attention.hpp"
#include "../ops/shape_ops.hpp"
#include "linear.hpp"

namespace seemoe::nn {

template <typename T>
class MultiHeadAttention : public Module<T> {
public:
    MultiHeadAttention() = default;
    MultiHeadAttention(Index dim, Index n_heads, bool causal, T dropout_p, Rng& rng)
        : qkv(dim, 3 * dim, rng, /*with_bias=*/false), proj(dim, dim, rng), drop(dropout_p),
          n_heads(n_heads), causal(causal) {
        SEEMOE_CHECK(n_heads > 0 && dim % n_heads == 0, "[MultiHeadAttention] dim ", dim,
                     " is not divisible by n_heads ", n_heads);
    }

    Tensor<T> forward(const Tensor<T>& x, Rng& rng) const {             // x (B, T, C)
        SEEMOE_CHECK(x.dim() == 3 && x.size(2) == qkv.in_features, "[MultiHeadAttention] expected (B, T, ",
                     qkv.in_features, "), got ", shape_str(x.shape()));
        Tensor<T> q_k_v = qkv.forward(x);                                 // (B, T, 3C)
        Tensor<T> heads = self_attention(q_k_v, n_heads, causal);         // (B, T, C)
        return drop.forward(proj.forward(heads), rng);                    // (B, T, C)
    }

    // Inference only (no graph): appends the new positions of x (B, Tn, C) to `cache` and attends
    // over everything cached so far, causally (cached_self_attention in ops/attention.hpp).
    Tensor<T> forward_cached(const Tensor<T>& x, KVCache<T>& cache) const {
        NoGradGuard no_grad;
        SEEMOE_CHECK(x.dim() == 3 && x.size(2) == qkv.in_features, "[MultiHeadAttention] expected (B, T, ",
                     qkv.in_features, "), got ", shape_str(x.shape()));
        Tensor<T> q_k_v = qkv.forward(x);                                 // (B, Tn, 3C)
        Tensor<T> heads = cached_self_attention(q_k_v, n_heads, cache);   // (B, Tn, C)
        return proj.forward(heads);                                       // (B, Tn, C)
    }

    Linear<T> qkv, proj;
    Dropout<T> drop;
    Index n_heads = 1;
    bool causal = true;

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->child(v, prefix, "qkv", qkv);
        this->child(v, prefix, "proj", proj);
        this->child(v, prefix, "drop", drop);
    }
};

}  // namespace seemoe::nn
