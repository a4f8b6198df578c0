// seemoe/nn/moe.hpp — the sparse mixture of experts: Expert, TopkRouter, SparseMoE.
//
// Every token picks K of E experts. The router scores experts with a Linear (the logits) and turns
// the K best into gates, in one of three ways (RouterType):
//   NoisyTopK    the seeds' router (Shazeer et al. 2017): in training the logits get noise
//                N(0,1) * softplus(noise(x)) so tokens explore other experts; softmax over the K
//                kept logits, so the gates sum to 1
//   TopKSoftmax  the same without noise (Mixtral)
//   SoftmaxTopK  softmax over all E logits, then the K largest probabilities as they are, not
//                renormalised: the gates sum to at most 1 (Switch, V-MoE)
// In eval no noise is drawn, so outputs are deterministic. Optional shared experts (DeepSeekMoE)
// see every token and add their output with weight 1.
//
// Capacity (V-MoE, Switch): with a capacity factor cf > 0 each expert takes at most
// C = ceil(K * S * cf / E) of a batch's S tokens' assignments; the rest are dropped (the token
// keeps its residual and that share of its output is zero), chosen by the OverflowPolicy
// (ops/moe.hpp: drop_overflow). Training and eval have their own factor; cf <= 0 is dropless, the
// default. Generation (SparseMoEBlock::forward_cached) never drops.
//
// Dispatch is sparse: tokens are grouped by expert, each expert runs ONE GEMM pair over the rows it
// received, its output is scaled by the gates and added back into the token's row. forward() does
// all of that in the fused op moe_experts (ops/moe.hpp: one graph node, experts in parallel);
// forward_composed() builds the same computation from index_select, the expert modules, mul and
// index_add, and is what runs when the experts are not plain ReLU MLPs with one dropout
// probability. forward_with_stats() also returns what the router did (RoutingStats) and, when
// asked, the auxiliary losses: Switch's load balancing and ST-MoE's router z-loss.
//
// Legend: N tokens, C channels, E experts, K experts per token.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "../ops/elementwise.hpp"
#include "../ops/functional.hpp"
#include "../ops/indexing.hpp"
#include "../ops/moe.hpp"
#include "../ops/shape_ops.hpp"
#include "mlp.hpp"

namespace seemoe::nn {

enum class RouterType { NoisyTopK, TopKSoftmax, SoftmaxTopK };

inline const char* router_type_name(RouterType r) {
    switch (r) {
        case RouterType::NoisyTopK: return "noisy_topk";
        case RouterType::TopKSoftmax: return "topk_softmax";
        case RouterType::SoftmaxTopK: return "softmax_topk";
    }
    return "?";
}
// The RouterType called `name`; false if there is none.
inline bool router_type_from_name(std::string_view name, RouterType& out) {
    for (RouterType r : {RouterType::NoisyTopK, RouterType::TopKSoftmax, RouterType::SoftmaxTopK})
        if (name == router_type_name(r)) {
            out = r;
            return true;
        }
    return false;
}
inline const char* overflow_policy_name(OverflowPolicy p) {
    return p == OverflowPolicy::Position ? "position" : "priority";
}
inline bool overflow_policy_from_name(std::string_view name, OverflowPolicy& out) {
    for (OverflowPolicy p : {OverflowPolicy::Position, OverflowPolicy::Priority})
        if (name == overflow_policy_name(p)) {
            out = p;
            return true;
        }
    return false;
}

// How a SparseMoE routes, beyond E, K and the expert size.
struct MoEOptions {
    RouterType router = RouterType::NoisyTopK;
    Index num_shared_experts = 0;       // experts every token uses, output added with weight 1
    double capacity_factor = 0.0;       // training: C = ceil(K * S * cf / E); <= 0: dropless
    double eval_capacity_factor = 0.0;  // the same in eval
    OverflowPolicy overflow = OverflowPolicy::Position;
};

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
    Tensor<T> gates;             // (N, K) differentiable, best first
    std::vector<Index> experts;  // (N, K) expert ids, best first
    Index top_k = 0;
    Tensor<T> logits;            // (N, E) the router's scores before any noise, differentiable
    Tensor<T> probs;             // (N, E) softmax of the scores routed on, if the router computed it
};

