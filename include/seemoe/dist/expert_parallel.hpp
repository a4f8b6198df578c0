// seemoe/dist/expert_parallel.hpp — expert parallelism (GShard / DeepSpeed-MoE) for SparseMoE layers.
//
// The E experts of every MoE layer are split over the R ranks of a communicator: rank r owns
// experts [r*E/R, (r+1)*E/R). Each rank routes its own tokens (router, capacity, shared experts and
// auxiliary losses stay local, as in data parallel), then per layer
//   1. dispatch: the kept (token, slot) rows, grouped by expert (so by owning rank), go to their
//      experts' ranks in ONE all-to-all-v (all_to_all_rows), after a small all-to-all of the
//      per-expert row counts;
//   2. the owner runs each of its experts over every row it received (the fused moe_experts op
//      over a view of its own experts' weights: one GEMM pair per expert, nothing copied);
//   3. combine: the results go back in a second all-to-all-v and are added into the tokens' rows
//      weighted by their gates.
// Backward mirrors it: all_to_all_rows' backward sends each gradient row back where its row came
// from, so an owner's expert gradient is complete, every rank's tokens included, after backward.
//
// ExpertParallel installs this into the layers (SparseMoE::dispatcher, the MPI-free seam of
// nn/moe.hpp) and does the rest of the bookkeeping a trainer needs:
//   * which parameters are experts: those are NOT averaged over the ranks (the others are, by
//     GradientReducer over non_expert_parameters()); with the data-parallel loss scale (each
//     rank's mean loss times its share of the targets times R) an owner's expert gradient is R
//     times the global batch's, so scale_expert_gradients(1/R) follows backward;
//   * clip_grad_norm: the global norm adds the shared part (identical on every rank) and the
//     owned experts' part summed over the ranks;
//   * gather(): each expert's weights (and AdamW moments and step) broadcast from its owner, so
//     every rank, rank 0 among them, holds the whole model again: for evaluation and for
//     checkpoints, which are then the single-process ones.
//
// Convention: every rank keeps all E experts' tensors (so checkpoints and a later single process
// need no other layout) but only computes, and only updates, its own; the others are stale
// between gather() calls. The split saves the expert compute, gradients and activations, not the
// weights' memory. Every rank must run every layer in the same order, and backward through it
// (or not) alike: the exchanges are collective. A layer with a dispatcher needs the other ranks to
// run it too: detach() (or a DetachedExperts guard) lets one rank evaluate alone.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <numeric>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "../nn/moe.hpp"
#include "../ops/indexing.hpp"
#include "../ops/moe.hpp"
#include "communicator.hpp"
#include "data_parallel.hpp"

namespace seemoe::dist {

// rows (M, C) -> (sum of recv_rows, C): rank r sends its rows in blocks, send_rows[q] of them to
// rank q (in rank order), and receives recv_rows[q] rows from each rank q (in rank order).
// Differentiable: backward sends each row's gradient back to the rank the row came from. With
// `stats`, both directions add their time and bytes to it (it must outlive the graph).
template <typename T>
Tensor<T> all_to_all_rows(const Tensor<T>& x, const std::vector<Index>& send_rows, const std::vector<Index>& recv_rows,
                          const Communicator& comm, CommStats* stats = nullptr) {
    SEEMOE_CHECK(x.dim() == 2, "[all_to_all_rows] rows must be (M, C), got ", shape_str(x.shape()));
    const Index C = x.size(1);
    Index sent = 0, received = 0;
    std::vector<Index> send_counts(send_rows.size()), recv_counts(recv_rows.size());
    for (std::size_t q = 0; q < send_rows.size(); ++q) {
        sent += send_rows[q];
        send_counts[q] = send_rows[q] * C;
    }
    for (std::size_t q = 0; q < recv_rows.size(); ++q) {
        received += recv_rows[q];
        recv_counts[q] = recv_rows[q] * C;
    }
    SEEMOE_CHECK(sent == x.size(0), "[all_to_all_rows] send_rows add up to ", sent, " but x has ", x.size(0), " rows");
    // What one call costs: its time, the bytes handed to MPI and those that leave this rank.
    const int me = comm.rank();
    auto exchange = [me](const Communicator& c, const T* send, const std::vector<Index>& sc, T* recv,
                         const std::vector<Index>& rc, CommStats* s) {
        const auto start = std::chrono::steady_clock::now();
        c.all_to_all_v(send, sc, recv, rc);
        if (!s) return;
        s->seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        for (std::size_t q = 0; q < sc.size(); ++q) {
            const std::int64_t bytes = static_cast<std::int64_t>(sc[q] * static_cast<Index>(sizeof(T)));
            s->bytes += bytes;
            if (static_cast<int>(q) != me) s->remote_bytes += bytes;
        }
        ++s->calls;
    };
    Tensor<T> out = seemoe::detail::make_op_result<T>({received, C}, "all_to_all_rows", {&x});  // (received, C)
    exchange(comm, x.data(), send_counts, out.data(), recv_counts, stats);
    auto x_node = seemoe::detail::grad_target(x);
    const Communicator* c = &comm;
    seemoe::detail::set_backward(out, [x_node, send_counts, recv_counts, c, sent, C, stats, exchange](Node<T>& self) {
        std::vector<T> back(static_cast<std::size_t>(sent * C));  // (sent, C)
        exchange(*c, self.grad_data(), recv_counts, back.data(), send_counts, stats);
        if (!x_node) return;
        VectorMap<T>(x_node->grad_data(), sent * C) += ConstVectorMap<T>(back.data(), sent * C);
    });
    return out;
}

// The dispatcher ExpertParallel installs in each layer: steps 1-3 at the top of this file.
template <typename T>
class ExpertParallelDispatcher : public nn::ExpertDispatcher<T> {
public:
    // `rows` (may be null): where run() writes how many rows each of this rank's experts received.
    ExpertParallelDispatcher(const Communicator& comm, Index experts_per_rank, CommStats* stats,
                             std::vector<Index>* rows)
        : comm_(&comm), per_rank_(experts_per_rank), stats_(stats), rows_(rows) {}

