// tests/test_moe.cpp — the mixture of experts beyond the fused op's equivalence tests (those are in
// test_perf_ops.cpp): the expert-weight view, dropped slots, routing statistics returned by value,
// and forward called from several threads at once.
#include <seemoe/seemoe.hpp>

#include <catch2/catch.hpp>
#include <cmath>
#include <thread>
#include <vector>

#include "gradcheck.hpp"
#include "thread_guard.hpp"
#include "tiny_vlm.hpp"

using namespace seemoe;
using seemoe::testing::grad_input;
using seemoe::testing::ThreadCountGuard;
using seemoe::testing::gradcheck;

namespace {

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

TEST_CASE("moe_experts takes a view of the experts' weights and dropped slots contribute nothing", "[ops][moe]") {
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

// ---- auxiliary losses --------------------------------------------------------------------------------

TEST_CASE("load-balancing loss: 1 for uniform routing, E for collapsed routing, gradient with f constant",
          "[ops][moe]") {
    const Index E = 4, N = 8;
    // Uniform: every probability 1/E and every expert first choice of N/E tokens.
    std::vector<Index> uniform_first;
    for (Index n = 0; n < N; ++n) uniform_first.push_back(n % E);
    CHECK(load_balancing_loss(Tensord::full({N, E}, 1.0 / E), uniform_first).item() == Approx(1.0).epsilon(1e-15));
    // Collapsed: every token sends all its probability and its first choice to expert 2.
    std::vector<double> onehot(static_cast<std::size_t>(N * E), 0.0);
    for (Index n = 0; n < N; ++n) onehot[n * E + 2] = 1.0;
    CHECK(load_balancing_loss(Tensord::from_vector({N, E}, onehot), std::vector<Index>(N, 2)).item() ==
          Approx(static_cast<double>(E)).epsilon(1e-15));
    // A hand-computed case: f = (2/3, 1/3), P = mean of the rows.
    const Tensord p = Tensord::from_vector({3, 2}, {0.9, 0.1, 0.6, 0.4, 0.3, 0.7});
    CHECK(load_balancing_loss(p, {0, 0, 1}).item() == Approx(2.0 * (2.0 / 3 * 0.6 + 1.0 / 3 * 0.4)).epsilon(1e-14));

    Rng rng(51);
    const std::vector<Index> first = {0, 3, 3, 1, 2, 3, 0, 1};
    CHECK_GRADCHECK(gradcheck([&](const std::vector<Tensord>& in) { return load_balancing_loss(in[0], first); },
                              {grad_input({N, E}, rng)}));
    CHECK_THROWS_WITH(load_balancing_loss(Tensord::zeros({2, 3}), {0, 3}), Catch::Contains("[load_balancing_loss]"));
}

TEST_CASE("router z-loss: (ln E)^2 for zero logits, a hand case and its gradient", "[ops][moe]") {
    for (Index E : {1, 2, 8})
        CHECK(router_z_loss(Tensord::zeros({5, E})).item() ==
              Approx(std::log(static_cast<double>(E)) * std::log(static_cast<double>(E))).margin(1e-15));
    const double lse0 = std::log(std::exp(1.0) + std::exp(-2.0)), lse1 = std::log(std::exp(30.0) + std::exp(29.0));
    CHECK(router_z_loss(Tensord::from_vector({2, 2}, {1.0, -2.0, 30.0, 29.0})).item() ==
          Approx((lse0 * lse0 + lse1 * lse1) / 2).epsilon(1e-14));
    Rng rng(52);
    CHECK_GRADCHECK(gradcheck([&](const std::vector<Tensord>& in) { return router_z_loss(in[0]); },
                              {grad_input({6, 4}, rng)}));
}

// ---- router variants ---------------------------------------------------------------------------------

TEST_CASE("router variants: top-k-then-softmax equals softmax-then-top-k renormalised, un-renormalised gates "
          "sum to at most 1, noise only in training",
          "[nn][moe]") {
    const Index C = 6, E = 5, K = 2, N = 12;
    Rng data(53);
    const Tensord x = Tensord::randn({N, C}, data);
    Rng r1(7), r2(7), r3(7);
    nn::TopkRouter<double> mixtral(C, E, K, r1, nn::RouterType::TopKSoftmax);
    nn::TopkRouter<double> switch_router(C, E, K, r2, nn::RouterType::SoftmaxTopK);
    nn::TopkRouter<double> noisy(C, E, K, r3, nn::RouterType::NoisyTopK);
    CHECK(mixtral.named_parameters().size() == 2);  // route.weight, route.bias: no noise layer
    CHECK(noisy.named_parameters().size() == 4);
    for (bool training : {true, false}) {
        mixtral.train(training);
        switch_router.train(training);
        Rng ra(1), rb(2);
        const nn::Routing<double> a = mixtral.forward(x, ra), b = switch_router.forward(x, rb);
        REQUIRE(a.experts == b.experts);
        for (Index n = 0; n < N; ++n) {
            double sum = 0;
            for (Index k = 0; k < K; ++k) sum += b.gates.at({n, k});
            CHECK(sum <= 1.0);
            CHECK(sum < 1.0);  // E > K: the other experts keep some probability
            for (Index k = 0; k < K; ++k) CHECK(a.gates.at({n, k}) == Approx(b.gates.at({n, k}) / sum).epsilon(1e-12));
        }
        // Without noise the rng is not touched, in training too.
        CHECK(ra.uniform() == Rng(1).uniform());
    }
    // The noisy router in eval is the plain top-k-then-softmax (same route weights: same seed).
    noisy.eval();
    mixtral.eval();
    Rng unused(3);
    CHECK(noisy.forward(x, unused).gates.to_vector() == mixtral.forward(x, unused).gates.to_vector());
    noisy.train();
    Rng n1(4), n2(5);
    CHECK(noisy.forward(x, n1).gates.to_vector() != noisy.forward(x, n2).gates.to_vector());
}

// ---- capacity ----------------------------------------------------------------------------------------

TEST_CASE("expert capacity and the exact drop sets of position and priority overflow", "[ops][moe]") {
    CHECK(expert_capacity(10, 2, 4, 1.0) == 5);
    CHECK(expert_capacity(10, 2, 4, 1.25) == 7);  // ceil(6.25)
    CHECK(expert_capacity(1, 2, 8, 0.01) == 1);   // one token is never dropped
    CHECK(expert_capacity(10, 2, 4, 0.0) == -1);  // dropless
    CHECK(expert_capacity(10, 2, 4, -1.0) == -1);

    // 4 tokens, top-2 of 3 experts, capacity 2. First gates 0.5, 0.9, 0.7, 0.6.
    const std::vector<Index> experts = {0, 1, 0, 2, 0, 1, 1, 0};
    const std::vector<double> gates = {0.5, 0.3, 0.9, 0.05, 0.7, 0.2, 0.6, 0.3};
    const Index D = kDroppedSlot;
    // Position: first choices in token order (t2's expert 0 is full), then second choices.
    CHECK(drop_overflow(experts, gates.data(), 4, 2, 3, 2, OverflowPolicy::Position) ==
          std::vector<Index>{0, 1, 0, 2, D, D, 1, D});
    // Priority: tokens by first gate t1, t2, t3, t0; t0 loses its first choice, t0 and t3 their second.
    CHECK(drop_overflow(experts, gates.data(), 4, 2, 3, 2, OverflowPolicy::Priority) ==
          std::vector<Index>{D, D, 0, 2, 0, 1, 1, D});
    // No limit: nothing dropped.
    CHECK(drop_overflow(experts, gates.data(), 4, 2, 3, -1, OverflowPolicy::Priority) == experts);
}

namespace {
testing::GradcheckResult module_gradcheck_moe(nn::SparseMoE<double>& moe, const Tensord& x) {
    std::vector<Tensord> inputs{x};
    for (auto& p : moe.parameters()) inputs.push_back(p);
    return gradcheck(
        [&](const std::vector<Tensord>&) {
            Rng r(12);
            return moe.forward(x, r);
        },
        inputs, 1e-5, 1234, /*max_per_input=*/24);
}

nn::MoEOptions options_with(double cf, OverflowPolicy policy, Index shared = 0,
                            nn::RouterType router = nn::RouterType::NoisyTopK) {
    nn::MoEOptions o;
    o.capacity_factor = cf;
    o.eval_capacity_factor = cf;
    o.overflow = policy;
    o.num_shared_experts = shared;
    o.router = router;
    return o;
}
}  // namespace

TEST_CASE("SparseMoE with capacity: a huge capacity is dropless bit for bit, small ones drop, fused equals "
          "composed, shared experts included",
          "[nn][moe]") {
    const Index C = 6, E = 4, K = 2, Hd = 12;
    Rng data(54);
    Tensord x = grad_input({3, 5, C}, data);
    // Same seed: same weights whatever the options that do not add parameters.
    auto make = [&](const nn::MoEOptions& o) {
        Rng rng(8);
        return nn::SparseMoE<double>(C, E, K, Hd, 0.2, rng, o);
    };
    nn::SparseMoE<double> dropless = make(options_with(0.0, OverflowPolicy::Position));
    nn::SparseMoE<double> huge = make(options_with(1e6, OverflowPolicy::Priority));
    for (bool training : {true, false}) {
        dropless.train(training);
        huge.train(training);
        auto run = [&](nn::SparseMoE<double>& moe) {
            x.reset_grad();
            auto params = moe.parameters();
            for (auto& p : params) p.reset_grad();
            Rng r(9);
            Tensord out = moe.forward(x, r);
            Rng s(10);
            out.backward(Tensord::randn(out.shape(), s));
            std::vector<double> values = out.to_vector();
            for (double v : x.grad().to_vector()) values.push_back(v);
            for (auto& p : params)
                if (p.has_grad())
                    for (double v : p.grad().to_vector()) values.push_back(v);
            return values;
        };
        CHECK(run(dropless) == run(huge));
    }

    for (auto policy : {OverflowPolicy::Position, OverflowPolicy::Priority})
        for (Index shared : {0, 1})
            for (bool training : {true, false}) {
                nn::SparseMoE<double> moe = make(options_with(0.5, policy, shared));
                REQUIRE(moe.fusable());
                moe.train(training);
                INFO("policy " << static_cast<int>(policy) << " shared " << shared << " training " << training);
                Rng r1(11), r2(11);
                const nn::MoEOutput<double> fused = moe.forward_with_stats(x, r1);
                const nn::MoEOutput<double> composed = moe.forward_composed_with_stats(x, r2);
                // The router's choices before capacity (the same noise: the same seed).
                Rng r3(11);
                const nn::Routing<double> routing = moe.router.forward(reshape(x, {15, C}), r3);
                const Index capacity = expert_capacity(15, K, E, 0.5);  // ceil(3.75) = 4
                REQUIRE(capacity == 4);
                CHECK(fused.stats.experts == drop_overflow(routing.experts, routing.gates.data(), 15, K, E, capacity,
                                                           policy));
                CHECK(composed.stats.experts == fused.stats.experts);
                std::vector<Index> wanted(E, 0);
                for (Index e : routing.experts) ++wanted[e];
                Index dropped = 0;
                for (Index e = 0; e < E; ++e) {
                    CHECK(fused.stats.tokens_per_expert[e] == std::min(wanted[e], capacity));
                    dropped += std::max<Index>(0, wanted[e] - capacity);
                }
                CHECK(dropped > 0);
                CHECK(fused.stats.dropped == dropped);
                CHECK(fused.stats.drop_fraction() == Approx(static_cast<double>(dropped) / 30));
                const auto a = fused.out.to_vector(), b = composed.out.to_vector();
                for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i] == Approx(b[i]).epsilon(1e-12).margin(1e-13));
                CHECK(r1.uniform() == r2.uniform());
            }
    // Gradients with drops and a shared expert.
    nn::SparseMoE<double> moe = make(options_with(0.6, OverflowPolicy::Priority, 1));
    moe.eval();
    const auto names = moe.named_parameters();
    CHECK(names.back().first == "shared_experts.0.fc2.bias");
    CHECK_GRADCHECK(module_gradcheck_moe(moe, x));
}

