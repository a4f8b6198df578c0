// Tests of the machinery that makes training fast: the AVX-512 float GEMM kernel (against a double
// reference, every shape class and transpose), the fused MoE op (gradient check, equivalence with
// the composed graph including dropout and router noise, bad inputs), the thread pool, the buffer
// cache, lazy zero_grad / write-instead-of-add gradients, and the freeing of activations that
// backward never reads.
#include <seemoe/seemoe.hpp>

#include <catch2/catch.hpp>
#include <atomic>
#include <cmath>
#include <fstream>
#include <memory>
#include <vector>

#include <unistd.h>

#include "gradcheck.hpp"
#include "thread_guard.hpp"

using namespace seemoe;
using seemoe::testing::grad_input;
using seemoe::testing::ThreadCountGuard;
using seemoe::testing::gradcheck;

namespace {

// Restores the thread count a test changed.
// (rows, cols) float values in [-1, 1) from the Rng.
Tensorf uniform_matrix(Index rows, Index cols, Rng& rng) { return Tensorf::rand({rows, cols}, rng, -1.f, 1.f); }

}  // namespace

// ---- the float GEMM -----------------------------------------------------------------------------

TEST_CASE("float matmul matches a double reference for every shape class and transpose", "[ops][perf]") {
    ThreadCountGuard guard;
    Rng rng(3);
    // Sizes around the kernel's tiles (12 x 32, depth blocks of 256; the few-row kernel's blocks of
    // 16 weight rows; the dot tiles of 4 x 6) and the thread split.
    const std::vector<Index> sizes = {1, 5, 13, 33, 150};
    const std::vector<Index> depths = {1, 17, 300, 1500};  // 1500: the dot kernel works in depth blocks of 1024
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        for (Index M : sizes)
            for (Index N : sizes)
                for (Index K : depths)
                    for (int ta = 0; ta < 2; ++ta)
                        for (int tb = 0; tb < 2; ++tb) {
                            const Tensorf a = ta ? uniform_matrix(K, M, rng) : uniform_matrix(M, K, rng);
                            const Tensorf b = tb ? uniform_matrix(N, K, rng) : uniform_matrix(K, N, rng);
                            const Tensorf c = matmul(a, b, ta != 0, tb != 0);  // (M, N)
                            REQUIRE(c.shape() == Shape{M, N});
                            const float *pa = a.data(), *pb = b.data(), *pc = c.data();
                            double worst = 0;
                            for (Index i = 0; i < M; ++i)
                                for (Index j = 0; j < N; ++j) {
                                    double ref = 0, mag = 0;
                                    for (Index k = 0; k < K; ++k) {
                                        const double x = ta ? pa[k * M + i] : pa[i * K + k];
                                        const double y = tb ? pb[j * K + k] : pb[k * N + j];
                                        ref += x * y;
                                        mag += std::fabs(x * y);
                                    }
                                    worst = std::max(worst, std::fabs(pc[i * N + j] - ref) / (mag + 1e-3));
                                }
                            INFO("M " << M << " N " << N << " K " << K << " ta " << ta << " tb " << tb);
                            CHECK(worst < 1e-6);
                        }
    }
}

