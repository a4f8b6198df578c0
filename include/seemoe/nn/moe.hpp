// seemoe/nn/moe.hpp — the sparse mixture of experts: Expert, NoisyTopkRouter, SparseMoE.
//
// Every token picks K of E experts. The router scores experts with a Linear; in training it adds
// noise N(0,1) * softplus(noise(x)) so tokens explore other experts (noisy top-k gating, Shazeer et
// al. 2017); in eval the scores are used as they are, so outputs are deterministic. The K best
// scores are softmaxed into gates that sum to 1 per token — the same as a softmax over all E scores
// with the others set to -inf.
//
// Dispatch is sparse: tokens are grouped by expert, each expert runs ONE GEMM pair over the rows it
// received, its output is scaled by the gates and added back into the token's row. The cost
// follows the K active experts, not all E. forward() does all of that in the fused op
// moe_experts (ops/moe.hpp: one graph node, experts in parallel); forward_composed() builds the
// same computation from index_select, the expert modules, mul and index_add, and is what runs when
// the experts are not plain ReLU MLPs with one dropout probability.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "../ops/elementwise.hpp"
#include "../ops/functional.hpp"
#include "../ops/indexing.hpp"
#include "../ops/moe.hpp"
#include "../ops/shape_ops.hpp"
#include "mlp.hpp"

namespace seemoe::nn {

// An expert is an MLP: fc1 (C -> 4C), ReLU, fc2 (4C -> C), dropout.
template <typename T>
class Expert : public MLP<T> {
public:
    Expert() = default;
    Expert(Index dim, Index hidden, T dropout_p, Rng& rng)
        : MLP<T>(dim, hidden, dim, Activation::ReLU, dropout_p, rng) {}
};

// What the router decided for N tokens.
template <typename T>
struct Routing {
    Tensor<T> gates;                 // (N, K) softmax over the kept scores, differentiable
    std::vector<Index> experts;      // (N, K) expert ids, best first
    Index top_k = 0;
};

// What one MoE layer did in one forward, returned by value with its output (for statistics and
// the routing pictures).
struct RoutingStats {
    Index num_experts = 0, top_k = 0, tokens = 0;  // E, K, N
    std::vector<Index> experts;            // (N, K) each slot's expert, best first
    std::vector<Index> tokens_per_expert;  // (E) slots each expert received

    RoutingStats() = default;
    RoutingStats(Index E, Index K, Index N)
        : num_experts(E), top_k(K), tokens(N), tokens_per_expert(static_cast<std::size_t>(E), 0) {}

    // Takes the (N, K) expert ids and counts each expert's slots.
    void count(std::vector<Index> ids) {
        experts = std::move(ids);
        for (Index e : experts) ++tokens_per_expert[e];
    }
};

// A MoE layer's result: the output (..., C) and its routing statistics.
template <typename T>
struct MoEOutput {
    Tensor<T> out;
    RoutingStats stats;
};

// What every MoE layer of one model forward did, in layer order. The caller owns it and passes a
// pointer down (the decoder appends one entry per layer); the modules themselves stay unchanged.
template <typename T>
struct MoETrace {
    std::vector<RoutingStats> layers;
};

template <typename T>
class NoisyTopkRouter : public Module<T> {
public:
    NoisyTopkRouter() = default;
    NoisyTopkRouter(Index dim, Index num_experts, Index top_k, Rng& rng)
        : route(dim, num_experts, rng), noise(dim, num_experts, rng), top_k(top_k) {
        SEEMOE_CHECK(top_k >= 1 && top_k <= num_experts, "[NoisyTopkRouter] top_k ", top_k,
                     " must be in [1, num_experts = ", num_experts, "]");
    }

    Routing<T> forward(const Tensor<T>& x, Rng& rng) const {                 // x (N, C)
        Tensor<T> logits = route.forward(x);                                  // (N, E)
        if (this->is_training()) {
            Tensor<T> scale = softplus(noise.forward(x));                     // (N, E)
            Tensor<T> eps = Tensor<T>::randn(logits.shape(), rng);            // (N, E), no grad
            logits = add(logits, mul(eps, scale));                            // (N, E)
        }
        TopK<T> best = topk(logits, top_k);                                   // (N, K)
        return {softmax(best.values, -1), std::move(best.indices), top_k};    // (N, K)
    }

    Linear<T> route, noise;
    Index top_k = 2;

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->child(v, prefix, "route", route);
        this->child(v, prefix, "noise", noise);
    }
};

template <typename T>
class SparseMoE : public Module<T> {
public:
    SparseMoE() = default;
    SparseMoE(Index dim, Index num_experts, Index top_k, Index hidden, T dropout_p, Rng& rng)
        : router(dim, num_experts, top_k, rng) {
        for (Index e = 0; e < num_experts; ++e) experts.emplace_back(dim, hidden, dropout_p, rng);
    }

