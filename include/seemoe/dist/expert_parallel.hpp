// seemoe/dist/expert_parallel.hpp — expert parallelism (GShard / DeepSpeed-MoE) for one SparseMoE layer.
//
// The E experts of a layer are split over the R ranks of a communicator: rank r runs experts
// [r*E/R, (r+1)*E/R). Each rank routes its own tokens, then
//   1. dispatch: the (token, slot) rows, grouped by expert (so by owning rank), go to their
//      experts' ranks in ONE all-to-all-v (all_to_all_rows);
//   2. the owner runs each of its experts over every row it received (the fused moe_experts op,
//      one GEMM pair per expert);
//   3. combine: the results go back in a second all-to-all-v and are added into the tokens' rows
//      weighted by their gates.
// Backward mirrors it: all_to_all_rows' backward sends each gradient row back where its row came
// from. A small all-to-all of per-expert row counts precedes the exchange.
//
// Convention: every rank holds the whole module (router and all E experts), but computes only its
// own experts. An expert's gradient is therefore non-zero only on its owner, so the data-parallel
// average (GradientReducer) of all parameters gives every rank the right gradient for every
// parameter, and all ranks keep identical replicas: checkpoints, evaluation and a later single
// process need no gathering. (This replicates the expert weights; it splits the expert compute
// and the activations, not the weights' memory.) Every rank must call this for every layer in
// the same order, and must backward through it: the exchanges are collective.
#pragma once

#include <algorithm>
#include <numeric>
#include <vector>

#include "../nn/moe.hpp"
#include "../ops/indexing.hpp"
#include "../ops/moe.hpp"
#include "communicator.hpp"

namespace seemoe::dist {

// rows (M, C) -> (sum of recv_rows, C): rank r sends its rows in blocks, send_rows[q] of them to
// rank q (in rank order), and receives recv_rows[q] rows from each rank q (in rank order).
// Differentiable: backward sends each row's gradient back to the rank the row came from.
template <typename T>
Tensor<T> all_to_all_rows(const Tensor<T>& x, const std::vector<Index>& send_rows, const std::vector<Index>& recv_rows,
                          const Communicator& comm) {
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
    Tensor<T> out = seemoe::detail::make_op_result<T>({received, C}, "all_to_all_rows", {&x});  // (received, C)
    comm.all_to_all_v(x.data(), send_counts, out.data(), recv_counts);
    auto x_node = seemoe::detail::grad_target(x);
    const Communicator* c = &comm;
    seemoe::detail::set_backward(out, [x_node, send_counts, recv_counts, c, sent, C](Node<T>& self) {
        std::vector<T> back(static_cast<std::size_t>(sent * C));  // (sent, C)
        c->all_to_all_v(self.grad->data(), recv_counts, back.data(), send_counts);
        if (!x_node) return;
        VectorMap<T>(x_node->grad_data(), sent * C) += ConstVectorMap<T>(back.data(), sent * C);
    });
    return out;
}

// Rows each local expert of this rank received in the last call, for checks and statistics.
struct ExpertParallelStats {
    std::vector<Index> rows_per_local_expert;
};

// SparseMoE::forward with the experts split over `comm` (see the top of this file). x (..., C).
template <typename T>
Tensor<T> sparse_moe_expert_parallel(const nn::SparseMoE<T>& moe, const Tensor<T>& x, Rng& rng,
                                     const Communicator& comm, ExpertParallelStats* stats = nullptr) {
    const Index C = x.size(-1), N = x.numel() / C, E = moe.num_experts(), R = comm.size();
    SEEMOE_CHECK(E % R == 0, "[expert parallel] ", E, " experts cannot be split evenly over ", R, " ranks");
    SEEMOE_CHECK(moe.fusable(), "[expert parallel] needs ReLU experts of one width and one dropout probability");
    const Index El = E / R, first = comm.rank() * El;
    Tensor<T> tokens = reshape(x, {N, C});                               // (N, C)
    nn::Routing<T> routing = moe.router.forward(tokens, rng);           // gates (N, K)
    const Index K = routing.top_k, slots = N * K;

    // The slots by expert (token order within an expert): expert e's rows go to rank e / El.
    std::vector<Index> order(static_cast<std::size_t>(slots));
    std::iota(order.begin(), order.end(), Index(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](Index a, Index b) { return routing.experts[a] < routing.experts[b]; });
    std::vector<Index> token_of(order.size()), per_expert(static_cast<std::size_t>(E), 0);
    for (std::size_t i = 0; i < order.size(); ++i) token_of[i] = order[i] / K;
    for (Index e : routing.experts) ++per_expert[e];

    // How many rows of each of my experts every rank sends me: an all-to-all of El counts each.
    std::vector<Index> from(static_cast<std::size_t>(E));  // (R, El): rows of local expert l from rank q
    comm.all_to_all_v(per_expert.data(), std::vector<Index>(R, El), from.data(), std::vector<Index>(R, El));
    std::vector<Index> send_rows(R, 0), recv_rows(R, 0);
    for (Index e = 0; e < E; ++e) send_rows[e / El] += per_expert[e];
    for (Index i = 0; i < E; ++i) recv_rows[i / El] += from[i];
    std::vector<Index> local_expert;  // of each received row, in arrival order
    for (Index q = 0; q < R; ++q)
        for (Index l = 0; l < El; ++l) local_expert.insert(local_expert.end(), from[q * El + l], l);
    if (stats) {
        stats->rows_per_local_expert.assign(static_cast<std::size_t>(El), 0);
        for (Index l : local_expert) ++stats->rows_per_local_expert[l];
    }

    // dispatch -> experts -> combine
    Tensor<T> x_send = index_select(tokens, 0, token_of);                 // (N*K, C) by expert
    Tensor<T> x_recv = all_to_all_rows(x_send, send_rows, recv_rows, comm);  // (M, C) my experts' rows
    const Index M = x_recv.size(0);
    Tensor<T> y_recv;                                                     // (M, C)
    if (M > 0) {
        std::vector<Tensor<T>> w1, b1, w2, b2;
        for (Index l = 0; l < El; ++l) {
            const nn::Expert<T>& ex = moe.experts[first + l];
            w1.push_back(ex.fc1.weight);
            b1.push_back(ex.fc1.bias);
            w2.push_back(ex.fc2.weight);
            b2.push_back(ex.fc2.bias);
        }
        const nn::Dropout<T>& drop = moe.experts.front().drop;
        y_recv = moe_experts(x_recv, Tensor<T>::ones({M, 1}), local_expert, w1, b1, w2, b2, drop.p,
                             drop.is_training(), rng);                   // (M, C), gate 1
    } else {
        y_recv = mul(x_recv, T(0));  // (0, C), still a node: backward must reach the exchange
    }
    Tensor<T> y_back = all_to_all_rows(y_recv, recv_rows, send_rows, comm);  // (N*K, C) by expert
    Tensor<T> gate = index_select(reshape(routing.gates, {slots}), 0, order);  // (N*K)
    Tensor<T> weighted = mul(y_back, reshape(gate, {slots, 1}));          // (N*K, C)
    Tensor<T> out = index_add(Tensor<T>::zeros({N, C}), 0, token_of, weighted);  // (N, C)
    return reshape(out, x.shape());                                       // (..., C)
}

}  // namespace seemoe::dist