TEST_CASE("few-row float linear (generation) matches double, split over threads or not", "[ops][perf]") {
    ThreadCountGuard guard;
    Rng rng(6);
    // 1 to 7 rows take the matrix-vector kernel; 1100 x 260 weights are big enough to be split
    // over two threads; the bias makes the kernel accumulate onto it.
    const Tensorf w = uniform_matrix(1100, 260, rng);
    const Tensorf b = Tensorf::rand({1100}, rng, -1.f, 1.f);
    for (Index rows = 1; rows <= 7; ++rows) {
        const Tensorf x = uniform_matrix(rows, 260, rng);
        std::vector<std::vector<float>> runs;
        for (int threads : {1, 2}) {
            set_num_threads(threads);
            const Tensorf y = linear(x, w, b);  // (rows, 1100)
            REQUIRE(y.shape() == Shape{rows, 1100});
            runs.push_back(y.to_vector());
        }
        CHECK(runs[0] == runs[1]);  // each dot product summed in the same order either way
        double worst = 0;
        for (Index i = 0; i < rows; ++i)
            for (Index j = 0; j < 1100; ++j) {
                double ref = b.data()[j], mag = std::fabs(ref);
                for (Index k = 0; k < 260; ++k) {
                    const double p = double(x.data()[i * 260 + k]) * double(w.data()[j * 260 + k]);
                    ref += p;
                    mag += std::fabs(p);
                }
                worst = std::max(worst, std::fabs(runs[0][static_cast<std::size_t>(i * 1100 + j)] - ref) / (mag + 1e-3));
            }
        INFO("rows " << rows);
        CHECK(worst < 1e-6);
    }
}

TEST_CASE("a big float linear gives the same numbers on 1 and 2 threads, and its gradients", "[ops][perf]") {
    ThreadCountGuard guard;
    Rng rng(4);
    // Big enough to be split over two threads (rows of x vs columns of the weight).
    const Tensorf x = Tensorf::randn({300, 200}, rng).requires_grad_();
    const Tensorf w = Tensorf::randn({520, 200}, rng).requires_grad_();
    const Tensorf b = Tensorf::randn({520}, rng).requires_grad_();
    std::vector<std::vector<float>> runs;
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        Tensorf xx = x, ww = w, bb = b;
        xx.reset_grad();
        ww.reset_grad();
        bb.reset_grad();
        Tensorf y = linear(xx, ww, bb);  // (300, 520)
        Rng seed(5);
        y.backward(Tensorf::randn(y.shape(), seed));
        std::vector<float> all = y.to_vector();
        for (const Tensorf* t : {&xx, &ww, &bb})
            for (float v : t->grad().to_vector()) all.push_back(v);
        runs.push_back(all);
    }
    // Each element is summed in the same order whatever the split: bitwise equal.
    REQUIRE(runs[0].size() == runs[1].size());
    CHECK(runs[0] == runs[1]);
    // Spot-check the forward against double.
    const Tensorf y = linear(x, w, b);
    for (Index i : {0, 17, 299})
        for (Index j : {0, 31, 519}) {
            double ref = b.at({j});
            for (Index k = 0; k < 200; ++k) ref += double(x.at({i, k})) * w.at({j, k});
            CHECK(y.at({i, j}) == Approx(ref).epsilon(1e-5).margin(1e-4));
        }
}

// ---- fused MoE ------------------------------------------------------------------------------------

namespace {

struct ExpertSet {
    std::vector<Tensord> w1, b1, w2, b2;
};

ExpertSet make_experts(Index E, Index C, Index Hd, Rng& rng, bool with_bias = true) {
    ExpertSet s;
    for (Index e = 0; e < E; ++e) {
        s.w1.push_back(grad_input({Hd, C}, rng, 0.5));
        s.b1.push_back(with_bias ? grad_input({Hd}, rng, 0.5) : Tensord());
        s.w2.push_back(grad_input({C, Hd}, rng, 0.5));
        s.b2.push_back(with_bias ? grad_input({C}, rng, 0.5) : Tensord());
    }
    return s;
}

// The composed form of moe_experts from single ops: per expert index_select, linear, relu, linear,
// dropout, the gate product and index_add.
Tensord composed_moe(const Tensord& x, const Tensord& gates, const std::vector<Index>& experts, const ExpertSet& w,
                     double p, bool training, Rng& rng) {
    const Index N = x.size(0), C = x.size(1), K = gates.size(1), E = static_cast<Index>(w.w1.size());
    Tensord flat_gates = reshape(gates, {N * K});
    Tensord out = Tensord::zeros({N, C});
    for (Index e = 0; e < E; ++e) {
        std::vector<Index> rows, slots;
        for (Index s = 0; s < N * K; ++s)
            if (experts[s] == e) {
                rows.push_back(s / K);
                slots.push_back(s);
            }
        if (rows.empty()) continue;
        Tensord h = relu(linear(index_select(x, 0, rows), w.w1[e], w.b1[e]));
        Tensord y = dropout(linear(h, w.w2[e], w.b2[e]), p, training, rng);
        Tensord g = reshape(index_select(flat_gates, 0, slots), {static_cast<Index>(rows.size()), 1});
        out = index_add(out, 0, rows, mul(y, g));
    }
    return out;
}

// Top-2 of 4 experts for 6 tokens; expert 3 gets no token at all.
const std::vector<Index> kRouting = {0, 1, 1, 2, 2, 0, 0, 2, 1, 0, 2, 1};

}  // namespace