    Tensor<T> run(const nn::SparseMoE<T>& moe, const Tensor<T>& tokens, const Tensor<T>& gates,
                  const std::vector<Index>& experts, Rng& rng) const override {
        const Index N = tokens.size(0), C = tokens.size(1), K = gates.size(1), E = moe.num_experts();
        const Index R = comm_->size(), El = per_rank_, first = comm_->rank() * El;
        SEEMOE_CHECK(E == El * R, "[expert parallel] the layer has ", E, " experts, not ", El, " on each of ", R,
                     " ranks");
        // The kept slots by expert (token order within an expert): expert e's rows go to rank e / El.
        std::vector<Index> order;  // (S) slot ids n*K + k
        order.reserve(static_cast<std::size_t>(N * K));
        for (Index s = 0; s < N * K; ++s)
            if (experts[s] != kDroppedSlot) order.push_back(s);
        std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return experts[a] < experts[b]; });
        std::vector<Index> token_of(order.size()), per_expert(static_cast<std::size_t>(E), 0);
        for (std::size_t i = 0; i < order.size(); ++i) {
            token_of[i] = order[i] / K;
            ++per_expert[experts[order[i]]];
        }

        // How many rows of each of my experts every rank sends me: an all-to-all of El counts each.
        std::vector<Index> from(static_cast<std::size_t>(E));  // (R, El): rows of local expert l from rank q
        comm_->all_to_all_v(per_expert.data(), std::vector<Index>(R, El), from.data(), std::vector<Index>(R, El));
        if (stats_) stats_->bytes += static_cast<std::int64_t>(E * static_cast<Index>(sizeof(Index)));
        std::vector<Index> send_rows(R, 0), recv_rows(R, 0);
        for (Index e = 0; e < E; ++e) send_rows[e / El] += per_expert[e];
        for (Index i = 0; i < E; ++i) recv_rows[i / El] += from[i];
        std::vector<Index> local_expert;  // (M) of each received row, in arrival order
        for (Index q = 0; q < R; ++q)
            for (Index l = 0; l < El; ++l) local_expert.insert(local_expert.end(), from[q * El + l], l);
        if (rows_) {
            rows_->assign(static_cast<std::size_t>(El), 0);
            for (Index l : local_expert) ++(*rows_)[l];
        }

