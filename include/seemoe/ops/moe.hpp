// seemoe/ops/moe.hpp — the sparse mixture-of-experts feed-forward as one fused op.
//
//   moe_experts(x, gates, experts, fc1_weight, fc1_bias, fc2_weight, fc2_bias, p, training, rng)
//
// Every token n sends its row x[n] to its K experts e = experts[n*K + k]; expert e is the seeMoE
// expert MLP (Linear fc1, ReLU, Linear fc2, dropout p) and the token's output is the gate-weighted
// sum of what its experts return:
//   out[n] = sum_k gates[n, k] * dropout(fc2_e(relu(fc1_e(x[n]))))      e = experts[n*K + k]
// The composed form (per expert: index_select, two linears, relu, dropout, a gate product and an
// index_add of a full (N, C) copy) is ~10 graph nodes per expert and its memory; here the experts
// run side by side on the threads, each as two GEMMs over the rows it received, and the combine
// (and in backward the scatter of dx) is one pass over the tokens. The dropout masks are drawn
// expert by expert in the same order as the composed form draws them, so the two consume the Rng
// identically (tests check the two agree). Backward keeps each expert's ReLU output and its
// dropped-out result; an expert that received no token gets no gradient at all, as in the
// composed graph. Generation (a few tokens, no graph to build, no dropout) takes a path of its own,
// moe_experts_inference below: it splits each expert's hidden units over the threads instead.
//
// Legend: N tokens, C channels, Hd expert hidden width, E experts, K experts per token.
#pragma once

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "functional.hpp"
#include "matmul.hpp"

namespace seemoe {

namespace detail {

// Who went where: the (token, slot) pairs grouped by expert, in token order within an expert.
struct ExpertRouting {
    Index N = 0, K = 0, E = 0;
    std::vector<Index> offset;    // (E + 1) first row of each expert in the expert-sorted order
    std::vector<Index> token;     // (N*K) token of each expert-sorted row
    std::vector<Index> slot;      // (N*K) gate slot n*K + k of each expert-sorted row
    std::vector<Index> row_of;    // (N*K) expert-sorted row of each slot
    std::vector<Index> by_expert; // (N*K) each token's K slots ordered by expert id

