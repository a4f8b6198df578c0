// tests/test_moe.cpp — the mixture of experts beyond the fused op's equivalence tests (those are in
// test_perf_ops.cpp): the expert-weight view, dropped slots, routing statistics returned by value,
// and forward called from several threads at once.
#include <seemoe/seemoe.hpp>

#include <catch2/catch.hpp>
#include <thread>
#include <vector>

#include "gradcheck.hpp"

using namespace seemoe;
using seemoe::testing::grad_input;
using seemoe::testing::gradcheck;

namespace {

struct ThreadCountGuard {
    int saved = num_threads();
    ~ThreadCountGuard() { set_num_threads(saved); }
};

struct Experts {
    std::vector<Tensord> w1, b1, w2, b2;
    std::vector<ExpertWeightRefs<double>> refs() const {
        std::vector<ExpertWeightRefs<double>> r;
        for (std::size_t e = 0; e < w1.size(); ++e) r.push_back({&w1[e], &b1[e], &w2[e], &b2[e]});
        return r;
    }
};

Experts make_experts(Index E, Index C, Index Hd, Rng& rng) {
    Experts s;
    for (Index e = 0; e < E; ++e) {
        s.w1.push_back(grad_input({Hd, C}, rng, 0.5));
        s.b1.push_back(grad_input({Hd}, rng, 0.5));
        s.w2.push_back(grad_input({C, Hd}, rng, 0.5));
        s.b2.push_back(grad_input({C}, rng, 0.5));
    }
    return s;
}

// Every expert on the token it was given, weighted by the gate: the reference, one token at a time.
std::vector<double> reference_moe(const Tensord& x, const Tensord& gates, const std::vector<Index>& experts,
                                  const Experts& w) {
    NoGradGuard no_grad;
    const Index N = x.size(0), C = x.size(1), K = gates.size(1);
    std::vector<double> out(static_cast<std::size_t>(N * C), 0.0);
    for (Index n = 0; n < N; ++n)
        for (Index k = 0; k < K; ++k) {
            const Index e = experts[n * K + k];
            if (e == kDroppedSlot) continue;
            Tensord row = slice(x, 0, n, n + 1);                                        // (1, C)
            Tensord y = linear(relu(linear(row, w.w1[e], w.b1[e])), w.w2[e], w.b2[e]);  // (1, C)
            for (Index c = 0; c < C; ++c) out[n * C + c] += gates.at({n, k}) * y.data()[c];
        }
    return out;
}

}  // namespace

TEST_CASE("moe_experts takes a view of the experts' weights; dropped slots contribute nothing", "[ops][moe]") {
    ThreadCountGuard guard;
    Rng rng(41);
    const Index C = 5, Hd = 7, E = 4, K = 2;
    const Experts w = make_experts(E, C, Hd, rng);
    const auto refs = w.refs();
    // Slots 1, 4 and 9 dropped; token 2 keeps none of its two.
    const std::vector<Index> experts = {0, kDroppedSlot, 1, 2, kDroppedSlot, kDroppedSlot, 3, 2, 1, kDroppedSlot};
    for (Index N : {Index(5)}) {
        Tensord x = grad_input({N, C}, rng);
        Tensord gates = grad_input({N, K}, rng);
        for (int threads : {1, 2}) {
            set_num_threads(threads);
            // Graph path (x asks for a gradient) and the inference path (no graph, N <= 8).
            const std::vector<double> expected = reference_moe(x, gates, experts, w);
            Rng r(1);
            const Tensord with_graph = moe_experts(x, gates, experts, ExpertWeightsView<double>(refs), 0.0, true, r);
            REQUIRE(with_graph.requires_grad());
            std::vector<double> inference;
            {
                NoGradGuard no_grad;
                inference = moe_experts(x, gates, experts, ExpertWeightsView<double>(refs), 0.0, false, r).to_vector();
            }
            for (std::size_t i = 0; i < expected.size(); ++i) {
                CHECK(with_graph.to_vector()[i] == Approx(expected[i]).epsilon(1e-12).margin(1e-13));
                CHECK(inference[i] == Approx(expected[i]).epsilon(1e-12).margin(1e-13));
            }
            for (Index c = 0; c < C; ++c) CHECK(inference[2 * C + c] == 0.0);  // token 2: nothing kept
        }
        // Gradients: a dropped slot's gate gets exactly 0; the rest pass a finite-difference check.
        gates.reset_grad();
        Rng r(2);
        moe_experts(x, gates, experts, ExpertWeightsView<double>(refs), 0.0, true, r).backward(Tensord::ones({N, C}));
        for (Index s = 0; s < N * K; ++s)
            if (experts[s] == kDroppedSlot) CHECK(gates.grad().data()[s] == 0.0);
        std::vector<Tensord> inputs{x, gates};
        for (Index e = 0; e < E; ++e)
            for (const Tensord* t : {&w.w1[e], &w.b1[e], &w.w2[e], &w.b2[e]}) inputs.push_back(*t);
        CHECK_GRADCHECK(gradcheck(
            [&](const std::vector<Tensord>&) {
                Rng fixed(3);
                return moe_experts(x, gates, experts, ExpertWeightsView<double>(refs), 0.3, true, fixed);
            },
            inputs));
    }
}