TEST_CASE("moe_experts passes a gradient check, with and without dropout", "[ops][moe][perf]") {
    Rng rng(21);
    const Index N = 6, C = 5, Hd = 7, E = 4, K = 2;
    Tensord x = grad_input({N, C}, rng);
    Tensord gates = grad_input({N, K}, rng);
    for (bool with_bias : {true, false}) {
        ExpertSet w = make_experts(E, C, Hd, rng, with_bias);
        for (double p : {0.0, 0.3}) {
            std::vector<Tensord> inputs{x, gates};
            for (Index e = 0; e < E; ++e) {
                inputs.push_back(w.w1[e]);
                inputs.push_back(w.w2[e]);
                if (with_bias) {
                    inputs.push_back(w.b1[e]);
                    inputs.push_back(w.b2[e]);
                }
            }
            INFO("with_bias " << with_bias << " p " << p);
            CHECK_GRADCHECK(gradcheck(
                [&](const std::vector<Tensord>&) {
                    Rng fixed(8);  // the same dropout mask in every evaluation
                    return moe_experts(x, gates, kRouting, w.w1, w.b1, w.w2, w.b2, p, true, fixed);
                },
                inputs));
        }
        // The expert nobody was routed to gets no gradient at all (as in the composed graph).
        for (Tensord* t : {&w.w1[3], &w.w2[3]}) t->reset_grad();
        Rng r(1);
        moe_experts(x, gates, kRouting, w.w1, w.b1, w.w2, w.b2, 0.0, true, r).backward(Tensord::ones({N, C}));
        CHECK_FALSE(w.w1[3].has_grad());
        CHECK_FALSE(w.w2[3].has_grad());
    }
}

TEST_CASE("moe_experts equals the composed graph, dropout masks and gradients included", "[ops][moe][perf]") {
    ThreadCountGuard guard;
    Rng rng(22);
    const Index N = 6, C = 5, Hd = 7, E = 4, K = 2;
    Tensord x = grad_input({N, C}, rng);
    Tensord gates = grad_input({N, K}, rng);
    ExpertSet w = make_experts(E, C, Hd, rng);
    std::vector<Tensord*> all{&x, &gates};
    for (Index e = 0; e < E; ++e)
        for (Tensord* t : {&w.w1[e], &w.b1[e], &w.w2[e], &w.b2[e]}) all.push_back(t);
    for (int threads : {1, 2})
        for (bool training : {true, false}) {
            set_num_threads(threads);
            auto run = [&](bool fused) {
                for (Tensord* t : all) t->reset_grad();
                Rng r(99);
                Tensord out = fused ? moe_experts(x, gates, kRouting, w.w1, w.b1, w.w2, w.b2, 0.4, training, r)
                                    : composed_moe(x, gates, kRouting, w, 0.4, training, r);
                Rng seed(7);
                out.backward(Tensord::randn(out.shape(), seed));
                std::vector<double> values = out.to_vector();
                values.push_back(r.uniform());  // both consumed the Rng alike
                for (Tensord* t : all)
                    for (double v : t->grad().to_vector()) values.push_back(v);
                return values;
            };
            const std::vector<double> fused = run(true), composed = run(false);
            REQUIRE(fused.size() == composed.size());
            INFO("threads " << threads << " training " << training);
            for (std::size_t i = 0; i < fused.size(); ++i) CHECK(fused[i] == Approx(composed[i]).epsilon(1e-12).margin(1e-13));
        }
}

