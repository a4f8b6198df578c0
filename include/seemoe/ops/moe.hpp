// seemoe/ops/moe.hpp — the sparse mixture-of-experts feed-forward as one fused op.
//
//   moe_experts(x, gates, experts, weights, p, training, rng)
//
// Every token n sends its row x[n] to its K experts e = experts[n*K + k]; expert e is the seeMoE
// expert MLP (Linear fc1, ReLU, Linear fc2, dropout p) and the token's output is the gate-weighted
// sum of what its experts return:
//   out[n] = sum_k gates[n, k] * dropout(fc2_e(relu(fc1_e(x[n]))))      e = experts[n*K + k]
// A slot whose expert id is kDroppedSlot (-1) was dropped (the expert was full, see nn/moe.hpp's
// capacity): it contributes nothing and its gate gets a zero gradient. `weights` is a non-owning
// ExpertWeightsView: the module lends references to its tensors for the length of the call, so a
// call copies no Tensor handle (each copy is an atomic reference-count change); a graph keeps what
// its backward needs.
//
// The op runs in named steps, forward and backward side by side:
//   route             group the (token, slot) pairs by expert             ExpertRouting
//   dispatch          gather each expert's rows of x                       gather_rows
//   expert forward    two GEMMs, ReLU and dropout over an expert's rows    expert_forward
//   combine           out[n] = gate-weighted sum of the token's rows       combine
//   backward          combine_backward (dgates, dy) -> expert_backward (dW, db, dx rows)
//                     -> dispatch_backward (scatter dx rows to the tokens)
// The composed form (per expert: index_select, two linears, relu, dropout, a gate product and an
// index_add of a full (N, C) copy) is ~10 graph nodes per expert; here the experts run side by
// side on the threads, each as two GEMMs over the rows it received. The dropout masks are drawn
// expert by expert in the same order as the composed form draws them, so the two consume the Rng
// identically (tests check the two agree). An expert that received no token gets no gradient at
// all, as in the composed graph. Generation (a few tokens, no graph, no dropout) takes a path of
// its own, moe_experts_inference below: it splits each expert's hidden units over the threads.
//
// The routing helpers at the end of the file decide and score what the op is given:
// expert_capacity and drop_overflow (which slots a full expert turns away, by position or by
// priority), and the router's auxiliary losses load_balancing_loss and router_z_loss.
//
// Legend: N tokens, C channels, Hd expert hidden width, E experts, K experts per token.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "functional.hpp"
#include "matmul.hpp"

namespace seemoe {

// The expert id of a slot that was dropped (its expert was full): the slot contributes nothing.
inline constexpr Index kDroppedSlot = -1;

// One expert's four tensors, borrowed: fc1_weight (Hd, C), fc1_bias (Hd) or undefined,
// fc2_weight (C, Hd), fc2_bias (C) or undefined.
template <typename T>
struct ExpertWeightRefs {
    const Tensor<T>* fc1_weight = nullptr;
    const Tensor<T>* fc1_bias = nullptr;
    const Tensor<T>* fc2_weight = nullptr;
    const Tensor<T>* fc2_bias = nullptr;
};

// A non-owning view of E experts' weights: the caller keeps the array and the tensors alive for
// the call (a graph the op builds holds its own references to what backward needs).
template <typename T>
class ExpertWeightsView {
public:
    ExpertWeightsView(const ExpertWeightRefs<T>* experts, Index count) : experts_(experts), count_(count) {}
    explicit ExpertWeightsView(const std::vector<ExpertWeightRefs<T>>& experts)
        : ExpertWeightsView(experts.data(), static_cast<Index>(experts.size())) {}

    Index size() const { return count_; }
    const Tensor<T>& fc1_weight(Index e) const { return *experts_[e].fc1_weight; }
    const Tensor<T>& fc1_bias(Index e) const { return *experts_[e].fc1_bias; }
    const Tensor<T>& fc2_weight(Index e) const { return *experts_[e].fc2_weight; }
    const Tensor<T>& fc2_bias(Index e) const { return *experts_[e].fc2_bias; }
    // The four tensors of expert e, in the order fc1_weight, fc1_bias, fc2_weight, fc2_bias.
    std::array<const Tensor<T>*, 4> all(Index e) const {
        const ExpertWeightRefs<T>& r = experts_[e];
        return {r.fc1_weight, r.fc1_bias, r.fc2_weight, r.fc2_bias};
    }

private:
    const ExpertWeightRefs<T>* experts_;
    Index count_;
};

namespace detail {

// ---- route: who went where ------------------------------------------------------------------------
// The kept (token, slot) pairs grouped by expert, in token order within an expert.
struct ExpertRouting {
    Index N = 0, K = 0, E = 0, rows_total = 0;  // rows_total: kept slots
    std::vector<Index> offset;     // (E + 1) first row of each expert in the expert-sorted order
    std::vector<Index> token;      // (rows_total) token of each expert-sorted row
    std::vector<Index> slot;       // (rows_total) gate slot n*K + k of each expert-sorted row
    std::vector<Index> row_of;     // (N*K) expert-sorted row of each slot, -1 if dropped
    std::vector<Index> by_expert;  // (N*K) each token's kept slots by expert id, then its dropped ones

