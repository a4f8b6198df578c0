// seemoe/nn/attention.hpp — MultiHeadAttention (fused QKV, batched heads) and its KV cache.
//
// One Linear makes q|k|v for all heads at once: qkv = x Wqkv^T, (B, T, 3C), with head h of q in
// columns [h*D, (h+1)*D) (D = C/H), exactly torch's .view(B, T, 3, H, D). The fused op
// self_attention computes softmax(q k^T / sqrt(D)) v for every (batch, head) pair and writes
// (B, T, C) directly; then proj mixes the heads. Scale 1/sqrt(head_dim), not 1/sqrt(C) (a fixed
// defect of the original).
//
// Generation uses forward_cached: keys and values of earlier positions stay in a KVCache, so each
// new token costs one row of attention instead of the whole prefix again. Cached and uncached paths
// give the same numbers (tested).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "../ops/attention.hpp"
#include "../ops/shape_ops.hpp"
#include "linear.hpp"

namespace seemoe::nn {

// Keys and values of one attention layer, (B, H, S_max, D) each, filled up to `length`.
template <typename T>
struct KVCache {
    Index batch = 0, heads = 0, head_dim = 0, capacity = 0, length = 0;
    std::vector<T> keys, values;

    void reset(Index b, Index h, Index d, Index max_len) {
        batch = b, heads = h, head_dim = d, capacity = max_len, length = 0;
        keys.assign(static_cast<std::size_t>(b * h * max_len * d), T(0));
        values.assign(keys.size(), T(0));
    }
    T* key(Index b, Index h, Index s) { return keys.data() + ((b * heads + h) * capacity + s) * head_dim; }
    T* value(Index b, Index h, Index s) {
        return values.data() + ((b * heads + h) * capacity + s) * head_dim;
    }
};

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
    // over everything cached so far, causally.
    Tensor<T> forward_cached(const Tensor<T>& x, KVCache<T>& cache) const {
        NoGradGuard no_grad;
        const Index B = x.size(0), Tn = x.size(1), C = x.size(2), H = n_heads, D = C / H;
        if (cache.capacity == 0) SEEMOE_CHECK(false, "[MultiHeadAttention] KV cache was not reset");
        SEEMOE_CHECK(cache.batch == B && cache.heads == H && cache.head_dim == D,
                     "[MultiHeadAttention] KV cache shape does not match input ", shape_str(x.shape()));
        SEEMOE_CHECK(cache.length + Tn <= cache.capacity, "[MultiHeadAttention] KV cache full: ",
                     cache.length, " + ", Tn, " > ", cache.capacity);
        Tensor<T> q_k_v = qkv.forward(x);                                 // (B, Tn, 3C)
        const Index start = cache.length, total = start + Tn;
        for (Index b = 0; b < B; ++b)
            for (Index t = 0; t < Tn; ++t) {
                const T* row = q_k_v.data() + (b * Tn + t) * 3 * C;
                for (Index h = 0; h < H; ++h) {
                    std::copy_n(row + C + h * D, D, cache.key(b, h, start + t));
                    std::copy_n(row + 2 * C + h * D, D, cache.value(b, h, start + t));
                }
            }
        cache.length = total;

        Tensor<T> heads = Tensor<T>::empty({B, Tn, C});                    // (B, Tn, C)
        const T scale = T(1) / std::sqrt(static_cast<T>(D));
        std::vector<T> all_scores(static_cast<std::size_t>(B * H * total));  // (B*H, total)
        auto one_head = [&](Index bh) {
            const Index b = bh / H, h = bh % H;
            T* scores = all_scores.data() + bh * total;
            for (Index t = 0; t < Tn; ++t) {
                const T* q = q_k_v.data() + (b * Tn + t) * 3 * C + h * D;
                const Index visible = start + t + 1;                     // causal: keys 0..start+t
                // The keys (and values) of one head are rows D apart: scores = K q, out = V^T p.
                const ConstMatrixMap<T> keys(cache.key(b, h, 0), visible, D);      // (visible, D)
                const ConstMatrixMap<T> values(cache.value(b, h, 0), visible, D);  // (visible, D)
                VectorMap<T> score(scores, visible);
                score.noalias() = keys * ConstVectorMap<T>(q, D);
                score *= scale;
                score = (score.array() - score.maxCoeff()).exp().matrix();
                score /= score.sum();
                VectorMap<T>(heads.data() + (b * Tn + t) * C + h * D, D).noalias() = values.transpose() * score;
            }
        };
        // One new token attends over a few dozen keys: far less work than waking a thread.
        if (B * Tn * total * C >= (Index(1) << 16)) {
            parallel_for(B * H, one_head);
        } else {
            for (Index bh = 0; bh < B * H; ++bh) one_head(bh);
        }
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