// ---- generation, upcycling, the model's trace and the checkpoint JSON ----------------------------

namespace {
nn::VLMConfig small_vlm(double capacity_factor) {
    nn::VLMConfig c = testing::tiny_vlm_config();
    c.decoder.capacity_factor = capacity_factor;
    c.decoder.eval_capacity_factor = capacity_factor;
    c.visual_tokens = nn::VisualTokens::Patches;  // 4 visual tokens + <bos>: a 5-token prompt
    return c;
}
}  // namespace

TEST_CASE("generation never drops a token, whatever the capacity factor", "[nn][moe]") {
    Rng r1(60), r2(60);
    nn::VisionMoELanguageModel<double> dropless(small_vlm(0.0), r1);
    nn::VisionMoELanguageModel<double> tiny_capacity(small_vlm(0.01), r2);
    Rng data(61);
    const Tensord image = Tensord::randn({1, 3, 8, 8}, data);
    nn::SamplingOptions greedy;
    greedy.max_new_tokens = 12;
    Rng g1(1), g2(1);
    const auto a = dropless.generate(image, greedy, g1), b = tiny_capacity.generate(image, greedy, g2);
    CHECK(a == b);
    // The same model drops in an eval forward over the prompt (5 tokens, capacity 1 per expert).
    tiny_capacity.eval();
    nn::MoETrace<double> trace;
    Rng unused(0);
    NoGradGuard no_grad;
    tiny_capacity.forward(image, {1}, 1, unused, &trace);
    REQUIRE(trace.layers.size() == 2);
    CHECK(trace.layers[0].dropped > 0);
}