namespace {

// Top-2 of 4 experts for N tokens, the pair of each token in no particular order.
std::vector<Index> two_of_four(Index N) {
    std::vector<Index> experts;
    for (Index n = 0; n < N; ++n) {
        experts.push_back((n + 1 + n % 2) % 4);
        experts.push_back(n % 4);
    }
    return experts;
}

// A float copy of a double tensor.
Tensorf to_float(const Tensord& t) {
    std::vector<float> values;
    for (double v : t.to_vector()) values.push_back(static_cast<float>(v));
    return Tensorf::from_vector(t.shape(), values);
}

}  // namespace

TEST_CASE("moe_experts' inference path (a few tokens, no graph) equals the composed graph", "[ops][moe][perf]") {
    ThreadCountGuard guard;
    Rng rng(24);
    // Small experts (serial) and experts big enough to split their hidden units over the threads;
    // an odd hidden width gives parts of different sizes.
    struct Size {
        Index C, Hd;
    };
    for (Size size : {Size{5, 7}, Size{4, 1}, Size{64, 513}, Size{32, 256}})
        for (Index N : {1, 3, 8})
            for (bool with_bias : {true, false}) {
                const Index C = size.C, Hd = size.Hd, K = 2, E = 4;
                Tensord x = grad_input({N, C}, rng);
                Tensord gates = grad_input({N, K}, rng);
                ExpertSet w = make_experts(E, C, Hd, rng, with_bias);
                const std::vector<Index> experts = two_of_four(N);
                NoGradGuard no_grad;
                Rng r(5);
                const Tensord composed = composed_moe(x, gates, experts, w, 0.4, false, r);
                std::vector<std::vector<double>> by_threads;
                for (int threads : {1, 2, 3}) {
                    set_num_threads(threads);
                    Rng unused(6);
                    Tensord out = moe_experts(x, gates, experts, w.w1, w.b1, w.w2, w.b2, 0.4, false, unused);
                    CHECK_FALSE(out.requires_grad());
                    CHECK(out.op() == std::string("moe_experts"));
                    CHECK(unused.uniform() == Rng(6).uniform());  // nothing drawn
                    by_threads.push_back(out.to_vector());
                }
                INFO("C " << C << " Hd " << Hd << " N " << N << " bias " << with_bias);
                CHECK(by_threads[0] == by_threads[1]);  // bit-identical on 1, 2 and 3 threads
                CHECK(by_threads[0] == by_threads[2]);
                const std::vector<double> expected = composed.to_vector();
                REQUIRE(by_threads[0].size() == expected.size());
                for (std::size_t i = 0; i < expected.size(); ++i)
                    CHECK(by_threads[0][i] == Approx(expected[i]).epsilon(1e-12).margin(1e-13));

                // The float path (the few-row kernel) against the double reference.
                std::vector<Tensorf> w1, b1, w2, b2;
                for (Index e = 0; e < E; ++e) {
                    w1.push_back(to_float(w.w1[e]));
                    w2.push_back(to_float(w.w2[e]));
                    b1.push_back(with_bias ? to_float(w.b1[e]) : Tensorf());
                    b2.push_back(with_bias ? to_float(w.b2[e]) : Tensorf());
                }
                std::vector<std::vector<float>> float_by_threads;
                for (int threads : {1, 2, 3}) {
                    set_num_threads(threads);
                    Rng unused(6);
                    const Tensorf out = moe_experts(to_float(x), to_float(gates), experts, w1, b1, w2, b2, 0.4f,
                                                    false, unused);
                    float_by_threads.push_back(out.to_vector());
                }
                CHECK(float_by_threads[0] == float_by_threads[1]);
                CHECK(float_by_threads[0] == float_by_threads[2]);
                for (std::size_t i = 0; i < expected.size(); ++i)
                    CHECK(float_by_threads[0][i] == Approx(expected[i]).epsilon(1e-4).margin(1e-4));
            }
}