    // The layer's output and what its router did (tokens per expert), returned as a value: the
    // module is not written to, so several threads may call forward at once.
    MoEOutput<T> forward_with_stats(const Tensor<T>& x, Rng& rng) const {   // x (..., C)
        if (!fusable()) return forward_composed_with_stats(x, rng);
        const Index C = x.size(-1), N = x.numel() / C;
        Tensor<T> tokens = reshape(x, {N, C});                                // (N, C)
        Routing<T> routing = router.forward(tokens, rng);                     // gates (N, K)
        // The experts' tensors lent to the op: E references each, no Tensor copied.
        std::vector<ExpertWeightRefs<T>> weights(experts.size());
        for (std::size_t e = 0; e < experts.size(); ++e)
            weights[e] = {&experts[e].fc1.weight, &experts[e].fc1.bias, &experts[e].fc2.weight, &experts[e].fc2.bias};
        const Dropout<T>& drop = experts.front().drop;
        Tensor<T> out = moe_experts(tokens, routing.gates, routing.experts, ExpertWeightsView<T>(weights), drop.p,
                                    drop.is_training(), rng);                  // (N, C)
        MoEOutput<T> result{reshape(out, x.shape()), RoutingStats(num_experts(), routing.top_k, N)};  // (..., C)
        result.stats.count(std::move(routing.experts));
        return result;
    }

    Tensor<T> forward(const Tensor<T>& x, Rng& rng) const {                  // x (..., C)
        return forward_with_stats(x, rng).out;                                // (..., C)
    }

    // The same computation as forward(), one graph node per op: per expert index_select, the
    // expert module, the gate product and index_add. The reference the fused op is tested
    // against, and the path for experts the fused op does not cover.
    MoEOutput<T> forward_composed_with_stats(const Tensor<T>& x, Rng& rng) const {  // x (..., C)
        const Index C = x.size(-1), N = x.numel() / C, E = num_experts();
        Tensor<T> tokens = reshape(x, {N, C});                                // (N, C)
        Routing<T> routing = router.forward(tokens, rng);                     // gates (N, K)
        const Index K = routing.top_k;

        // Group (token, slot) pairs by expert: rows[e] are token ids, slots[e] index gates (N*K).
        std::vector<std::vector<Index>> rows(E), slots(E);
        for (Index n = 0; n < N; ++n)
            for (Index k = 0; k < K; ++k) {
                const Index e = routing.experts[n * K + k];
                rows[e].push_back(n);
                slots[e].push_back(n * K + k);
            }

        Tensor<T> flat_gates = reshape(routing.gates, {N * K});              // (N*K)
        Tensor<T> out = Tensor<T>::zeros({N, C});                            // (N, C)
        for (Index e = 0; e < E; ++e) {
            const Index n_e = static_cast<Index>(rows[e].size());
            if (n_e == 0) continue;
            Tensor<T> picked = index_select(tokens, 0, rows[e]);              // (n_e, C)
            Tensor<T> expert_out = experts[e].forward(picked, rng);           // (n_e, C)
            Tensor<T> gate = reshape(index_select(flat_gates, 0, slots[e]), {n_e, 1});  // (n_e, 1)
            out = index_add(out, 0, rows[e], mul(expert_out, gate));          // (N, C)
        }
        MoEOutput<T> result{reshape(out, x.shape()), RoutingStats(E, K, N)};  // (..., C)
        result.stats.count(std::move(routing.experts));
        return result;
    }

    Tensor<T> forward_composed(const Tensor<T>& x, Rng& rng) const {         // x (..., C)
        return forward_composed_with_stats(x, rng).out;                       // (..., C)
    }

    Index num_experts() const { return static_cast<Index>(experts.size()); }

    // Whether moe_experts computes exactly what the expert modules would: ReLU MLPs of one
    // hidden width, one dropout probability and one train/eval mode.
    bool fusable() const {
        if (experts.empty()) return false;
        const Expert<T>& first = experts.front();
        for (const auto& expert : experts) {
            if (expert.act != Activation::ReLU || expert.drop.p != first.drop.p ||
                expert.drop.is_training() != first.drop.is_training() ||
                expert.fc1.weight.shape() != first.fc1.weight.shape() ||
                expert.fc2.weight.shape() != first.fc2.weight.shape())
                return false;
        }
        return true;
    }

    NoisyTopkRouter<T> router;
    std::vector<Expert<T>> experts;

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->child(v, prefix, "router", router);
        this->children(v, prefix, "experts", experts);
    }

};

}  // namespace seemoe::nn
