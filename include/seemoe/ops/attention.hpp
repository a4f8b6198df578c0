// seemoe/ops/attention.hpp — fused scaled dot-product attention, forward and backward.
//
//   scaled_dot_product_attention(q, k, v, causal)  q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv)
//   self_attention(qkv, n_heads, causal)           qkv (B, T, 3C) straight from one Linear
//   cached_self_attention(qkv, n_heads, cache)     generation: new rows of qkv against a KVCache
//
// Per (batch, head): P = softmax(Q K^T / sqrt(D)) (T, S), out = P V. P is the only thing saved
// for backward (plus the inputs' value buffers); the score matrix is never a graph node. The
// (batch, head) pairs run in parallel, each as a few small GEMMs on strided operands, so
// self_attention reads the q/k/v head slices in place from the qkv rows and writes its result
// straight into (B, T, C): no permute copies in either direction. Float products run on the
// kernel path of this CPU (ops/gemm_kernel.hpp: AVX-512, AVX2/FMA, NEON; compiled for that ISA
// even in a build for plain x86-64), double ones and the portable path on Eigen's product.
//
// Convention: the causal mask is aligned to the END of the keys: query t sees keys
// s <= t + (S - T). With S == T that is the usual lower triangle; with a KV cache (T new queries
// after S - T cached keys) the new queries see every cached key. Causal therefore needs S >= T.
//
// Legend: B batch, H heads, T queries, S keys, D head dim, C = H * D channels.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "gemm_kernel.hpp"

namespace seemoe {

namespace detail {

// Where head (b, h) of one operand lives in its flat buffer: its row r starts at
// offset + b * batch_stride + h * head_stride + r * row_stride, and its D values are contiguous.
struct AttentionOperand {
    Index offset, batch_stride, head_stride, row_stride;
    Index head_start(Index b, Index h) const { return offset + b * batch_stride + h * head_stride; }
    // Head (b, h) of `data` as one operand of a product, read in place (transposed: as its
    // transpose).
    template <typename T>
    StridedOperand<T> head(const T* data, Index b, Index h, bool transposed = false) const {
        return {data + head_start(b, h), row_stride, transposed};
    }
};

struct AttentionGeometry {
    Index B, H, T, S, D, Dv;  // queries T, keys S, q/k head dim D, v/out head dim Dv
    bool causal;
    AttentionOperand q, k, v, out;