TEST_CASE("moe_experts builds the graph when one is needed, even for a single token", "[ops][moe][perf]") {
    Rng rng(25);
    const Index N = 1, C = 5, Hd = 7, E = 4, K = 2;
    Tensord x = grad_input({N, C}, rng);
    Tensord gates = grad_input({N, K}, rng);
    ExpertSet w = make_experts(E, C, Hd, rng);
    const std::vector<Index> experts = two_of_four(N);
    Rng r(7);
    Tensord out = moe_experts(x, gates, experts, w.w1, w.b1, w.w2, w.b2, 0.0, false, r);
    CHECK(out.requires_grad());
    CHECK(out.op() == std::string("moe_experts"));
    // Only one weight asks for a gradient: still a graph, and that weight gets its gradient.
    {
        Tensord x_const = x.detach(), gates_const = gates.detach();
        ExpertSet frozen = make_experts(E, C, Hd, rng);
        for (auto* list : {&frozen.w1, &frozen.b1, &frozen.w2, &frozen.b2})
            for (Tensord& t : *list) t = t.detach();
        frozen.w2[experts[0]] = grad_input({C, Hd}, rng);
        Tensord y = moe_experts(x_const, gates_const, experts, frozen.w1, frozen.b1, frozen.w2, frozen.b2, 0.0,
                                false, r);
        REQUIRE(y.requires_grad());
        y.backward(Tensord::ones({N, C}));
        CHECK(frozen.w2[experts[0]].has_grad());
    }
    // With dropout in training the masks are drawn, as the composed form draws them.
    NoGradGuard no_grad;
    Rng fused_rng(8), composed_rng(8);
    const std::vector<double> fused =
        moe_experts(x, gates, experts, w.w1, w.b1, w.w2, w.b2, 0.5, true, fused_rng).to_vector();
    const std::vector<double> composed = composed_moe(x, gates, experts, w, 0.5, true, composed_rng).to_vector();
    REQUIRE(fused.size() == composed.size());
    for (std::size_t i = 0; i < fused.size(); ++i) CHECK(fused[i] == Approx(composed[i]).epsilon(1e-12).margin(1e-13));
    CHECK(fused_rng.uniform() == composed_rng.uniform());
}

TEST_CASE("SparseMoE's fused path equals forward_composed with dropout and router noise", "[nn][moe][perf]") {
    Rng rng(23);
    nn::SparseMoE<double> moe(6, 4, 2, 12, 0.25, rng);
    REQUIRE(moe.fusable());
    Tensord x = grad_input({2, 5, 6}, rng);
    auto params = moe.parameters();
    for (bool training : {true, false}) {
        moe.train(training);
        auto run = [&](bool fused) {
            x.reset_grad();
            for (auto& p : params) p.reset_grad();
            Rng r(31);
            Tensord out = fused ? moe.forward(x, r) : moe.forward_composed(x, r);
            Rng seed(32);
            out.backward(Tensord::randn(out.shape(), seed));
            std::vector<double> values = out.to_vector();
            for (double v : x.grad().to_vector()) values.push_back(v);
            for (auto& p : params)
                for (double v : p.grad().to_vector()) values.push_back(v);
            return values;
        };
        const std::vector<double> fused = run(true), composed = run(false);
        REQUIRE(fused.size() == composed.size());
        for (std::size_t i = 0; i < fused.size(); ++i) CHECK(fused[i] == Approx(composed[i]).epsilon(1e-12).margin(1e-13));
    }
    // A GELU expert is not what the fused op computes: the module falls back to the composed graph.
    moe.experts[1].act = nn::Activation::GELU;
    CHECK_FALSE(moe.fusable());
}