    ExpertRouting(const std::vector<Index>& experts, Index n_tokens, Index k, Index n_experts)
        : N(n_tokens), K(k), E(n_experts), offset(static_cast<std::size_t>(n_experts + 1), 0),
          row_of(static_cast<std::size_t>(n_tokens * k), -1), by_expert(row_of.size()) {
        for (Index s = 0; s < N * K; ++s)
            if (experts[s] != kDroppedSlot) ++offset[experts[s] + 1];
        for (Index e = 0; e < E; ++e) offset[e + 1] += offset[e];
        rows_total = offset[E];
        token.resize(static_cast<std::size_t>(rows_total));
        slot.resize(token.size());
        std::vector<Index> next(offset.begin(), offset.end() - 1);
        for (Index n = 0; n < N; ++n)
            for (Index j = 0; j < K; ++j) {
                const Index s = n * K + j;
                if (experts[s] == kDroppedSlot) continue;
                const Index r = next[experts[s]]++;
                token[r] = n;
                slot[r] = s;
                row_of[s] = r;
            }
        auto key = [&](Index s) { return experts[s] == kDroppedSlot ? E : experts[s]; };
        for (Index n = 0; n < N; ++n) {
            Index* order = by_expert.data() + n * K;
            for (Index j = 0; j < K; ++j) order[j] = n * K + j;
            std::sort(order, order + K, [&](Index a, Index b) { return key(a) < key(b); });
        }
    }
    Index rows(Index e) const { return offset[e + 1] - offset[e]; }
};

// Runs body(e) for every expert that has rows, side by side on the threads (one expert per thread
// at a time, each with single-threaded GEMMs) unless the whole job is too small to be worth
// waking them.
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

// ---- dispatch --------------------------------------------------------------------------------------
// picked (n_e, C) = the rows of x (N, C) that expert e received, in its row order.
template <typename T>
void gather_rows(const ExpertRouting& R, Index e, const T* x, Index C, T* picked) {
    const Index first = R.offset[e];
    for (Index j = 0; j < R.rows(e); ++j) std::copy_n(x + R.token[first + j] * C, C, picked + j * C);
}

// ---- expert forward -------------------------------------------------------------------------------
// One expert over its n rows: h (n, Hd) = relu(picked W1^T + b1); y (n, C) = dropout(h W2^T + b2)
// with the keep mask (n, C) when given. Biases may be null.
template <typename T>
void expert_forward(const T* picked, Index n, Index C, Index Hd, const T* w1, const T* b1, const T* w2, const T* b2,
                    const unsigned char* keep, T keep_scale, T* h, T* y) {
    affine_rows(h, picked, n, C, w1, Hd, b1);  // (n, Hd)
    MatrixMap<T> h_map(h, n, Hd);
    h_map = h_map.cwiseMax(T(0));
    affine_rows(y, h, n, Hd, w2, C, b2);  // (n, C)
    if (keep)
        for (Index i = 0; i < n * C; ++i) y[i] = keep[i] ? y[i] * keep_scale : T(0);
}

// ---- combine ---------------------------------------------------------------------------------------
// out[n] (C) = sum over the token's kept slots, in expert order, of gate * its result row; zero for
// a token whose slots were all dropped.
template <typename T>
void combine(const ExpertRouting& R, const T* gates, const T* result, Index C, T* out) {
    const Index N = R.N, K = R.K;
    parallel_for((N + 63) / 64, [&](Index block) {
        for (Index n = block * 64; n < std::min(N, block * 64 + 64); ++n) {
            auto o = VectorMap<T>(out + n * C, C);
            o.setZero();
            for (Index j = 0; j < K; ++j) {
                const Index s = R.by_expert[n * K + j];
                if (R.row_of[s] < 0) break;  // the dropped slots come last
                o += gates[s] * ConstVectorMap<T>(result + R.row_of[s] * C, C);
            }
        }
    });
}

// ---- backward steps --------------------------------------------------------------------------------
// dgates[s] (+)= dout[token] . result row of slot s (0 for a dropped slot).
template <typename T>
void combine_backward_gates(const ExpertRouting& R, const T* dout, const T* result, Index C, T* dgates, bool assign) {
    const Index slots = R.N * R.K, K = R.K;
    parallel_for((slots + 255) / 256, [&](Index block) {
        for (Index s = block * 256; s < std::min(slots, block * 256 + 256); ++s) {
            const Index r = R.row_of[s];
            const T d = r < 0 ? T(0)
                              : ConstVectorMap<T>(dout + (s / K) * C, C).dot(ConstVectorMap<T>(result + r * C, C));
            dgates[s] = assign ? d : dgates[s] + d;
        }
    });
}

// dy (n_e, C) of expert e: gate * dout of each row's token, through the dropout mask.
template <typename T>
void combine_backward_rows(const ExpertRouting& R, Index e, const T* dout, const T* gates, Index C,
                           const unsigned char* keep, T keep_scale, T* dy) {
    const Index first = R.offset[e];
    for (Index j = 0; j < R.rows(e); ++j) {
        const Index r = first + j;
        const T gate = gates[R.slot[r]];
        const T* src = dout + R.token[r] * C;
        T* dst = dy + j * C;
        if (keep) {
            const unsigned char* k = keep + r * C;
            for (Index c = 0; c < C; ++c) dst[c] = k[c] ? gate * src[c] * keep_scale : T(0);
        } else {
            for (Index c = 0; c < C; ++c) dst[c] = gate * src[c];
        }
    }
}

// Where one expert's parameter gradients go (null: that tensor needs none), and whether each
// buffer is still empty (then it is written, not added to).
template <typename T>
struct ExpertGrads {
    T *w1 = nullptr, *b1 = nullptr, *w2 = nullptr, *b2 = nullptr;
    bool w1_new = false, b1_new = false, w2_new = false, b2_new = false;
};

// The backward of expert_forward over n rows given dy (n, C): dW2, db2, dh through the ReLU, db1,
// dW1 (from the picked rows) and, when dx_rows is not null, dx_rows (n, C) = dh W1.
template <typename T>
void expert_backward(const T* dy, const T* h, const T* picked, Index n, Index C, Index Hd, const T* w1, const T* w2,
                     const ExpertGrads<T>& g, T* dx_rows) {
    const ConstMatrixMap<T> dy_map(dy, n, C);
    if (g.b2) {
        VectorMap<T> db2(g.b2, C);
        if (g.b2_new) db2.setZero();
        for (Index j = 0; j < n; ++j) db2 += dy_map.row(j).transpose();
    }
    if (g.w2) gemm<T>(g.w2, GemmOperand<T>{dy, n, C, false}.t(), {h, n, Hd, false}, !g.w2_new);  // (C, Hd)
    if (!g.w1 && !g.b1 && !dx_rows) return;
    std::vector<T> dh(static_cast<std::size_t>(n * Hd));  // (n, Hd) = dy W2, through the ReLU (h > 0)
    gemm<T>(dh.data(), {dy, n, C, false}, {w2, C, Hd, false}, false);
    for (Index i = 0; i < n * Hd; ++i) dh[i] = h[i] > T(0) ? dh[i] : T(0);
    if (g.b1) {
        VectorMap<T> db1(g.b1, Hd);
        if (g.b1_new) db1.setZero();
        const ConstMatrixMap<T> dh_map(dh.data(), n, Hd);
        for (Index j = 0; j < n; ++j) db1 += dh_map.row(j).transpose();
    }
    if (g.w1) gemm<T>(g.w1, GemmOperand<T>{dh.data(), n, Hd, false}.t(), {picked, n, C, false}, !g.w1_new);  // (Hd, C)
    if (dx_rows) gemm<T>(dx_rows, {dh.data(), n, Hd, false}, {w1, Hd, C, false}, false);  // (n, C)
}

// dx[n] (+)= sum of the dx rows of the token's kept slots.
template <typename T>
void dispatch_backward(const ExpertRouting& R, const T* dx_rows, Index C, T* dx, bool assign) {
    const Index N = R.N, K = R.K;
    parallel_for((N + 63) / 64, [&](Index block) {
        for (Index n = block * 64; n < std::min(N, block * 64 + 64); ++n) {
            auto d = VectorMap<T>(dx + n * C, C);
            if (assign) d.setZero();
            for (Index j = 0; j < K; ++j) {
                const Index r = R.row_of[R.by_expert[n * K + j]];
                if (r < 0) break;
                d += ConstVectorMap<T>(dx_rows + r * C, C);
            }
        }
    });
}

// ---- the inference path ----------------------------------------------------------------------------

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
// The inference path cuts an expert's hidden units into parts of at least this many.
inline constexpr Index kMoEInferencePartWidth = 128;

// The inference path (generation: one token a step): no graph, no dropout, no routing tables.
// Every expert's hidden units are cut into P = Hd / 128 parts (at least one); a part computes its
// slice of relu(fc1) and that slice's share of fc2 (a product over its hidden units only). The
// parts are one parallel_for, so each of the threads takes a contiguous run of them, whatever the
// experts a token meets: all threads stream weights, and each keeps reading the same parts of
// every expert, which stay in its own caches from one token to the next (measured with two
// halves: 34 MB of experts, two per step, 20.5 -> 16.7 us per step against one whole expert per
// thread). P depends on Hd only and the shares are added in part order on one thread, so the
// result is the same bits whatever the thread count.
template <typename T>
void moe_experts_inference(T* out, const T* x, const T* gates, const std::vector<Index>& experts, Index N, Index C,
                           Index K, Index Hd, const ExpertWeightsView<T>& weights) {
    const Index slots = N * K, parts = std::max<Index>(1, Hd / kMoEInferencePartWidth);
    thread_local std::vector<T> scratch;  // hidden (slots, Hd), then the shares (P, slots, C)
    scratch.resize(static_cast<std::size_t>(slots * (Hd + parts * C)));
    T* hidden = scratch.data();
    T* shares = hidden + slots * Hd;
    // The weights of every slot as plain pointers, taken here: the other threads then read no
    // Tensor, whose reference counts another thread may change (each such shared line costs a
    // transfer between the cores). A dropped slot has none.
    struct SlotWeights {
        const T *w1, *b1, *w2, *b2;
    };
    thread_local std::vector<SlotWeights> slot_weights_buffer;
    slot_weights_buffer.resize(static_cast<std::size_t>(slots));
    auto data_or_null = [](const Tensor<T>& t) { return t.defined() ? t.data() : nullptr; };
    for (Index s = 0; s < slots; ++s) {
        const Index e = experts[s];
        slot_weights_buffer[s] = e == kDroppedSlot ? SlotWeights{nullptr, nullptr, nullptr, nullptr}
                                                   : SlotWeights{weights.fc1_weight(e).data(),
                                                                 data_or_null(weights.fc1_bias(e)),
                                                                 weights.fc2_weight(e).data(),
                                                                 data_or_null(weights.fc2_bias(e))};
    }
    const SlotWeights* slot_weights = slot_weights_buffer.data();
    auto part = [&](Index p) {
        const Index h0 = Hd * p / parts, width = Hd * (p + 1) / parts - h0;
        for (Index s = 0; s < slots; ++s) {
            const SlotWeights& w = slot_weights[s];
            if (!w.w1) continue;
            T* h = hidden + s * Hd + h0;  // (width)
            if (w.b1) std::copy_n(w.b1 + h0, width, h);
            weight_slice_times(h, x + (s / K) * C, w.w1 + h0 * C, width, C, C, w.b1 != nullptr);
            for (Index i = 0; i < width; ++i) h[i] = std::max(h[i], T(0));
            T* y = shares + (p * slots + s) * C;  // (C): fc2 over this part's hidden units
            const bool b2 = p == 0 && w.b2;
            if (b2) std::copy_n(w.b2, C, y);
            weight_slice_times(y, h, w.w2 + h0, C, width, Hd, b2);
        }
    };
    if (parts > 1 && slots * C * Hd >= (Index(1) << 16)) {
        parallel_for(parts, part);
    } else {
        for (Index p = 0; p < parts; ++p) part(p);
    }
    thread_local std::vector<Index> order;  // a token's slots by expert id
    order.resize(static_cast<std::size_t>(K));
    thread_local std::vector<T> y_buffer;
    y_buffer.resize(static_cast<std::size_t>(C));
    VectorMap<T> y(y_buffer.data(), C);
    for (Index n = 0; n < N; ++n) {
        for (Index j = 0; j < K; ++j) order[j] = n * K + j;
        std::sort(order.begin(), order.end(), [&](Index a, Index b) { return experts[a] < experts[b]; });
        VectorMap<T> o(out + n * C, C);
        o.setZero();
        for (Index j = 0; j < K; ++j) {
            const Index s = order[j];
            if (experts[s] == kDroppedSlot) continue;
            y = ConstVectorMap<T>(shares + s * C, C);
            for (Index p = 1; p < parts; ++p) y += ConstVectorMap<T>(shares + (p * slots + s) * C, C);
            o += gates[s] * y;
        }
    }
}

// ---- checks ----------------------------------------------------------------------------------------
template <typename T>
Index check_moe_inputs(const Tensor<T>& x, const Tensor<T>& gates, const std::vector<Index>& experts,
                       const ExpertWeightsView<T>& w, T dropout_p) {
    SEEMOE_CHECK(x.dim() == 2 && gates.dim() == 2 && gates.size(0) == x.size(0),
                 "[moe_experts] x must be (N, C) and gates (N, K), got x ", shape_str(x.shape()), " gates ",
                 shape_str(gates.shape()));
    const Index N = x.size(0), C = x.size(1), K = gates.size(1), E = w.size();
    SEEMOE_CHECK(E >= 1, "[moe_experts] need at least one expert");
    for (Index e = 0; e < E; ++e)
        for (const Tensor<T>* t : w.all(e))
            SEEMOE_CHECK(t != nullptr, "[moe_experts] expert ", e, " lends a null tensor reference");
    SEEMOE_CHECK(static_cast<Index>(experts.size()) == N * K, "[moe_experts] ", experts.size(),
                 " expert ids for gates ", shape_str(gates.shape()));
    const Index Hd = w.fc1_weight(0).dim() == 2 ? w.fc1_weight(0).size(0) : -1;
    for (Index e = 0; e < E; ++e) {
        const auto& w1 = w.fc1_weight(e);
        const auto& w2 = w.fc2_weight(e);
        SEEMOE_CHECK(w1.dim() == 2 && w1.size(0) == Hd && w1.size(1) == C && w2.dim() == 2 && w2.size(0) == C &&
                         w2.size(1) == Hd,
                     "[moe_experts] expert ", e, " has fc1_weight ", shape_str(w1.shape()), " and fc2_weight ",
                     shape_str(w2.shape()), "; need (Hd, C) and (C, Hd) with C = ", C, " from x ",
                     shape_str(x.shape()), " and one Hd for all experts");
        const auto& b1 = w.fc1_bias(e);
        const auto& b2 = w.fc2_bias(e);
        SEEMOE_CHECK(!b1.defined() || (b1.dim() == 1 && b1.size(0) == Hd), "[moe_experts] expert ", e,
                     " fc1_bias ", shape_str(b1.shape()), " should be (", Hd, ",)");
        SEEMOE_CHECK(!b2.defined() || (b2.dim() == 1 && b2.size(0) == C), "[moe_experts] expert ", e, " fc2_bias ",
                     shape_str(b2.shape()), " should be (", C, ",)");
    }
    for (Index s = 0; s < N * K; ++s) {
        if (experts[s] == kDroppedSlot) continue;
        SEEMOE_CHECK(experts[s] >= 0 && experts[s] < E, "[moe_experts] expert id ", experts[s], " at slot ", s,
                     " is out of range for ", E, " experts");
        for (Index j = s - s % K; j < s; ++j)
            SEEMOE_CHECK(experts[j] != experts[s], "[moe_experts] token ", s / K, " is routed to expert ",
                         experts[s], " twice");
    }
    SEEMOE_CHECK(dropout_p >= 0 && dropout_p < 1, "[moe_experts] dropout probability must be in [0, 1), got ",
                 dropout_p);
    return Hd;
}

}  // namespace detail

// The fused sparse MoE feed-forward (see the top of this file). x (N, C); gates (N, K); experts
// holds N*K expert ids in [0, E) or kDroppedSlot, row-major like gates, distinct within a token;
// weights lends E experts' tensors -> (N, C). Differentiable in x, gates and every weight and bias.
template <typename T>
Tensor<T> moe_experts(const Tensor<T>& x, const Tensor<T>& gates, const std::vector<Index>& experts,
                      const ExpertWeightsView<T>& weights, typename Tensor<T>::Scalar dropout_p, bool training,
                      Rng& rng) {
    const Index Hd = detail::check_moe_inputs(x, gates, experts, weights, dropout_p);
    const Index N = x.size(0), C = x.size(1), K = gates.size(1), E = weights.size();

    auto builds_graph = [&] {
        if (!GradMode::is_enabled()) return false;
        if (x.requires_grad() || gates.requires_grad()) return true;
        for (Index e = 0; e < E; ++e)
            for (const Tensor<T>* t : weights.all(e))
                if (t->defined() && t->requires_grad()) return true;
        return false;
    };
    const bool drop = training && dropout_p > 0;
    if (N <= detail::kMoEInferenceMaxTokens && !drop && !builds_graph()) {
        Tensor<T> out = detail::make_op_result<T>({N, C}, "moe_experts", {&x, &gates});  // (N, C), no graph
        detail::moe_experts_inference(out.data(), x.data(), gates.data(), experts, N, C, K, Hd, weights);
        return out;
    }

    std::vector<Tensor<T>> inputs{x, gates};
    for (Index e = 0; GradMode::is_enabled() && e < E; ++e)  // the graph's parents, if any
        for (const Tensor<T>* t : weights.all(e))
            if (t->defined()) inputs.push_back(*t);
    Tensor<T> out = detail::make_op_result<T>({N, C}, "moe_experts", inputs);  // (N, C)

    // route
    auto routing = std::make_shared<const detail::ExpertRouting>(experts, N, K, E);
    const detail::ExpertRouting& R = *routing;
    const Index rows = R.rows_total;
    // Dropout masks, expert by expert (rows in token order): the composed form's draw order.
    const T keep_scale = drop ? T(1) / (T(1) - dropout_p) : T(1);
    auto keep = std::make_shared<std::vector<unsigned char>>(drop ? static_cast<std::size_t>(rows * C) : 0);
    if (drop) detail::draw_dropout_keep(keep->data(), rows * C, static_cast<double>(dropout_p), rng);

    // dispatch + expert forward: hidden (rows, Hd) and result (rows, C) in expert-sorted row
    // order; each expert runs on one thread.
    auto hidden = std::make_shared<Storage<T>>(rows * Hd);  // (rows, Hd)
    auto result = std::make_shared<Storage<T>>(rows * C);   // (rows, C)
    auto data_or_null = [](const Tensor<T>& t) { return t.defined() ? t.data() : nullptr; };
    detail::run_experts(R, rows * C * Hd, [&](Index e) {
        const Index first = R.offset[e], n_e = R.rows(e);
        std::vector<T> picked(static_cast<std::size_t>(n_e * C));  // (n_e, C)
        detail::gather_rows(R, e, x.data(), C, picked.data());
        detail::expert_forward(picked.data(), n_e, C, Hd, weights.fc1_weight(e).data(),
                               data_or_null(weights.fc1_bias(e)), weights.fc2_weight(e).data(),
                               data_or_null(weights.fc2_bias(e)), drop ? keep->data() + first * C : nullptr,
                               keep_scale, hidden->data() + first * Hd, result->data() + first * C);
    });
    // combine
    detail::combine(R, gates.data(), result->data(), C, out.data());

    if (!out.requires_grad()) return out;
    // What backward needs of each expert: its parameters' nodes (null: no gradient wanted) and the
    // two weight values.
    struct SavedExpert {
        std::shared_ptr<Node<T>> w1, b1, w2, b2;
        std::shared_ptr<Storage<T>> w1_values, w2_values;
    };
    std::vector<SavedExpert> saved(static_cast<std::size_t>(E));
    for (Index e = 0; e < E; ++e) {
        auto node_of = [](const Tensor<T>& t) { return t.defined() ? detail::grad_target(t) : nullptr; };
        saved[e] = {node_of(weights.fc1_weight(e)), node_of(weights.fc1_bias(e)), node_of(weights.fc2_weight(e)),
                    node_of(weights.fc2_bias(e)),   weights.fc1_weight(e).storage(), weights.fc2_weight(e).storage()};
    }
    detail::set_backward(out, [routing, keep, hidden, result, keep_scale, drop, C, E, Hd, saved = std::move(saved),
                               x_node = detail::grad_target(x), g_node = detail::grad_target(gates),
                               x_values = x.storage(), g_values = gates.storage()](Node<T>& self) {
        const detail::ExpertRouting& R = *routing;
        const T* dout = self.grad->data();
        const Index rows = R.rows_total;
        if (g_node) {
            bool assign = false;
            T* dg = g_node->grad_data_for_write(assign);
            detail::combine_backward_gates(R, dout, result->data(), C, dg, assign);
        }
        // Grad buffers are fetched here, on one thread, before the experts run in parallel.
        std::vector<detail::ExpertGrads<T>> grads(static_cast<std::size_t>(E));
        for (Index e = 0; e < E; ++e) {
            if (R.rows(e) == 0) continue;  // took no part: its parameters get no gradient
            detail::ExpertGrads<T>& eg = grads[e];
            const SavedExpert& s = saved[e];
            if (s.w1) eg.w1 = s.w1->grad_data_for_write(eg.w1_new);
            if (s.b1) eg.b1 = s.b1->grad_data_for_write(eg.b1_new);
            if (s.w2) eg.w2 = s.w2->grad_data_for_write(eg.w2_new);
            if (s.b2) eg.b2 = s.b2->grad_data_for_write(eg.b2_new);
        }
        // dx of every expert-sorted row, scattered to the tokens afterwards.
        std::vector<T> dx_rows(x_node ? static_cast<std::size_t>(rows * C) : 0);  // (rows, C)
        detail::run_experts(R, rows * C * Hd, [&](Index e) {
            const Index first = R.offset[e], n_e = R.rows(e);
            std::vector<T> dy(static_cast<std::size_t>(n_e * C));  // (n_e, C)
            detail::combine_backward_rows(R, e, dout, g_values->data(), C, drop ? keep->data() : nullptr, keep_scale,
                                          dy.data());
            std::vector<T> picked;  // (n_e, C), only for dW1
            if (grads[e].w1) {
                picked.resize(static_cast<std::size_t>(n_e * C));
                detail::gather_rows(R, e, x_values->data(), C, picked.data());
            }
            detail::expert_backward(dy.data(), hidden->data() + first * Hd, picked.data(), n_e, C, Hd,
                                    saved[e].w1_values->data(), saved[e].w2_values->data(), grads[e],
                                    x_node ? dx_rows.data() + first * C : nullptr);
        });
        if (x_node) {
            bool assign = false;
            T* dx = x_node->grad_data_for_write(assign);
            detail::dispatch_backward(R, dx_rows.data(), C, dx, assign);
        }
    });
    return out;
}

// The same op for weights given as four lists of E tensors each (fc1_bias and fc2_bias entries
// may be undefined): builds the view and calls the one above.
template <typename T>
Tensor<T> moe_experts(const Tensor<T>& x, const Tensor<T>& gates, const std::vector<Index>& experts,
                      const std::vector<Tensor<T>>& fc1_weight, const std::vector<Tensor<T>>& fc1_bias,
                      const std::vector<Tensor<T>>& fc2_weight, const std::vector<Tensor<T>>& fc2_bias,
                      typename Tensor<T>::Scalar dropout_p, bool training, Rng& rng) {
    SEEMOE_CHECK(fc1_bias.size() == fc1_weight.size() && fc2_weight.size() == fc1_weight.size() &&
                     fc2_bias.size() == fc1_weight.size(),
                 "[moe_experts] need the same number (>= 1) of fc1_weight, fc1_bias, fc2_weight, fc2_bias, got ",
                 fc1_weight.size(), ", ", fc1_bias.size(), ", ", fc2_weight.size(), ", ", fc2_bias.size());
    std::vector<ExpertWeightRefs<T>> refs(fc1_weight.size());
    for (std::size_t e = 0; e < refs.size(); ++e) refs[e] = {&fc1_weight[e], &fc1_bias[e], &fc2_weight[e], &fc2_bias[e]};
    return moe_experts(x, gates, experts, ExpertWeightsView<T>(refs), dropout_p, training, rng);
}

// ---- routing: expert capacity and the router's auxiliary losses -----------------------------------

// Expert capacity C = ceil(K * S * cf / E): how many of the K * S assignments of S tokens one of E
// experts takes. cf <= 0 means dropless: -1, no limit. The ceiling keeps C >= 1 whenever cf > 0,
// so a single token is never dropped (a floor gives 0 for one token: makeMoE's generation bug).
inline Index expert_capacity(Index tokens, Index k, Index num_experts, double capacity_factor) {
    if (capacity_factor <= 0) return -1;
    return static_cast<Index>(std::ceil(static_cast<double>(k * tokens) * capacity_factor /
                                        static_cast<double>(num_experts)));
}

// Which assignments a full expert turns away.
enum class OverflowPolicy {
    Position,  // first come, first served: tokens in sequence order
    Priority,  // V-MoE's Batch Priority Routing: tokens by their top gate, highest first
};

// experts (N, K) ids best first and their gates (N, K) -> the same ids with kDroppedSlot where the
// expert was already holding `capacity` assignments (capacity < 0: nothing dropped). Assignments
// are placed rank by rank, every token's first choice before any token's second choice (as GShard
// and V-MoE do), within a rank in token order (Position) or by the token's first gate, highest
// first, ties in token order (Priority).
template <typename T>
std::vector<Index> drop_overflow(const std::vector<Index>& experts, const T* gates, Index N, Index K, Index num_experts,
                                 Index capacity, OverflowPolicy policy) {
    SEEMOE_CHECK(static_cast<Index>(experts.size()) == N * K, "[drop_overflow] ", experts.size(),
                 " expert ids for (N, K) = (", N, ", ", K, ")");
    std::vector<Index> kept = experts;
    if (capacity < 0) return kept;
    std::vector<Index> order(static_cast<std::size_t>(N));
    for (Index n = 0; n < N; ++n) order[n] = n;
    if (policy == OverflowPolicy::Priority)
        std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return gates[a * K] > gates[b * K]; });
    std::vector<Index> load(static_cast<std::size_t>(num_experts), 0);
    for (Index k = 0; k < K; ++k)
        for (Index n : order) {
            const Index s = n * K + k, e = experts[s];
            if (e == kDroppedSlot) continue;
            SEEMOE_CHECK(e >= 0 && e < num_experts, "[drop_overflow] expert id ", e, " at slot ", s,
                         " is out of range for ", num_experts, " experts");
            if (load[e] < capacity) {
                ++load[e];
            } else {
                kept[s] = kDroppedSlot;
            }
        }
    return kept;
}