// What one MoE layer did in one forward, returned by value with its output (for statistics and
// the routing pictures).
struct RoutingStats {
    Index num_experts = 0, top_k = 0, tokens = 0;  // E, K, N
    std::vector<Index> experts;            // (N, K) each slot's expert, best first; kDroppedSlot if dropped
    std::vector<Index> tokens_per_expert;  // (E) slots each expert received (after capacity)
    Index dropped = 0;                     // slots dropped by capacity
    double router_entropy = -1;            // mean over tokens of the router's entropy (nats); -1: not computed

    RoutingStats() = default;
    RoutingStats(Index E, Index K, Index N)
        : num_experts(E), top_k(K), tokens(N), tokens_per_expert(static_cast<std::size_t>(E), 0) {}

    // Takes the (N, K) expert ids and counts each expert's slots and the dropped ones.
    void count(std::vector<Index> ids) {
        experts = std::move(ids);
        for (Index e : experts) {
            if (e == kDroppedSlot) {
                ++dropped;
            } else {
                ++tokens_per_expert[e];
            }
        }
    }
    // The busiest expert's load over the mean load: 1 when balanced, E when one expert takes all.
    double max_over_mean_load() const {
        Index total = 0, most = 0;
        for (Index c : tokens_per_expert) {
            total += c;
            most = std::max(most, c);
        }
        return total > 0 ? static_cast<double>(most) * static_cast<double>(num_experts) / static_cast<double>(total)
                         : 0.0;
    }
    double drop_fraction() const {
        return tokens * top_k > 0 ? static_cast<double>(dropped) / static_cast<double>(tokens * top_k) : 0.0;
    }
};

// What a forward is asked for beyond the output.
struct MoERequest {
    bool aux_losses = false;  // the load-balancing and z losses (graph nodes; off costs nothing)
    bool entropy = false;     // the router entropy in the statistics
    bool dropless = false;    // ignore the capacity (generation)
};

// A MoE layer's result: the output (..., C), its routing statistics and, when asked, the
// auxiliary losses (both ()).
template <typename T>
struct MoEOutput {
    Tensor<T> out;
    RoutingStats stats;
    Tensor<T> balance_loss, z_loss;
};

// What every MoE layer of one model forward did, in layer order. The caller owns it and passes a
// pointer down (the decoder appends one entry per layer); the modules themselves stay unchanged.
template <typename T>
struct MoETrace {
    bool aux_losses = false;         // ask every layer for its auxiliary losses
    std::vector<RoutingStats> layers;
    Tensor<T> balance_loss, z_loss;  // () summed over the layers, when aux_losses

    void add(MoEOutput<T>& m) {
        layers.push_back(std::move(m.stats));
        if (m.balance_loss.defined())
            balance_loss = balance_loss.defined() ? seemoe::add(balance_loss, m.balance_loss) : m.balance_loss;
        if (m.z_loss.defined()) z_loss = z_loss.defined() ? seemoe::add(z_loss, m.z_loss) : m.z_loss;
    }
};

template <typename T>
class TopkRouter : public Module<T> {
public:
    TopkRouter() = default;
    TopkRouter(Index dim, Index num_experts, Index top_k, Rng& rng, RouterType type = RouterType::NoisyTopK)
        : route(dim, num_experts, rng), top_k(top_k), type(type) {
        SEEMOE_CHECK(top_k >= 1 && top_k <= num_experts, "[TopkRouter] top_k ", top_k,
                     " must be in [1, num_experts = ", num_experts, "]");
        if (type == RouterType::NoisyTopK) noise = Linear<T>(dim, num_experts, rng);
    }