TEST_CASE("SparseMoE's fused path sees an expert weight replaced between calls", "[nn][moe][perf]") {
    Rng rng(26);
    nn::SparseMoE<double> moe(6, 4, 2, 12, 0.0, rng);
    moe.eval();
    Tensord x = Tensord::randn({3, 6}, rng);
    Rng unused(0);
    NoGradGuard no_grad;
    const std::vector<double> before = moe.forward(x, unused).to_vector();
    // Replace (not modify) the weights of every expert: the next call must use the new tensors.
    for (auto& expert : moe.experts) {
        expert.fc1.weight = Tensord::randn({12, 6}, rng);
        expert.fc2.bias = Tensord::randn({6}, rng);
    }
    const std::vector<double> after = moe.forward(x, unused).to_vector();
    const std::vector<double> composed = moe.forward_composed(x, unused).to_vector();
    REQUIRE(after.size() == composed.size());
    CHECK(after != before);
    for (std::size_t i = 0; i < after.size(); ++i) CHECK(after[i] == Approx(composed[i]).epsilon(1e-12).margin(1e-13));
}

TEST_CASE("moe_experts rejects bad inputs naming the op", "[ops][moe][perf]") {
    Rng rng(24);
    Tensord x = grad_input({3, 4}, rng), gates = grad_input({3, 2}, rng);
    ExpertSet w = make_experts(3, 4, 5, rng);
    const std::vector<Index> ok = {0, 1, 1, 2, 2, 0};
    Rng r(0);
    CHECK_THROWS_WITH(moe_experts(x, gates, std::vector<Index>{0, 1}, w.w1, w.b1, w.w2, w.b2, 0.0, true, r),
                      Catch::Contains("[moe_experts]") && Catch::Contains("(3, 2)"));
    CHECK_THROWS_WITH(moe_experts(x, gates, std::vector<Index>{0, 1, 1, 3, 2, 0}, w.w1, w.b1, w.w2, w.b2, 0.0, true, r),
                      Catch::Contains("[moe_experts] expert id 3"));
    CHECK_THROWS_WITH(moe_experts(x, gates, std::vector<Index>{0, 0, 1, 2, 2, 0}, w.w1, w.b1, w.w2, w.b2, 0.0, true, r),
                      Catch::Contains("[moe_experts] token 0 is routed to expert 0 twice"));
    ExpertSet wrong = w;
    wrong.w2[1] = grad_input({4, 6}, rng);
    CHECK_THROWS_WITH(moe_experts(x, gates, ok, wrong.w1, wrong.b1, wrong.w2, wrong.b2, 0.0, true, r),
                      Catch::Contains("[moe_experts] expert 1") && Catch::Contains("(4, 6)"));
    CHECK_THROWS_WITH(moe_experts(grad_input({3, 5}, rng), gates, ok, w.w1, w.b1, w.w2, w.b2, 0.0, true, r),
                      Catch::Contains("[moe_experts]") && Catch::Contains("(3, 5)"));
    CHECK_THROWS_WITH(moe_experts(x, gates, ok, w.w1, w.b1, w.w2, w.b2, 1.0, true, r),
                      Catch::Contains("[moe_experts] dropout probability"));
}

// ---- threads ------------------------------------------------------------------------------------

TEST_CASE("parallel_for runs every index once, never nests, and follows set_num_threads", "[core][perf]") {
    ThreadCountGuard guard;
    for (int threads : {1, 2, 3}) {
        set_num_threads(threads);
        CHECK(num_threads() == threads);
        for (Index n : {0, 1, 2, 7, 1000}) {
            std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
            for (auto& h : hits) h = 0;
            std::atomic<int> nested_parallel{0};
            parallel_for(n, [&](Index i) {
                ++hits[static_cast<std::size_t>(i)];
                // A loop inside a loop runs on the calling thread.
                parallel_for_dynamic(3, [&](Index) {
                    if (!in_parallel_region() && n > 1 && threads > 1) ++nested_parallel;
                });
            });
            for (auto& h : hits) CHECK(h == 1);
            CHECK(nested_parallel == 0);
            std::vector<std::atomic<int>> dyn(static_cast<std::size_t>(n));
            for (auto& h : dyn) h = 0;
            parallel_for_dynamic(n, [&](Index i) { ++dyn[static_cast<std::size_t>(i)]; });
            for (auto& h : dyn) CHECK(h == 1);
        }
    }
    CHECK_THROWS_WITH(set_num_threads(0), Catch::Contains("[set_num_threads]"));
}