    // Number of keys query t may attend to (always >= 1: causal requires S >= T).
    Index visible_keys(Index t) const { return causal ? t + (S - T) + 1 : S; }
};

// out = softmax(q k^T / sqrt(D), causal) v for every (b, h). `probs` receives the (B, H, T, S)
// probabilities when backward needs them; when null each head uses a scratch matrix.
template <typename T>
void attention_forward(const AttentionGeometry& g, const T* q, const T* k, const T* v, T* out,
                       T* probs) {
    const T scale = T(1) / std::sqrt(static_cast<T>(g.D));
    // Read once, so every head takes the same path; double always runs on Eigen.
    const KernelPath path = std::is_same_v<T, float> ? active_kernel_path() : KernelPath::portable;
    parallel_for(g.B * g.H, [&](Index bh) {
        const Index b = bh / g.H, h = bh % g.H;
        MatrixRM<T> scratch;
        if (!probs) scratch.resize(g.T, g.S);
        T* p = probs ? probs + bh * g.T * g.S : scratch.data();
        // Scores Q K^T (T, S) from Q (T, D) and K stored (S, D); scaled inside the softmax.
        strided_gemm(path, g.T, g.S, g.D, g.q.head(q, b, h), g.k.head(k, b, h, true), p, g.S, false);
        MatrixMap<T> P(p, g.T, g.S);  // (T, S)
        for (Index t = 0; t < g.T; ++t) {
            const Index visible = g.visible_keys(t);
            auto row = P.row(t).head(visible).array();
            row = ((row - row.maxCoeff()) * scale).exp();  // scale > 0 keeps the max in place
            row /= row.sum();
            // Masked keys get probability exactly 0, which also zeroes their gradient below.
            P.row(t).tail(g.S - visible).setZero();
        }
        // out (T, Dv) = P (T, S) V (S, Dv), written into the output's head slice.
        strided_gemm(path, g.T, g.Dv, g.S, StridedOperand<T>{p, g.S, false}, g.v.head(v, b, h),
                     out + g.out.head_start(b, h), g.out.row_stride, false);
    });
}

// Accumulates dq, dk, dv (each may be null; they may alias one buffer, as in self_attention,
// because every (b, h) writes only its own head slice) from dout and the saved probabilities:
//   dV += P^T dY,  dP = dY V^T,  dS = P * (dP - rowsum(P * dP)),
//   dQ += dS K / sqrt(D),  dK += dS^T Q / sqrt(D).
// An operand flagged `assign` holds nothing yet and is written instead (every element of q, k
// and v belongs to exactly one head, so each is written once).
struct AttentionGradWrite {
    bool q = false, k = false, v = false;
};

template <typename T>
void attention_backward(const AttentionGeometry& g, const T* q, const T* k, const T* v,
                        const T* probs, const T* dout, T* dq, T* dk, T* dv,
                        AttentionGradWrite assign = {}) {
    const T scale = T(1) / std::sqrt(static_cast<T>(g.D));
    const KernelPath path = std::is_same_v<T, float> ? active_kernel_path() : KernelPath::portable;
    parallel_for(g.B * g.H, [&](Index bh) {
        const Index b = bh / g.H, h = bh % g.H;
        const T* p = probs + bh * g.T * g.S;                  // (T, S)
        const StridedOperand<T> dY = g.out.head(dout, b, h);  // (T, Dv)
        if (dv)  // dV (S, Dv) (+)= P^T dY
            strided_gemm(path, g.S, g.Dv, g.T, StridedOperand<T>{p, g.S, true}, dY, dv + g.v.head_start(b, h),
                         g.v.row_stride, !assign.v);
        if (!dq && !dk) return;
        MatrixRM<T> dS(g.T, g.S);  // (T, S): dL/dP = dY V^T for now
        strided_gemm(path, g.T, g.S, g.Dv, dY, g.v.head(v, b, h, true), dS.data(), g.S, false);
        const ConstMatrixMap<T> P(p, g.T, g.S);  // (T, S)
        for (Index t = 0; t < g.T; ++t) {
            // dL/dscores, with the 1/sqrt(D) of both products below folded in once here.
            const T p_dot_dp = P.row(t).dot(dS.row(t));
            dS.row(t).array() = P.row(t).array() * (dS.row(t).array() - p_dot_dp) * scale;
        }
        if (dq)  // dQ (T, D) (+)= dS K
            strided_gemm(path, g.T, g.D, g.S, StridedOperand<T>{dS.data(), g.S, false}, g.k.head(k, b, h),
                         dq + g.q.head_start(b, h), g.q.row_stride, !assign.q);
        if (dk)  // dK (S, D) (+)= dS^T Q
            strided_gemm(path, g.S, g.D, g.T, StridedOperand<T>{dS.data(), g.S, true}, g.q.head(q, b, h),
                         dk + g.k.head_start(b, h), g.k.row_stride, !assign.k);
    });
}

}  // namespace detail

// softmax(q k^T / sqrt(D)) v per (batch, head), like F.scaled_dot_product_attention with the
// causal mask aligned to the end (see the top of this file). q (B, H, T, D), k (B, H, S, D),
// v (B, H, S, Dv) -> (B, H, T, Dv).
template <typename T>
Tensor<T> scaled_dot_product_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                       bool causal) {
    const auto shapes = [&] {
        return detail::concat("q ", shape_str(q.shape()), ", k ", shape_str(k.shape()), ", v ",
                              shape_str(v.shape()));
    };
    SEEMOE_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
                 "[scaled_dot_product_attention] q, k, v must be (B, H, T, D), (B, H, S, D), "
                 "(B, H, S, Dv); got ", shapes());
    const Index B = q.size(0), H = q.size(1), Tq = q.size(2), D = q.size(3);
    const Index S = k.size(2), Dv = v.size(3);
    SEEMOE_CHECK(k.size(0) == B && v.size(0) == B && k.size(1) == H && v.size(1) == H,
                 "[scaled_dot_product_attention] batch and head sizes differ: ", shapes());
    SEEMOE_CHECK(v.size(2) == S, "[scaled_dot_product_attention] k and v have different numbers "
                 "of keys: ", shapes());
    SEEMOE_CHECK(k.size(3) == D, "[scaled_dot_product_attention] q and k head dims differ: ",
                 shapes());
    SEEMOE_CHECK(D >= 1, "[scaled_dot_product_attention] head dim must be >= 1: ", shapes());
    SEEMOE_CHECK(!causal || S >= Tq, "[scaled_dot_product_attention] causal attention needs at "
                 "least as many keys as queries (the mask is aligned to the end): ", shapes());

    detail::AttentionGeometry g{B, H, Tq, S, D, Dv, causal,
                                /*q*/ {0, H * Tq * D, Tq * D, D},
                                /*k*/ {0, H * S * D, S * D, D},
                                /*v*/ {0, H * S * Dv, S * Dv, Dv},
                                /*out*/ {0, H * Tq * Dv, Tq * Dv, Dv}};
    Tensor<T> out = detail::make_op_result<T>({B, H, Tq, Dv}, "scaled_dot_product_attention",
                                              {&q, &k, &v});  // (B, H, T, Dv)
    std::shared_ptr<Storage<T>> probs;
    if (out.requires_grad()) probs = std::make_shared<Storage<T>>(B * H * Tq * S);  // (B, H, T, S)
    detail::attention_forward(g, q.data(), k.data(), v.data(), out.data(),
                              probs ? probs->data() : nullptr);
    detail::set_backward(out, [g, probs, q_node = detail::grad_target(q),
                               k_node = detail::grad_target(k), v_node = detail::grad_target(v),
                               q_values = q.storage(), k_values = k.storage(),
                               v_values = v.storage()](Node<T>& self) {
        // Fetch (and allocate) every grad buffer before the parallel region.
        T* dq = q_node ? q_node->grad_data() : nullptr;
        T* dk = k_node ? k_node->grad_data() : nullptr;
        T* dv = v_node ? v_node->grad_data() : nullptr;
        detail::attention_backward(g, q_values->data(), k_values->data(), v_values->data(),
                                   probs->data(), self.grad->data(), dq, dk, dv);
    });
    return out;
}