// The Switch/GShard load-balancing loss E * sum_e f_e * P_e: P_e = mean over tokens of the router
// probability of expert e (differentiable), f_e = fraction of tokens whose first choice is e (a
// constant, as defined). 1 when both are uniform, E when every token goes to one expert with
// probability 1. probs (N, E), first_choice (N) -> ().
template <typename T>
Tensor<T> load_balancing_loss(const Tensor<T>& probs, const std::vector<Index>& first_choice) {
    SEEMOE_CHECK(probs.dim() == 2 && probs.size(0) >= 1 && static_cast<Index>(first_choice.size()) == probs.size(0),
                 "[load_balancing_loss] probs must be (N, E) with N >= 1 and one first choice per token, got probs ",
                 shape_str(probs.shape()), " and ", first_choice.size(), " choices");
    const Index N = probs.size(0), E = probs.size(1);
    std::vector<T> f(static_cast<std::size_t>(E), T(0));  // (E)
    for (Index e : first_choice) {
        SEEMOE_CHECK(e >= 0 && e < E, "[load_balancing_loss] first choice ", e, " is out of range for ", E,
                     " experts");
        f[e] += T(1) / static_cast<T>(N);
    }
    Tensor<T> out = detail::make_op_result<T>(Shape{}, "load_balancing_loss", {&probs});  // ()
    const ConstMatrixMap<T> p(probs.data(), N, E);
    const ConstVectorMap<T> f_map(f.data(), E);
    // E/N * sum_s sum_e f_e p_se
    out.data()[0] = static_cast<T>(E) / static_cast<T>(N) * (p * f_map).sum();
    detail::set_backward(out, [p_node = detail::grad_target(probs), f = std::move(f), N, E](Node<T>& self) {
        if (!p_node) return;
        const T scale = self.grad->data()[0] * static_cast<T>(E) / static_cast<T>(N);
        MatrixMap<T> dp(p_node->grad_data(), N, E);
        dp.rowwise() += scale * ConstVectorMap<T>(f.data(), E).transpose();
    });
    return out;
}