// ---- memory -------------------------------------------------------------------------------------

TEST_CASE("freed tensor buffers are reused, and the cache can be emptied", "[core][perf]") {
    set_buffer_cache_limit(std::size_t(1) << 30);  // (off by default under AddressSanitizer)
    const Index n = 100000;  // 400 KB: a cached size
    const float* first = nullptr;
    {
        Tensorf a = Tensorf::empty({n});
        first = a.data();
    }
    CHECK(buffer_cache_bytes() >= static_cast<std::size_t>(n) * sizeof(float));
    {
        Tensorf b = Tensorf::empty({n});
        CHECK(b.data() == first);  // the same memory, warm
    }
    set_buffer_cache_limit(0);
    CHECK(buffer_cache_bytes() == 0);
    {
        Tensorf c = Tensorf::zeros({n});
        CHECK(c.at({n - 1}) == 0.f);
    }
    CHECK(buffer_cache_bytes() == 0);  // limit 0: nothing kept
    set_buffer_cache_limit(detail::BufferCache::kDefaultLimit);
}

// Resident memory of this process now, in bytes (Linux: the second field of /proc/self/statm).
static double resident_bytes() {
    std::ifstream statm("/proc/self/statm");
    double total_pages = 0, resident_pages = 0;
    statm >> total_pages >> resident_pages;
    return resident_pages * static_cast<double>(sysconf(_SC_PAGESIZE));
}

TEST_CASE("buffers the cache lets go of leave the resident set at once", "[core][perf]") {
    // 384 buffers of 256 KB (96 MB), written so every page is resident; then every other one is
    // freed with the cache off. Freed to malloc, such holes between live buffers stay resident
    // in its heap (the 4 MB buffer freed first makes glibc serve 256 KB from the heap, as it does
    // in any process that has freed a big buffer); mapped from the OS, they leave at once.
    set_buffer_cache_limit(0);
    { Tensorf big = Tensorf::full({Index(1) << 20}, 1.f); }
    const Index n = 65536;  // 256 KB of floats
    std::vector<Tensorf> held;
    for (int i = 0; i < 384; ++i) held.push_back(Tensorf::full({n}, 1.f));
    const double before_free = resident_bytes();
    for (std::size_t i = 0; i < held.size(); i += 2) held[i] = Tensorf();
    const double after_free = resident_bytes();
    CHECK(held.back().at({n - 1}) == 1.f);
    CHECK(buffer_cache_bytes() == 0);
#if !SEEMOE_ASAN
    CHECK(before_free - after_free >= 40.0 * 1024 * 1024);
#else
    // Under AddressSanitizer the buffers come from ASan's heap (so it can watch them), which
    // keeps freed memory in quarantine: only the bookkeeping is checked.
    CHECK(before_free > 0);
#endif
    set_buffer_cache_limit(detail::BufferCache::kDefaultLimit);
}