TEST_CASE("sparse upcycling: at step 0 the upcycled layer computes the dense FFN", "[nn][moe]") {
    const Index C = 8, Hd = 16;
    Rng rng(62);
    nn::Expert<double> dense(C, Hd, 0.0, rng);
    const Tensord x = Tensord::randn({3, 4, C}, rng);
    Rng unused(0);
    const std::vector<double> expected = dense.forward(x, unused).to_vector();
    for (auto router : {nn::RouterType::NoisyTopK, nn::RouterType::TopKSoftmax}) {
        nn::SparseMoE<double> moe(C, 4, 2, Hd, 0.0, rng, options_with(0.0, OverflowPolicy::Position, 0, router));
        moe.upcycle_from(dense, 0.0, rng);
        moe.eval();
        const std::vector<double> got = moe.forward(x, unused).to_vector();
        for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(expected[i]).margin(1e-6));
        // The copies are new parameters, not the dense layer's tensors.
        CHECK_FALSE(moe.experts[0].fc1.weight.same_node(dense.fc1.weight));
        CHECK(moe.experts[0].fc1.weight.requires_grad());
        // Noise makes the experts differ from each other.
        moe.upcycle_from(dense, 0.01, rng);
        CHECK(moe.experts[0].fc1.weight.to_vector() != moe.experts[1].fc1.weight.to_vector());
    }
    // The float path too.
    Rng rf(63);
    nn::Expert<float> dense_f(C, Hd, 0.0f, rf);
    nn::SparseMoE<float> moe_f(C, 4, 2, Hd, 0.0f, rf);
    moe_f.upcycle_from(dense_f, 0.0, rf);
    moe_f.eval();
    const Tensorf xf = Tensorf::randn({5, C}, rf);
    const auto want = dense_f.forward(xf, unused).to_vector(), got = moe_f.forward(xf, unused).to_vector();
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).margin(1e-6));
    nn::Expert<double> wrong(C, Hd + 1, 0.0, rng);
    nn::SparseMoE<double> moe(C, 4, 2, Hd, 0.0, rng);
    CHECK_THROWS_WITH(moe.upcycle_from(wrong, 0.0, rng), Catch::Contains("[SparseMoE] upcycling"));
}