    Routing<T> forward(const Tensor<T>& x, Rng& rng) const {                 // x (N, C)
        Tensor<T> logits = route.forward(x);                                  // (N, E)
        Tensor<T> scores = logits;                                            // (N, E)
        if (type == RouterType::NoisyTopK && this->is_training()) {
            Tensor<T> scale = softplus(noise.forward(x));                     // (N, E)
            Tensor<T> eps = Tensor<T>::randn(logits.shape(), rng);            // (N, E), no grad
            scores = add(logits, mul(eps, scale));                            // (N, E)
        }
        if (type == RouterType::SoftmaxTopK) {
            Tensor<T> probs = softmax(scores, -1);                            // (N, E)
            TopK<T> best = topk(probs, top_k);                                // (N, K)
            return {best.values, std::move(best.indices), top_k, logits, probs};
        }
        TopK<T> best = topk(scores, top_k);                                   // (N, K)
        return {softmax(best.values, -1), std::move(best.indices), top_k, logits, Tensor<T>()};
    }

    Linear<T> route, noise;  // noise only for NoisyTopK
    Index top_k = 2;
    RouterType type = RouterType::NoisyTopK;

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->child(v, prefix, "route", route);
        if (type == RouterType::NoisyTopK) this->child(v, prefix, "noise", noise);
    }
};

// The seeds' name for the router.
template <typename T>
using NoisyTopkRouter = TopkRouter<T>;

template <typename T>
class SparseMoE : public Module<T> {
public:
    SparseMoE() = default;
    SparseMoE(Index dim, Index num_experts, Index top_k, Index hidden, T dropout_p, Rng& rng,
              const MoEOptions& options = MoEOptions())
        : router(dim, num_experts, top_k, rng, options.router), options(options) {
        SEEMOE_CHECK(options.num_shared_experts >= 0, "[SparseMoE] num_shared_experts ", options.num_shared_experts,
                     " must be >= 0");
        for (Index e = 0; e < num_experts; ++e) experts.emplace_back(dim, hidden, dropout_p, rng);
        for (Index e = 0; e < options.num_shared_experts; ++e) shared_experts.emplace_back(dim, hidden, dropout_p, rng);
    }

    // The layer's output, what its router did and, when asked, the auxiliary losses, returned as
    // a value: the module is not written to, so several threads may call forward at once.
    MoEOutput<T> forward_with_stats(const Tensor<T>& x, Rng& rng, const MoERequest& request = MoERequest()) const {
        if (!fusable()) return forward_composed_with_stats(x, rng, request);
        const Index C = x.size(-1), N = x.numel() / C;
        Tensor<T> tokens = reshape(x, {N, C});                                // (N, C)
        Routing<T> routing = router.forward(tokens, rng);                     // gates (N, K)
        MoEOutput<T> result = start(routing, N, request);
        std::vector<Index> kept = apply_capacity(routing, N, request);        // (N, K)
        const Dropout<T>& drop = experts.front().drop;
        const std::vector<ExpertWeightRefs<T>> routed = refs(experts);        // E references, no copies
        Tensor<T> out = moe_experts(tokens, routing.gates, kept, ExpertWeightsView<T>(routed), drop.p,
                                    drop.is_training(), rng);                  // (N, C)
        if (!shared_experts.empty()) {
            // Every token to every shared expert with gate 1: the same fused op.
            const Index S = num_shared_experts();
            std::vector<Index> all(static_cast<std::size_t>(N * S));
            for (Index s = 0; s < N * S; ++s) all[s] = s % S;
            const Dropout<T>& shared_drop = shared_experts.front().drop;
            const std::vector<ExpertWeightRefs<T>> shared = refs(shared_experts);
            out = add(out, moe_experts(tokens, Tensor<T>::ones({N, S}), all, ExpertWeightsView<T>(shared),
                                       shared_drop.p, shared_drop.is_training(), rng));  // (N, C)
        }
        result.out = reshape(out, x.shape());                                 // (..., C)
        result.stats.count(std::move(kept));
        return result;
    }