TEST_CASE("activations backward does not read are freed as soon as no handle holds them", "[core][perf]") {
    Rng rng(25);
    Tensord x = grad_input({4, 3}, rng);
    std::weak_ptr<Storage<double>> dropped, kept;
    Tensord loss;
    {
        Tensord y = add(x, x);       // backward of sum does not read y
        Tensord z = exp(x);          // exp's backward reads its own output
        dropped = y.storage();
        kept = z.storage();
        loss = add(sum(y), sum(z));
    }
    CHECK(dropped.expired());
    CHECK_FALSE(kept.expired());
    loss.backward();
    CHECK(kept.expired());  // freed by backward once its closure ran
    double expected = 0;
    for (double v : x.to_vector()) expected += 2 * v + std::exp(v);
    CHECK(loss.item() == Approx(expected));
    const Tensord gx = x.grad();
    for (Index i = 0; i < x.numel(); ++i) CHECK(gx.data()[i] == Approx(2 + std::exp(x.data()[i])));
    // A tensor the caller still holds keeps its values through backward.
    Tensord h = mul(x, 3.0);
    Tensord l2 = sum(h);
    l2.backward();
    CHECK(h.at({1, 2}) == Approx(3 * x.at({1, 2})));
}

TEST_CASE("zero_grad is lazy: gradients read as zero and the next backward starts afresh", "[core][perf]") {
    Rng rng(26);
    Tensord w = grad_input({3, 4}, rng);
    Tensord x = Tensord::randn({5, 4}, rng);
    auto step = [&] { sum(linear(x, w)).backward(); };
    step();
    const std::vector<double> once = w.grad().to_vector();
    step();
    for (std::size_t i = 0; i < once.size(); ++i) CHECK(w.grad().data()[i] == Approx(2 * once[i]));
    w.zero_grad();
    CHECK(w.has_grad());
    for (double v : w.grad().to_vector()) CHECK(v == 0.0);
    CHECK(w.grad_data_if_any()[0] == 0.0);
    w.zero_grad();
    step();  // written, not added onto stale contents
    for (std::size_t i = 0; i < once.size(); ++i) CHECK(w.grad().data()[i] == Approx(once[i]));
    // The optimisers' set_to_none drops the buffers; Adam then skips untouched parameters.
    Tensord unused = grad_input({2}, rng);
    AdamW<double> opt({w, unused});
    unused.grad_data()[0] = 1.0;
    opt.zero_grad(/*set_to_none=*/true);
    CHECK_FALSE(w.has_grad());
    CHECK_FALSE(unused.has_grad());
    const double before = unused.data()[0];
    step();
    opt.step();
    CHECK(unused.data()[0] == before);
    CHECK(opt.state()[1].step == 0);
    CHECK(opt.state()[0].step == 1);
}

// ---- the CLS-only encoder -------------------------------------------------------------------------

TEST_CASE("ViT::forward_cls equals the CLS row of forward, dropout and gradients included", "[nn][perf]") {
    Rng rng(27);
    nn::ViTConfig config;
    config.image_size = 8;
    config.patch_size = 4;
    config.dim = 8;
    config.n_blocks = 2;
    config.n_heads = 2;
    config.mlp_ratio = 2;
    config.dropout = 0.2;
    nn::ViT<double> vit(config, rng);
    Tensord images = grad_input({3, 3, 8, 8}, rng);
    auto params = vit.parameters();
    for (bool training : {true, false}) {
        vit.train(training);
        auto run = [&](bool cls_only, double& next_draw) {
            images.reset_grad();
            for (auto& p : params) p.reset_grad();
            Rng r(41);
            Tensord out = cls_only ? vit.forward_cls(images, r) : slice(vit.forward(images, r), 1, 0, 1);  // (B, 1, D)
            next_draw = r.uniform();  // the Rng advanced alike
            Rng seed(42);
            out.backward(Tensord::randn(out.shape(), seed));
            std::vector<double> values = out.to_vector();
            for (double v : images.grad().to_vector()) values.push_back(v);
            for (auto& p : params)
                for (double v : p.grad().to_vector()) values.push_back(v);
            return values;
        };
        double next_fast = 0, next_full = 0;
        const std::vector<double> fast = run(true, next_fast), full = run(false, next_full);
        CHECK(next_fast == next_full);
        REQUIRE(fast.size() == full.size());
        INFO("training " << training);
        for (std::size_t i = 0; i < fast.size(); ++i) CHECK(fast[i] == Approx(full[i]).epsilon(1e-12).margin(1e-13));
    }
}