TEST_CASE("SparseMoE returns its routing statistics as a value", "[nn][moe]") {
    Rng rng(42);
    nn::SparseMoE<double> moe(6, 4, 2, 12, 0.0, rng);
    moe.eval();
    Tensord x = Tensord::randn({2, 5, 6}, rng);
    Rng unused(0);
    const nn::MoEOutput<double> fused = moe.forward_with_stats(x, unused);
    const nn::MoEOutput<double> composed = moe.forward_composed_with_stats(x, unused);
    const nn::Routing<double> routing = moe.router.forward(reshape(x, {10, 6}), unused);
    CHECK(fused.stats.num_experts == 4);
    CHECK(fused.stats.top_k == 2);
    CHECK(fused.stats.tokens == 10);
    CHECK(fused.stats.experts == routing.experts);
    std::vector<Index> counts(4, 0);
    for (Index e : routing.experts) ++counts[e];
    CHECK(fused.stats.tokens_per_expert == counts);
    CHECK(composed.stats.tokens_per_expert == counts);
    CHECK(fused.out.to_vector() == moe.forward(x, unused).to_vector());

    // A model forward hands one entry per MoE layer to the caller's trace.
    nn::DecoderConfig cfg;
    cfg.vocab_size = 7;
    cfg.n_embd = 8;
    cfg.n_head = 2;
    cfg.n_layer = 3;
    cfg.num_experts = 4;
    cfg.block_size = 16;
    cfg.dropout = 0.0;
    nn::MoEDecoderLanguageModel<double> lm(cfg, rng);
    nn::MoETrace<double> trace;
    lm.forward({1, 2, 3, 4, 5, 6}, 2, 3, unused, Tensord(), &trace);
    REQUIRE(trace.layers.size() == 3);
    for (const auto& layer : trace.layers) {
        CHECK(layer.tokens == 6);
        Index total = 0;
        for (Index c : layer.tokens_per_expert) total += c;
        CHECK(total == 6 * 2);
    }
}

TEST_CASE("SparseMoE's forward called from 2 threads at once gives each the serial result", "[nn][moe]") {
    ThreadCountGuard guard;
    set_num_threads(2);  // the pool is shared: one caller runs its loops, the other serially
    Rng rng(43);
    nn::SparseMoE<double> moe(16, 4, 2, 130, 0.1, rng);
    const Tensord big = Tensord::randn({3, 7, 16}, rng);   // the graph path
    const Tensord small = Tensord::randn({1, 2, 16}, rng); // the inference path (no graph, N <= 8)
    for (bool training : {true, false}) {
        moe.train(training);
        // The serial results, per thread seed.
        auto run = [&](std::uint64_t seed, std::vector<double>& values, std::vector<Index>& counts) {
            for (int i = 0; i < 5; ++i) {
                Rng r(seed + static_cast<std::uint64_t>(i));
                const nn::MoEOutput<double> a = moe.forward_with_stats(big, r);
                values = a.out.to_vector();
                counts = a.stats.tokens_per_expert;
                NoGradGuard no_grad;
                const nn::MoEOutput<double> b = moe.forward_with_stats(small, r);
                for (double v : b.out.to_vector()) values.push_back(v);
                for (Index c : b.stats.tokens_per_expert) counts.push_back(c);
            }
        };
        std::vector<double> serial0, serial1, got0, got1;
        std::vector<Index> counts_serial0, counts_serial1, counts0, counts1;
        run(100, serial0, counts_serial0);
        run(200, serial1, counts_serial1);
        std::thread t0([&] { run(100, got0, counts0); });
        std::thread t1([&] { run(200, got1, counts1); });
        t0.join();
        t1.join();
        INFO("training " << training);
        CHECK(got0 == serial0);
        CHECK(got1 == serial1);
        CHECK(counts0 == counts_serial0);
        CHECK(counts1 == counts_serial1);
    }
}