        // dispatch -> my experts -> combine
        Tensor<T> x_send = index_select(tokens, 0, token_of);                            // (S, C) by expert
        Tensor<T> x_recv = all_to_all_rows(x_send, send_rows, recv_rows, *comm_, stats_);  // (M, C) my experts' rows
        const Index M = x_recv.size(0), S = static_cast<Index>(order.size());
        Tensor<T> y_recv;                                                                // (M, C)
        if (M > 0) {
            const std::vector<ExpertWeightRefs<T>> mine = nn::SparseMoE<T>::refs(
                moe.experts, static_cast<std::size_t>(first), static_cast<std::size_t>(El));  // references only
            const nn::Dropout<T>& drop = moe.experts.front().drop;
            y_recv = moe_experts(x_recv, Tensor<T>::ones({M, 1}), local_expert, ExpertWeightsView<T>(mine), drop.p,
                                 drop.is_training(), rng);                               // (M, C), gate 1
        } else {
            y_recv = mul(x_recv, T(0));  // (0, C), still a node: backward must reach the exchange
        }
        Tensor<T> y_back = all_to_all_rows(y_recv, recv_rows, send_rows, *comm_, stats_);  // (S, C) by expert
        Tensor<T> gate = index_select(reshape(gates, {N * K}), 0, order);                 // (S)
        Tensor<T> weighted = mul(y_back, reshape(gate, {S, 1}));                          // (S, C)
        return index_add(Tensor<T>::zeros({N, C}), 0, token_of, weighted);                // (N, C)
    }

private:
    const Communicator* comm_;
    Index per_rank_;
    CommStats* stats_;
    std::vector<Index>* rows_;
};

template <typename T>
class ExpertParallel {
public:
    // Splits the experts of every layer over `comm`; attach() installs the exchange. The layers
    // and the communicator must outlive this object (and this object the graphs built while
    // attached).
    ExpertParallel(std::vector<nn::SparseMoE<T>*> layers, const Communicator& comm)
        : layers_(std::move(layers)), comm_(&comm), rows_(layers_.size()) {
        SEEMOE_CHECK(!layers_.empty(), "[expert parallel] no MoE layer to split");
        const Index E = layers_.front()->num_experts(), R = comm.size();
        for (const nn::SparseMoE<T>* layer : layers_) {
            SEEMOE_CHECK(layer->num_experts() == E, "[expert parallel] the MoE layers have different numbers of experts (",
                         E, " and ", layer->num_experts(), ")");
            SEEMOE_CHECK(layer->fusable(), "[expert parallel] needs ReLU experts of one width and one dropout probability");
        }
        SEEMOE_CHECK(E % R == 0, "[expert parallel] ", E, " experts per layer cannot be split evenly over ", R, " ranks");
        per_rank_ = E / R;
        for (const nn::SparseMoE<T>* layer : layers_)
            for (Index e = 0; e < E; ++e)
                for (const Tensor<T>* t : expert_tensors(layer->experts[static_cast<std::size_t>(e)]))
                    (owner(e) == comm.rank() ? owned_ : others_).insert(t->node().get());
    }
    ~ExpertParallel() { detach(); }
    ExpertParallel(const ExpertParallel&) = delete;
    ExpertParallel& operator=(const ExpertParallel&) = delete;

    void attach() {
        for (std::size_t i = 0; i < layers_.size(); ++i)
            layers_[i]->dispatcher = std::make_shared<ExpertParallelDispatcher<T>>(*comm_, per_rank_, &stats_, &rows_[i]);
    }
    void detach() {
        for (nn::SparseMoE<T>* layer : layers_) layer->dispatcher.reset();
    }
    bool attached() const { return layers_.front()->dispatcher != nullptr; }

    Index experts_per_rank() const { return per_rank_; }
    int owner(Index expert) const { return static_cast<int>(expert / per_rank_); }
    // A routed expert's tensor (of any rank), or one of this rank's own.
    bool is_expert(const Tensor<T>& p) const { return owns(p) || others_.count(p.node().get()) > 0; }
    bool owns(const Tensor<T>& p) const { return owned_.count(p.node().get()) > 0; }

    // `params` without the routed experts' tensors: what the gradient average covers.
    std::vector<Tensor<T>> non_expert_parameters(const std::vector<Tensor<T>>& params) const {
        std::vector<Tensor<T>> out;
        for (const Tensor<T>& p : params)
            if (!is_expert(p)) out.push_back(p);
        return out;
    }

    // Multiplies the gradients of this rank's experts by `scale` (1/R after a data-parallel
    // scaled loss: see the top of this file).
    void scale_expert_gradients(T scale) {
        for (const Tensor<T>& p : owned_tensors())
            if (p.has_grad()) VectorMap<T>(const_cast<Tensor<T>&>(p).grad_data(), p.numel()) *= scale;
    }