    Tensor<T> forward(const Tensor<T>& x, Rng& rng) const {                  // x (..., C)
        return forward_with_stats(x, rng).out;                                // (..., C)
    }

    // The same computation as forward(), one graph node per op: per expert index_select, the
    // expert module, the gate product and index_add. The reference the fused op is tested
    // against, and the path for experts the fused op does not cover.
    MoEOutput<T> forward_composed_with_stats(const Tensor<T>& x, Rng& rng,
                                             const MoERequest& request = MoERequest()) const {  // x (..., C)
        const Index C = x.size(-1), N = x.numel() / C, E = num_experts();
        Tensor<T> tokens = reshape(x, {N, C});                                // (N, C)
        Routing<T> routing = router.forward(tokens, rng);                     // gates (N, K)
        const Index K = routing.top_k;
        MoEOutput<T> result = start(routing, N, request);
        std::vector<Index> kept = apply_capacity(routing, N, request);        // (N, K)

        // Group (token, slot) pairs by expert: rows[e] are token ids, slots[e] index gates (N*K).
        std::vector<std::vector<Index>> rows(E), slots(E);
        for (Index n = 0; n < N; ++n)
            for (Index k = 0; k < K; ++k) {
                const Index e = kept[n * K + k];
                if (e == kDroppedSlot) continue;
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
        for (const auto& shared : shared_experts) out = add(out, shared.forward(tokens, rng));  // (N, C)
        result.out = reshape(out, x.shape());                                 // (..., C)
        result.stats.count(std::move(kept));
        return result;
    }

    Tensor<T> forward_composed(const Tensor<T>& x, Rng& rng) const {         // x (..., C)
        return forward_composed_with_stats(x, rng).out;                       // (..., C)
    }

    Index num_experts() const { return static_cast<Index>(experts.size()); }
    Index num_shared_experts() const { return static_cast<Index>(shared_experts.size()); }

    // Whether moe_experts computes exactly what the expert modules would: ReLU MLPs of one
    // hidden width, one dropout probability and one train/eval mode (the shared experts alike
    // among themselves).
    bool fusable() const { return uniform(experts) && (shared_experts.empty() || uniform(shared_experts)); }

    // Sparse upcycling (Komatsuzaki et al.; MoE-LLaVA's stage 3): every expert, shared ones too,
    // becomes a copy of the dense FFN `dense` (a ReLU MLP of this layer's sizes), plus
    // N(0, noise_std^2) noise when noise_std > 0. The router keeps its own weights. With no noise and
    // gates that sum to 1 (NoisyTopK, TopKSoftmax) the layer then computes exactly the dense FFN.
    void upcycle_from(const MLP<T>& dense, double noise_std, Rng& rng) {
        SEEMOE_CHECK(!experts.empty() && dense.act == Activation::ReLU &&
                         dense.fc1.weight.shape() == experts.front().fc1.weight.shape() &&
                         dense.fc2.weight.shape() == experts.front().fc2.weight.shape() &&
                         dense.fc1.bias.defined() == experts.front().fc1.bias.defined() &&
                         dense.fc2.bias.defined() == experts.front().fc2.bias.defined(),
                     "[SparseMoE] upcycling needs a ReLU MLP of the experts' sizes, got fc1 ",
                     shape_str(dense.fc1.weight.shape()), " for experts of fc1 ",
                     experts.empty() ? std::string("(none)") : shape_str(experts.front().fc1.weight.shape()));
        auto copy = [&](const Tensor<T>& from) {
            if (!from.defined()) return Tensor<T>();
            Tensor<T> t = from.clone();
            if (noise_std > 0) {
                const Tensor<T> n = Tensor<T>::randn(t.shape(), rng, T(0), static_cast<T>(noise_std));
                VectorMap<T>(t.data(), t.numel()) += ConstVectorMap<T>(n.data(), n.numel());
            }
            return detail::parameter(t);
        };
        for (auto* list : {&experts, &shared_experts})
            for (Expert<T>& e : *list) {
                e.fc1.weight = copy(dense.fc1.weight);
                e.fc1.bias = copy(dense.fc1.bias);
                e.fc2.weight = copy(dense.fc2.weight);
                e.fc2.bias = copy(dense.fc2.bias);
            }
    }

    TopkRouter<T> router;
    std::vector<Expert<T>> experts;
    std::vector<Expert<T>> shared_experts;
    MoEOptions options;

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->child(v, prefix, "router", router);
        this->children(v, prefix, "experts", experts);
        if (!shared_experts.empty()) this->children(v, prefix, "shared_experts", shared_experts);
    }

private:
    static bool uniform(const std::vector<Expert<T>>& list) {
        if (list.empty()) return false;
        const Expert<T>& first = list.front();
        for (const auto& expert : list) {
            if (expert.act != Activation::ReLU || expert.drop.p != first.drop.p ||
                expert.drop.is_training() != first.drop.is_training() ||
                expert.fc1.weight.shape() != first.fc1.weight.shape() ||
                expert.fc2.weight.shape() != first.fc2.weight.shape())
                return false;
        }
        return true;
    }