// ST-MoE's router z-loss: mean over tokens of (logsumexp_e logits[s, e])^2, which keeps the router
// logits small. (ln E)^2 for all-zero logits. logits (N, E) -> ().
template <typename T>
Tensor<T> router_z_loss(const Tensor<T>& logits) {
    SEEMOE_CHECK(logits.dim() == 2 && logits.size(0) >= 1 && logits.size(1) >= 1,
                 "[router_z_loss] logits must be (N, E) with N, E >= 1, got ", shape_str(logits.shape()));
    const Index N = logits.size(0), E = logits.size(1);
    const ConstMatrixMap<T> l(logits.data(), N, E);
    std::vector<T> lse(static_cast<std::size_t>(N));  // (N) logsumexp of each row
    T total = 0;
    for (Index s = 0; s < N; ++s) {
        const T m = l.row(s).maxCoeff();
        lse[s] = m + std::log((l.row(s).array() - m).exp().sum());
        total += lse[s] * lse[s];
    }
    Tensor<T> out = detail::make_op_result<T>(Shape{}, "router_z_loss", {&logits});  // ()
    out.data()[0] = total / static_cast<T>(N);
    // d/dl_se = 2 lse_s softmax_se / N
    detail::set_backward(out, [l_node = detail::grad_target(logits), values = logits.storage(), lse = std::move(lse),
                               N, E](Node<T>& self) {
        if (!l_node) return;
        const T scale = self.grad->data()[0] * T(2) / static_cast<T>(N);
        const ConstMatrixMap<T> l(values->data(), N, E);
        MatrixMap<T> dl(l_node->grad_data(), N, E);
        for (Index s = 0; s < N; ++s) dl.row(s).array() += scale * lse[s] * (l.row(s).array() - lse[s]).exp();
    });
    return out;
}

}  // namespace seemoe