TEST_CASE("the model's trace sums the auxiliary losses over the MoE layers", "[nn][moe]") {
    Rng rng(64);
    nn::VisionMoELanguageModel<double> model(small_vlm(0.0), rng);
    const Tensord images = grad_input({2, 3, 8, 8}, rng);
    nn::MoETrace<double> plain, with_aux;
    with_aux.aux_losses = true;
    Rng r1(1), r2(1);
    const std::vector<Index> ids = {1, 3, 4, 1, 5, 6}, targets = {3, 4, 2, 5, 6, 2};
    const double a = model.loss(images, ids, targets, 3, r1, &plain).item();
    const double b = model.loss(images, ids, targets, 3, r2, &with_aux).item();
    CHECK(a == b);  // the caption loss alone either way
    CHECK_FALSE(plain.balance_loss.defined());
    REQUIRE(with_aux.balance_loss.defined());
    REQUIRE(with_aux.layers.size() == 2);
    for (const auto& layer : with_aux.layers) {
        CHECK(layer.router_entropy > 0);
        CHECK(layer.router_entropy <= std::log(4.0) + 1e-12);
    }
    CHECK(with_aux.z_loss.item() > 0);
    // Its gradient reaches the routers.
    with_aux.balance_loss.backward();
    CHECK(model.decoder.blocks[0].moe.router.route.weight.has_grad());

    // The sum itself: two layers' outputs added to a trace give the sum of their losses.
    nn::MoETrace<double> trace;
    std::vector<double> balance, z;
    for (std::uint64_t seed : {65, 66}) {
        Rng r(seed);
        nn::SparseMoE<double> moe(8, 4, 2, 16, 0.0, r);
        const Tensord x = Tensord::randn({6, 8}, r);  // (N, C)
        nn::MoERequest request;
        request.aux_losses = true;
        nn::MoEOutput<double> out = moe.forward_with_stats(x, r, request);
        balance.push_back(out.balance_loss.item());
        z.push_back(out.z_loss.item());
        trace.add(out);
    }
    CHECK(trace.layers.size() == 2);
    CHECK(balance[0] != balance[1]);
    CHECK(trace.balance_loss.item() == balance[0] + balance[1]);
    CHECK(trace.z_loss.item() == z[0] + z[1]);
}