// Multi-head self-attention on the packed output of one Linear: qkv (B, T, 3C) holds q | k | v
// along the last axis, each (B, T, C) with head h in channels [h*D, (h+1)*D) (torch's
// qkv.view(B, T, 3, H, D)). Returns (B, T, C) with the heads side by side again, ready for the
// output projection. D = C / n_heads; scale 1/sqrt(D).
template <typename T>
Tensor<T> self_attention(const Tensor<T>& qkv, Index n_heads, bool causal) {
    SEEMOE_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0 && qkv.size(2) > 0,
                 "[self_attention] qkv must be (B, T, 3C) with C >= 1, got ",
                 shape_str(qkv.shape()));
    const Index B = qkv.size(0), Tq = qkv.size(1), C = qkv.size(2) / 3;
    SEEMOE_CHECK(n_heads >= 1 && C % n_heads == 0, "[self_attention] ", n_heads,
                 " heads do not divide C = ", C, " of qkv ", shape_str(qkv.shape()));
    const Index H = n_heads, D = C / n_heads;

    // Row t of head h: q at channel h*D of the qkv row, k at C + h*D, v at 2C + h*D.
    detail::AttentionGeometry g{B, H, Tq, Tq, D, D, causal,
                                /*q*/ {0, Tq * 3 * C, D, 3 * C},
                                /*k*/ {C, Tq * 3 * C, D, 3 * C},
                                /*v*/ {2 * C, Tq * 3 * C, D, 3 * C},
                                /*out*/ {0, Tq * C, D, C}};
    Tensor<T> out = detail::make_op_result<T>({B, Tq, C}, "self_attention", {&qkv});  // (B, T, C)
    std::shared_ptr<Storage<T>> probs;
    if (out.requires_grad()) probs = std::make_shared<Storage<T>>(B * H * Tq * Tq);  // (B, H, T, T)
    const T* x = qkv.data();
    detail::attention_forward(g, x, x, x, out.data(), probs ? probs->data() : nullptr);
    detail::set_backward(out, [g, probs, qkv_node = detail::grad_target(qkv),
                               qkv_values = qkv.storage()](Node<T>& self) {
        if (!qkv_node) return;
        // q, k, v gradients land in their slices of one buffer, each element written once.
        bool assign = false;
        T* dqkv = qkv_node->grad_data_for_write(assign);
        const T* x = qkv_values->data();
        detail::attention_backward(g, x, x, x, probs->data(), self.grad->data(), dqkv, dqkv, dqkv,
                                   {assign, assign, assign});
    });
    return out;
}

// Keys and values of one attention layer for generation, (B, H, S_max, D) each, filled up to
// `length`. reset() before the first call of a sequence.
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

// Inference only (no graph): appends the keys and values of qkv (B, Tn, 3C) (packed as for
// self_attention) to `cache` and returns the attention of its Tn queries over every cached key,
// causally (query t sees keys 0 .. length_before + t), as (B, Tn, C). One new token attends over
// a few dozen keys, so each head is two small Eigen products instead of a GEMM.
template <typename T>
Tensor<T> cached_self_attention(const Tensor<T>& q_k_v, Index n_heads, KVCache<T>& cache) {
    SEEMOE_CHECK(q_k_v.dim() == 3 && n_heads > 0 && q_k_v.size(2) % (3 * n_heads) == 0,
                 "[cached_self_attention] expected qkv (B, T, 3C) with C divisible by n_heads = ",
                 n_heads, ", got ", shape_str(q_k_v.shape()));
    const Index B = q_k_v.size(0), Tn = q_k_v.size(1), C = q_k_v.size(2) / 3, H = n_heads, D = C / H;
    SEEMOE_CHECK(cache.capacity > 0, "[cached_self_attention] KV cache was not reset");
    SEEMOE_CHECK(cache.batch == B && cache.heads == H && cache.head_dim == D,
                 "[cached_self_attention] KV cache shape does not match qkv ", shape_str(q_k_v.shape()));
    SEEMOE_CHECK(cache.length + Tn <= cache.capacity, "[cached_self_attention] KV cache full: ",
                 cache.length, " + ", Tn, " > ", cache.capacity);
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
    return heads;                                                     // (B, Tn, C)
}

}  // namespace seemoe