    ExpertRouting(const std::vector<Index>& experts, Index n_tokens, Index k, Index n_experts)
        : N(n_tokens), K(k), E(n_experts), offset(static_cast<std::size_t>(n_experts + 1), 0),
          token(static_cast<std::size_t>(n_tokens * k)), slot(token.size()), row_of(token.size()),
          by_expert(token.size()) {
        for (Index s = 0; s < N * K; ++s) ++offset[experts[s] + 1];
        for (Index e = 0; e < E; ++e) offset[e + 1] += offset[e];
        std::vector<Index> next(offset.begin(), offset.end() - 1);
        for (Index n = 0; n < N; ++n)
            for (Index j = 0; j < K; ++j) {
                const Index s = n * K + j, r = next[experts[s]]++;
                token[r] = n;
                slot[r] = s;
                row_of[s] = r;
            }
        for (Index n = 0; n < N; ++n) {
            Index* order = by_expert.data() + n * K;
            for (Index j = 0; j < K; ++j) order[j] = n * K + j;
            std::sort(order, order + K, [&](Index a, Index b) { return experts[a] < experts[b]; });
        }
    }
    Index rows(Index e) const { return offset[e + 1] - offset[e]; }
};

// Runs body(e) for every expert that has rows, side by side on the threads (one expert per thread
// at a time, each with single-threaded GEMMs) unless the whole job is too small to be worth
// waking them. In generation a token meets two experts of 65k multiply-adds per product: one
// expert per thread then halves the time the weights take to stream in, where splitting each
// small product over the threads would cost more in hand-offs than it saves.
template <typename Body>
void run_experts(const ExpertRouting& routing, Index work, Body&& body) {
    std::vector<Index> active;
    for (Index e = 0; e < routing.E; ++e)
        if (routing.rows(e) > 0) active.push_back(e);
    if (active.size() >= 2 && work >= (Index(1) << 16)) {
        parallel_for_dynamic(static_cast<Index>(active.size()), [&](Index i) { body(active[i]); });
    } else {
        for (Index e : active) body(e);
    }
}

// c (rows) (+)= W a for `rows` rows of a weight whose rows are `ldw` apart, each K long: one token
// times a slice of a weight (generation); sgemm_rows for float, an Eigen product otherwise.
template <typename T>
void weight_slice_times(T* c, const T* a, const T* w, Index rows, Index K, Index ldw, bool accumulate) {
    if constexpr (std::is_same_v<T, float> && kSgemmKernelAvailable) {
        sgemm_rows(1, rows, K, a, K, w, ldw, c, rows, accumulate);
    } else {
        const Eigen::Map<const MatrixRM<T>, 0, Eigen::OuterStride<>> weight(w, rows, K, Eigen::OuterStride<>(ldw));
        VectorMap<T> out(c, rows);
        if (accumulate) {
            out.noalias() += weight * ConstVectorMap<T>(a, K);
        } else {
            out.noalias() = weight * ConstVectorMap<T>(a, K);
        }
    }
}

// Up to this many tokens, a call that builds no graph and drops nothing takes the inference path.
inline constexpr Index kMoEInferenceMaxTokens = 8;

// The inference path (generation: one token a step): no graph, no dropout, no routing tables.
// Every expert's hidden units are cut in two halves, each computed as its part of relu(fc1) and
// that part's share of fc2 (a product over its hidden units only); a token's output adds the two
// shares, gate-weighted, experts in id order. The two halves are one parallel_for of two items:
// the calling thread takes half 0 and a worker half 1 (unless it is late), so both stream weights
// whatever the experts a token meets, and each keeps reading the same half of every expert, which
// stays in its own caches from one token to the next (measured: 34 MB of experts, two per step,
// 20.5 -> 16.7 us per step against one whole expert per thread). The shares are added the same
// way on one thread, so the result does not depend on the thread count (and more than two
// threads do not split it further).
template <typename T>
void moe_experts_inference(T* out, const T* x, const T* gates, const std::vector<Index>& experts, Index N, Index C,
                           Index K, Index Hd, const std::vector<Tensor<T>>& fc1_weight,
                           const std::vector<Tensor<T>>& fc1_bias, const std::vector<Tensor<T>>& fc2_weight,
                           const std::vector<Tensor<T>>& fc2_bias) {
    const Index slots = N * K, split = Hd / 2;
    thread_local std::vector<T> scratch;  // hidden (slots, Hd), then the shares (2, slots, C)
    scratch.resize(static_cast<std::size_t>(slots * (Hd + 2 * C)));
    T* hidden = scratch.data();
    T* shares = hidden + slots * Hd;
    // The weights of every slot as plain pointers, taken here: the other thread then reads no
    // Tensor, whose reference counts this thread changes (each such shared line costs a transfer
    // between the cores).
    struct SlotWeights {
        const T *w1, *b1, *w2, *b2;
    };
    thread_local std::vector<SlotWeights> weights;
    weights.resize(static_cast<std::size_t>(slots));
    auto data_or_null = [](const Tensor<T>& t) { return t.defined() ? t.data() : nullptr; };
    for (Index s = 0; s < slots; ++s) {
        const Index e = experts[s];
        weights[s] = {fc1_weight[e].data(), data_or_null(fc1_bias[e]), fc2_weight[e].data(), data_or_null(fc2_bias[e])};
    }
    const SlotWeights* slot_weights = weights.data();
    auto half = [&](Index t) {
        const Index h0 = t == 0 ? 0 : split, width = t == 0 ? split : Hd - split;
        for (Index s = 0; s < slots; ++s) {
            const SlotWeights& w = slot_weights[s];
            T* h = hidden + s * Hd + h0;  // (width)
            if (w.b1) std::copy_n(w.b1 + h0, width, h);
            weight_slice_times(h, x + (s / K) * C, w.w1 + h0 * C, width, C, C, w.b1 != nullptr);
            for (Index i = 0; i < width; ++i) h[i] = std::max(h[i], T(0));
            T* y = shares + (t * slots + s) * C;  // (C): fc2 over this half's hidden units
            const bool b2 = t == 0 && w.b2;
            if (b2) std::copy_n(w.b2, C, y);
            weight_slice_times(y, h, w.w2 + h0, C, width, Hd, b2);
        }
    };
    if (slots * C * Hd >= (Index(1) << 16)) {
        parallel_for(2, half);
    } else {
        half(0);
        half(1);
    }
    thread_local std::vector<Index> order;  // a token's slots by expert id
    order.resize(static_cast<std::size_t>(K));
    for (Index n = 0; n < N; ++n) {
        for (Index j = 0; j < K; ++j) order[j] = n * K + j;
        std::sort(order.begin(), order.end(), [&](Index a, Index b) { return experts[a] < experts[b]; });
        VectorMap<T> o(out + n * C, C);
        o.setZero();
        for (Index j = 0; j < K; ++j) {
            const Index s = order[j];
            o += gates[s] * (ConstVectorMap<T>(shares + s * C, C) + ConstVectorMap<T>(shares + (slots + s) * C, C));
        }
    }
}

}  // namespace detail

// The fused sparse MoE feed-forward (see the top of this file). x (N, C); gates (N, K); experts
// holds N*K expert ids in [0, E), row-major like gates, distinct within a token; the weights are
// E tensors each: fc1_weight (Hd, C), fc1_bias (Hd) or undefined, fc2_weight (C, Hd), fc2_bias
// (C) or undefined -> (N, C). Differentiable in x, gates and every weight and bias.
template <typename T>
Tensor<T> moe_experts(const Tensor<T>& x, const Tensor<T>& gates, const std::vector<Index>& experts,
                      const std::vector<Tensor<T>>& fc1_weight, const std::vector<Tensor<T>>& fc1_bias,
                      const std::vector<Tensor<T>>& fc2_weight, const std::vector<Tensor<T>>& fc2_bias,
                      typename Tensor<T>::Scalar dropout_p, bool training, Rng& rng) {
    SEEMOE_CHECK(x.dim() == 2 && gates.dim() == 2 && gates.size(0) == x.size(0),
                 "[moe_experts] x must be (N, C) and gates (N, K), got x ", shape_str(x.shape()), " gates ",
                 shape_str(gates.shape()));
    const Index N = x.size(0), C = x.size(1), K = gates.size(1), E = static_cast<Index>(fc1_weight.size());
    SEEMOE_CHECK(E >= 1 && fc1_bias.size() == fc1_weight.size() && fc2_weight.size() == fc1_weight.size() &&
                     fc2_bias.size() == fc1_weight.size(),
                 "[moe_experts] need the same number (>= 1) of fc1_weight, fc1_bias, fc2_weight, fc2_bias, got ",
                 fc1_weight.size(), ", ", fc1_bias.size(), ", ", fc2_weight.size(), ", ", fc2_bias.size());
    SEEMOE_CHECK(static_cast<Index>(experts.size()) == N * K, "[moe_experts] ", experts.size(),
                 " expert ids for gates ", shape_str(gates.shape()));
    const Index Hd = fc1_weight[0].dim() == 2 ? fc1_weight[0].size(0) : -1;
    for (Index e = 0; e < E; ++e) {
        const auto& w1 = fc1_weight[e];
        const auto& w2 = fc2_weight[e];
        SEEMOE_CHECK(w1.dim() == 2 && w1.size(0) == Hd && w1.size(1) == C && w2.dim() == 2 && w2.size(0) == C &&
                         w2.size(1) == Hd,
                     "[moe_experts] expert ", e, " has fc1_weight ", shape_str(w1.shape()), " and fc2_weight ",
                     shape_str(w2.shape()), "; need (Hd, C) and (C, Hd) with C = ", C, " from x ",
                     shape_str(x.shape()), " and one Hd for all experts");
        SEEMOE_CHECK(!fc1_bias[e].defined() || (fc1_bias[e].dim() == 1 && fc1_bias[e].size(0) == Hd),
                     "[moe_experts] expert ", e, " fc1_bias ", shape_str(fc1_bias[e].shape()), " should be (", Hd,
                     ",)");
        SEEMOE_CHECK(!fc2_bias[e].defined() || (fc2_bias[e].dim() == 1 && fc2_bias[e].size(0) == C),
                     "[moe_experts] expert ", e, " fc2_bias ", shape_str(fc2_bias[e].shape()), " should be (", C,
                     ",)");
    }
    for (Index s = 0; s < N * K; ++s) {
        SEEMOE_CHECK(experts[s] >= 0 && experts[s] < E, "[moe_experts] expert id ", experts[s], " at slot ", s,
                     " is out of range for ", E, " experts");
        for (Index j = s - s % K; j < s; ++j)
            SEEMOE_CHECK(experts[j] != experts[s], "[moe_experts] token ", s / K, " is routed to expert ",
                         experts[s], " twice");
    }
    SEEMOE_CHECK(dropout_p >= 0 && dropout_p < 1, "[moe_experts] dropout probability must be in [0, 1), got ",
                 dropout_p);

    // Generation (a few tokens, no graph to build, nothing dropped): the inference path.
    auto builds_graph = [&] {
        if (!GradMode::is_enabled()) return false;
        if (x.requires_grad() || gates.requires_grad()) return true;
        for (Index e = 0; e < E; ++e)
            for (const Tensor<T>* t : {&fc1_weight[e], &fc1_bias[e], &fc2_weight[e], &fc2_bias[e]})
                if (t->defined() && t->requires_grad()) return true;
        return false;
    };
    if (N <= detail::kMoEInferenceMaxTokens && !(training && dropout_p > 0) && !builds_graph()) {
        Tensor<T> out = detail::make_op_result<T>({N, C}, "moe_experts", {&x, &gates});  // (N, C), no graph
        detail::moe_experts_inference(out.data(), x.data(), gates.data(), experts, N, C, K, Hd, fc1_weight, fc1_bias,
                                      fc2_weight, fc2_bias);
        return out;
    }

    std::vector<Tensor<T>> inputs{x, gates};
    inputs.reserve(static_cast<std::size_t>(2 + 4 * E));
    for (Index e = 0; GradMode::is_enabled() && e < E; ++e) {  // the graph's parents, if any
        inputs.push_back(fc1_weight[e]);
        if (fc1_bias[e].defined()) inputs.push_back(fc1_bias[e]);
        inputs.push_back(fc2_weight[e]);
        if (fc2_bias[e].defined()) inputs.push_back(fc2_bias[e]);
    }
    Tensor<T> out = detail::make_op_result<T>({N, C}, "moe_experts", inputs);  // (N, C)

    auto routing = std::make_shared<const detail::ExpertRouting>(experts, N, K, E);
    const detail::ExpertRouting& R = *routing;
    const Index rows_total = N * K;
    // Dropout masks, expert by expert (rows in token order): the composed form's draw order.
    const bool drop = training && dropout_p > 0;
    const T keep_scale = drop ? T(1) / (T(1) - dropout_p) : T(1);
    auto keep = std::make_shared<std::vector<unsigned char>>(drop ? static_cast<std::size_t>(rows_total * C) : 0);
    if (drop) detail::draw_dropout_keep(keep->data(), rows_total * C, static_cast<double>(dropout_p), rng);

    // hidden (N*K, Hd) = relu(x[token] W1^T + b1) and result (N*K, C) = dropout(hidden W2^T + b2),
    // both in expert-sorted row order; each expert runs on one thread.
    auto hidden = std::make_shared<Storage<T>>(rows_total * Hd);  // (N*K, Hd)
    auto result = std::make_shared<Storage<T>>(rows_total * C);   // (N*K, C)
    {
        const T* xd = x.data();
        T* hd = hidden->data();
        T* yd = result->data();
        detail::run_experts(R, rows_total * C * Hd, [&](Index e) {
            const Index first = R.offset[e], n_e = R.rows(e);
            if (n_e == 0) return;
            std::vector<T> picked(static_cast<std::size_t>(n_e * C));  // (n_e, C)
            for (Index j = 0; j < n_e; ++j) std::copy_n(xd + R.token[first + j] * C, C, picked.data() + j * C);
            auto bias = [](const Tensor<T>& b) { return b.defined() ? b.data() : nullptr; };
            T* h = hd + first * Hd;
            detail::affine_rows(h, picked.data(), n_e, C, fc1_weight[e].data(), Hd, bias(fc1_bias[e]));  // (n_e, Hd)
            MatrixMap<T> h_map(h, n_e, Hd);
            h_map = h_map.cwiseMax(T(0));
            T* y = yd + first * C;
            detail::affine_rows(y, h, n_e, Hd, fc2_weight[e].data(), C, bias(fc2_bias[e]));  // (n_e, C)
            if (drop) {
                const unsigned char* k = keep->data() + first * C;
                for (Index i = 0; i < n_e * C; ++i) y[i] = k[i] ? y[i] * keep_scale : T(0);
            }
        });
    }
    // out[n] = sum over the token's slots, in expert order, of gate * result row.
    {
        const T* g = gates.data();
        const T* yd = result->data();
        T* od = out.data();
        parallel_for((N + 63) / 64, [&](Index block) {
            for (Index n = block * 64; n < std::min(N, block * 64 + 64); ++n) {
                auto o = VectorMap<T>(od + n * C, C);
                for (Index j = 0; j < K; ++j) {
                    const Index s = R.by_expert[n * K + j];
                    const auto y = ConstVectorMap<T>(yd + R.row_of[s] * C, C);
                    if (j == 0) {
                        o = g[s] * y;
                    } else {
                        o += g[s] * y;
                    }
                }
                if (K == 0) o.setZero();
            }
        });
    }

    if (!out.requires_grad()) return out;
    auto nodes_of = [](const std::vector<Tensor<T>>& ts) {
        std::vector<std::shared_ptr<Node<T>>> nodes;
        for (const auto& t : ts) nodes.push_back(t.defined() ? detail::grad_target(t) : nullptr);
        return nodes;
    };
    auto values_of = [](const std::vector<Tensor<T>>& ts) {
        std::vector<std::shared_ptr<Storage<T>>> values;
        for (const auto& t : ts) values.push_back(t.storage());
        return values;
    };
    detail::set_backward(out, [routing, keep, hidden, result, keep_scale, drop, N, C, K, E, Hd,
                               x_node = detail::grad_target(x), g_node = detail::grad_target(gates),
                               x_values = x.storage(), g_values = gates.storage(), w1_nodes = nodes_of(fc1_weight),
                               b1_nodes = nodes_of(fc1_bias), w2_nodes = nodes_of(fc2_weight),
                               b2_nodes = nodes_of(fc2_bias), w1_values = values_of(fc1_weight),
                               w2_values = values_of(fc2_weight)](Node<T>& self) {
        const detail::ExpertRouting& R = *routing;
        const T* dout = self.grad->data();
        const T* g = g_values->data();
        const T* yd = result->data();
        const T* hd = hidden->data();
        const T* xd = x_values->data();
        const Index rows_total = N * K;
        // dgates[s] = dout[n] . result row of slot s
        if (g_node) {
            bool assign = false;
            T* dg = g_node->grad_data_for_write(assign);
            parallel_for((rows_total + 255) / 256, [&](Index block) {
                for (Index s = block * 256; s < std::min(rows_total, block * 256 + 256); ++s) {
                    const T d = ConstVectorMap<T>(dout + (s / K) * C, C).dot(ConstVectorMap<T>(yd + R.row_of[s] * C, C));
                    dg[s] = assign ? d : dg[s] + d;
                }
            });
        }
        // Grad buffers are fetched here, one thread, before the experts run in parallel.
        struct ExpertGrads {
            T *w1 = nullptr, *b1 = nullptr, *w2 = nullptr, *b2 = nullptr;
            bool w1_new = false, b1_new = false, w2_new = false, b2_new = false;
        };
        std::vector<ExpertGrads> grads(static_cast<std::size_t>(E));
        for (Index e = 0; e < E; ++e) {
            if (R.rows(e) == 0) continue;  // took no part: its parameters get no gradient
            ExpertGrads& eg = grads[e];
            if (w1_nodes[e]) eg.w1 = w1_nodes[e]->grad_data_for_write(eg.w1_new);
            if (b1_nodes[e]) eg.b1 = b1_nodes[e]->grad_data_for_write(eg.b1_new);
            if (w2_nodes[e]) eg.w2 = w2_nodes[e]->grad_data_for_write(eg.w2_new);
            if (b2_nodes[e]) eg.b2 = b2_nodes[e]->grad_data_for_write(eg.b2_new);
        }
        // dx of every expert-sorted row, scattered to the tokens afterwards.
        std::shared_ptr<Storage<T>> dx_rows = x_node ? std::make_shared<Storage<T>>(rows_total * C) : nullptr;
        detail::run_experts(R, rows_total * C * Hd, [&](Index e) {
            const Index first = R.offset[e], n_e = R.rows(e);
            if (n_e == 0) return;
            const ExpertGrads& eg = grads[e];
            // dy (n_e, C): gate * dout of the row's token, through the dropout mask
            std::vector<T> dy(static_cast<std::size_t>(n_e * C));
            for (Index j = 0; j < n_e; ++j) {
                const Index r = first + j;
                const T gate = g[R.slot[r]];
                const T* src = dout + R.token[r] * C;
                T* dst = dy.data() + j * C;
                if (drop) {
                    const unsigned char* k = keep->data() + r * C;
                    for (Index c = 0; c < C; ++c) dst[c] = k[c] ? gate * src[c] * keep_scale : T(0);
                } else {
                    for (Index c = 0; c < C; ++c) dst[c] = gate * src[c];
                }
            }
            const T* h = hd + first * Hd;
            const ConstMatrixMap<T> dy_map(dy.data(), n_e, C);
            if (eg.b2) {
                VectorMap<T> db2(eg.b2, C);
                if (eg.b2_new) db2.setZero();
                for (Index j = 0; j < n_e; ++j) db2 += dy_map.row(j).transpose();
            }
            // dW2 (C, Hd) += dy^T h
            if (eg.w2)
                detail::gemm<T>(eg.w2, detail::GemmOperand<T>{dy.data(), n_e, C, false}.t(), {h, n_e, Hd, false},
                                !eg.w2_new);
            if (!eg.w1 && !eg.b1 && !dx_rows) return;
            // dh (n_e, Hd) = dy W2, through the ReLU (h > 0)
            std::vector<T> dh(static_cast<std::size_t>(n_e * Hd));
            detail::gemm<T>(dh.data(), {dy.data(), n_e, C, false}, {w2_values[e]->data(), C, Hd, false}, false);
            for (Index i = 0; i < n_e * Hd; ++i) dh[i] = h[i] > T(0) ? dh[i] : T(0);
            if (eg.b1) {
                VectorMap<T> db1(eg.b1, Hd);
                if (eg.b1_new) db1.setZero();
                const ConstMatrixMap<T> dh_map(dh.data(), n_e, Hd);
                for (Index j = 0; j < n_e; ++j) db1 += dh_map.row(j).transpose();
            }
            if (eg.w1) {
                // dW1 (Hd, C) += dh^T x[token]
                std::vector<T> picked(static_cast<std::size_t>(n_e * C));  // (n_e, C)
                for (Index j = 0; j < n_e; ++j) std::copy_n(xd + R.token[first + j] * C, C, picked.data() + j * C);
                detail::gemm<T>(eg.w1, detail::GemmOperand<T>{dh.data(), n_e, Hd, false}.t(),
                                {picked.data(), n_e, C, false}, !eg.w1_new);
            }
            // dx rows (n_e, C) = dh W1
            if (dx_rows)
                detail::gemm<T>(dx_rows->data() + first * C, {dh.data(), n_e, Hd, false},
                                {w1_values[e]->data(), Hd, C, false}, false);
        });
        if (x_node) {
            bool assign = false;
            T* dx = x_node->grad_data_for_write(assign);
            const T* rows = dx_rows->data();
            parallel_for((N + 63) / 64, [&](Index block) {
                for (Index n = block * 64; n < std::min(N, block * 64 + 64); ++n) {
                    auto d = VectorMap<T>(dx + n * C, C);
                    if (assign) d.setZero();
                    for (Index j = 0; j < K; ++j) d += ConstVectorMap<T>(rows + R.row_of[R.by_expert[n * K + j]] * C, C);
                }
            });
        }
    });
    return out;
}

}  // namespace seemoe