TEST_CASE("the MoE routing fields in the checkpoint JSON: written when set, optional when reading",
          "[io][moe]") {
    nn::VLMConfig c = small_vlm(1.25);
    c.decoder.router = nn::RouterType::SoftmaxTopK;
    c.decoder.num_shared_experts = 1;
    c.decoder.overflow = OverflowPolicy::Priority;
    const io::Json j = nn::config_to_json(c);
    CHECK(j.at("decoder").at("router").as_string() == "softmax_topk");
    CHECK(j.at("decoder").at("overflow").as_string() == "priority");
    const nn::VLMConfig back = nn::config_from_json(j);
    CHECK(nn::config_to_json(back).dump() == j.dump());
    CHECK(back.decoder.capacity_factor == 1.25);
    // At their defaults the fields are left out, and reading without them gives the defaults.
    const io::Json plain = nn::config_to_json(nn::VLMConfig{});
    CHECK_FALSE(plain.at("decoder").contains("router"));
    CHECK_FALSE(plain.at("decoder").contains("capacity_factor"));
    CHECK(nn::config_from_json(plain).decoder.router == nn::RouterType::NoisyTopK);
    io::Json bad = j;
    bad["decoder"]["router"] = "best";
    CHECK_THROWS_WITH(nn::config_from_json(bad), Catch::Contains("unknown router 'best'"));
}