    // clip_grad_norm over the whole model: the norm of the shared gradients (the same on every
    // rank) and of every rank's own experts' (summed over the ranks). Collective. Returns the norm
    // before clipping, the same on every rank.
    double clip_grad_norm(const std::vector<Tensor<T>>& params, double max_norm) {
        SEEMOE_CHECK(max_norm >= 0, "[clip_grad_norm] max_norm must be >= 0, got ", max_norm);
        double shared = 0, mine = 0;
        for (const Tensor<T>& p : params) {
            const T* g = p.grad_data_if_any();
            if (!g) continue;
            const double sq = ConstVectorMap<T>(g, p.numel()).template cast<double>().squaredNorm();
            (owns(p) ? mine : shared) += sq;
        }
        const double total = std::sqrt(shared + comm_->all_reduce_sum(mine));
        const double coef = max_norm / (total + 1e-6);
        if (!(coef >= 1.0))  // a nan norm poisons the gradients, as clip_grad_norm does
            for (const Tensor<T>& p : params)
                if (p.has_grad()) VectorMap<T>(const_cast<Tensor<T>&>(p).grad_data(), p.numel()) *= static_cast<T>(coef);
        return total;
    }

    // Every expert's weights from its owner to every rank; with an optimiser (Adam, AdamW) whose
    // parameters include them, their moments and step counts too. Collective. Afterwards every
    // rank holds the whole model (and optimiser state) of a single process.
    template <typename Optimizer = void>
    void gather(Optimizer* optimizer = nullptr) {
        std::unordered_map<const Node<T>*, std::size_t> slot;  // parameter -> optimiser state index
        if constexpr (!std::is_void_v<Optimizer>) {
            if (optimizer)
                for (std::size_t i = 0; i < optimizer->params().size(); ++i) slot[optimizer->params()[i].node().get()] = i;
        }
        for (nn::SparseMoE<T>* layer : layers_)
            for (Index e = 0; e < layer->num_experts(); ++e)
                for (const Tensor<T>* t : expert_tensors(layer->experts[static_cast<std::size_t>(e)])) {
                    comm_->broadcast(const_cast<Tensor<T>*>(t)->data(), t->numel(), owner(e));
                    if constexpr (!std::is_void_v<Optimizer>) {
                        const auto found = slot.find(t->node().get());
                        if (!optimizer || found == slot.end()) continue;
                        auto& state = optimizer->state()[found->second];
                        comm_->broadcast(state.exp_avg.data(), state.exp_avg.numel(), owner(e));
                        comm_->broadcast(state.exp_avg_sq.data(), state.exp_avg_sq.numel(), owner(e));
                        std::int64_t step = state.step;
                        comm_->broadcast(&step, 1, owner(e));
                        state.step = step;
                    }
                }
    }

    // The all-to-all exchanges so far: time, bytes handed to MPI (rows and counts), bytes sent to
    // other ranks, calls.
    const CommStats& stats() const { return stats_; }
    CommStats& stats() { return stats_; }
    // Rows each of this rank's experts received in layer i's last forward.
    const std::vector<Index>& rows_per_local_expert(std::size_t layer) const { return rows_[layer]; }

private:
    static std::vector<const Tensor<T>*> expert_tensors(const nn::Expert<T>& e) {
        std::vector<const Tensor<T>*> out;
        for (const Tensor<T>* t : {&e.fc1.weight, &e.fc1.bias, &e.fc2.weight, &e.fc2.bias})
            if (t->defined()) out.push_back(t);
        return out;
    }
    std::vector<Tensor<T>> owned_tensors() const {
        std::vector<Tensor<T>> out;
        const Index first = comm_->rank() * per_rank_;
        for (const nn::SparseMoE<T>* layer : layers_)
            for (Index e = first; e < first + per_rank_; ++e)
                for (const Tensor<T>* t : expert_tensors(layer->experts[static_cast<std::size_t>(e)])) out.push_back(*t);
        return out;
    }

    std::vector<nn::SparseMoE<T>*> layers_;
    const Communicator* comm_;
    Index per_rank_ = 1;
    std::unordered_set<const Node<T>*> owned_, others_;
    CommStats stats_;
    std::vector<std::vector<Index>> rows_;
};

// Runs the layers locally (all their experts, no exchange) while it lives, e.g. for one rank to
// evaluate alone after gather(); the exchange is back afterwards if it was on.
template <typename T>
class DetachedExperts {
public:
    explicit DetachedExperts(ExpertParallel<T>* ep) : ep_(ep && ep->attached() ? ep : nullptr) {
        if (ep_) ep_->detach();
    }
    ~DetachedExperts() {
        if (ep_) ep_->attach();
    }
    DetachedExperts(const DetachedExperts&) = delete;
    DetachedExperts& operator=(const DetachedExperts&) = delete;

private:
    ExpertParallel<T>* ep_;
};

}  // namespace seemoe::dist