    // The experts' tensors lent to the op: references only, no Tensor copied.
    static std::vector<ExpertWeightRefs<T>> refs(const std::vector<Expert<T>>& list) {
        std::vector<ExpertWeightRefs<T>> r(list.size());
        for (std::size_t e = 0; e < list.size(); ++e)
            r[e] = {&list[e].fc1.weight, &list[e].fc1.bias, &list[e].fc2.weight, &list[e].fc2.bias};
        return r;
    }

    // The statistics' frame, the router entropy and the auxiliary losses, all from the routing
    // before any capacity drop.
    MoEOutput<T> start(const Routing<T>& routing, Index N, const MoERequest& request) const {
        const Index E = num_experts(), K = routing.top_k;
        MoEOutput<T> result{Tensor<T>(), RoutingStats(E, K, N), Tensor<T>(), Tensor<T>()};
        if (request.entropy && N > 0) {
            // Of softmax(logits) per token, no graph: -sum_e p log p = lse - sum_e p l.
            const T* l = routing.logits.data();
            double total = 0;
            for (Index n = 0; n < N; ++n) {
                const T* row = l + n * E;
                const double m = static_cast<double>(*std::max_element(row, row + E));
                double z = 0, pl = 0;
                for (Index e = 0; e < E; ++e) {
                    const double w = std::exp(static_cast<double>(row[e]) - m);
                    z += w;
                    pl += w * (static_cast<double>(row[e]) - m);
                }
                total += std::log(z) - pl / z;
            }
            result.stats.router_entropy = total / static_cast<double>(N);
        }
        if (request.aux_losses && N > 0) {
            std::vector<Index> first(static_cast<std::size_t>(N));  // (N) each token's first choice
            for (Index n = 0; n < N; ++n) first[n] = routing.experts[n * K];
            const Tensor<T> probs = routing.probs.defined() ? routing.probs : softmax(routing.logits, -1);  // (N, E)
            result.balance_loss = load_balancing_loss(probs, first);  // ()
            result.z_loss = router_z_loss(routing.logits);            // ()
        }
        return result;
    }

    // The routing's expert ids with the slots a full expert turned away set to kDroppedSlot.
    std::vector<Index> apply_capacity(Routing<T>& routing, Index N, const MoERequest& request) const {
        const double cf = this->is_training() ? options.capacity_factor : options.eval_capacity_factor;
        if (request.dropless || cf <= 0) return std::move(routing.experts);
        const Index capacity = expert_capacity(N, routing.top_k, num_experts(), cf);
        return drop_overflow(routing.experts, routing.gates.data(), N, routing.top_k, num_experts(), capacity,
                             options.overflow);
    }
};

}  // namespace seemoe::nn
