// Tests for ops/attention.hpp: gradient checks, the fused kernels against a naive per-head
// reference written with plain loops (forward and input gradients), sdpa against self_attention,
// the end-aligned causal mask, and the bad inputs both ops must reject.
#include <catch2/catch.hpp>

#include <seemoe/ops/attention.hpp>

#include <cmath>
#include <vector>

#include "gradcheck.hpp"

using seemoe::Index;
using seemoe::Rng;
using seemoe::Tensord;
using seemoe::Tensorf;
using seemoe::testing::grad_input;
using seemoe::testing::gradcheck;

namespace {

// Naive multi-head self-attention on qkv (B, T, 3C), forward and backward by plain loops.
struct NaiveResult {
    std::vector<double> out;    // (B, T, C)
    std::vector<double> d_qkv;  // (B, T, 3C), for upstream gradient d_out
};

NaiveResult naive_self_attention(const std::vector<double>& qkv, Index B, Index T, Index C,
                                 Index H, bool causal, const std::vector<double>& d_out) {
    const Index D = C / H;
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    NaiveResult r{std::vector<double>(B * T * C, 0.0), std::vector<double>(B * T * 3 * C, 0.0)};
    auto at = [&](Index b, Index t, Index part, Index h, Index d) {  // part 0 q, 1 k, 2 v
        return (b * T + t) * 3 * C + part * C + h * D + d;
    };
    for (Index b = 0; b < B; ++b) {
        for (Index h = 0; h < H; ++h) {
            std::vector<double> p(T * T, 0.0), dp(T * T, 0.0);
            for (Index t = 0; t < T; ++t) {
                const Index visible = causal ? t + 1 : T;
                double row_max = -1e300;
                for (Index s = 0; s < visible; ++s) {
                    double score = 0.0;
                    for (Index d = 0; d < D; ++d) score += qkv[at(b, t, 0, h, d)] * qkv[at(b, s, 1, h, d)];
                    p[t * T + s] = score * scale;
                    row_max = std::max(row_max, p[t * T + s]);
                }
                double total = 0.0;
                for (Index s = 0; s < visible; ++s) total += (p[t * T + s] = std::exp(p[t * T + s] - row_max));
                for (Index s = 0; s < visible; ++s) p[t * T + s] /= total;
                for (Index d = 0; d < D; ++d) {
                    double y = 0.0;
                    for (Index s = 0; s < visible; ++s) y += p[t * T + s] * qkv[at(b, s, 2, h, d)];
                    r.out[(b * T + t) * C + h * D + d] = y;
                }
            }
            // Backward of out = p v, p = softmax(score), score = q k / sqrt(D).
            for (Index t = 0; t < T; ++t) {
                const Index visible = causal ? t + 1 : T;
                double p_dot_dp = 0.0;
                for (Index s = 0; s < visible; ++s) {
                    for (Index d = 0; d < D; ++d) {
                        const double dy = d_out[(b * T + t) * C + h * D + d];
                        dp[t * T + s] += dy * qkv[at(b, s, 2, h, d)];
                        r.d_qkv[at(b, s, 2, h, d)] += p[t * T + s] * dy;
                    }
                    p_dot_dp += p[t * T + s] * dp[t * T + s];
                }
                for (Index s = 0; s < visible; ++s) {
                    const double d_score = p[t * T + s] * (dp[t * T + s] - p_dot_dp) * scale;
                    for (Index d = 0; d < D; ++d) {
                        r.d_qkv[at(b, t, 0, h, d)] += d_score * qkv[at(b, s, 1, h, d)];
                        r.d_qkv[at(b, s, 1, h, d)] += d_score * qkv[at(b, t, 0, h, d)];
                    }
                }
            }
        }
    }
    return r;
}

// Splits qkv (B, T, 3C) into q, k, v (B, H, T, D) leaves that require grad.
struct SplitQkv {
    Tensord q, k, v;
};
SplitQkv split_heads(const Tensord& qkv, Index H) {
    const Index B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, D = C / H;
    SplitQkv parts{Tensord::empty({B, H, T, D}), Tensord::empty({B, H, T, D}), Tensord::empty({B, H, T, D})};
    Tensord* dest[3] = {&parts.q, &parts.k, &parts.v};
    for (Index part = 0; part < 3; ++part)
        for (Index b = 0; b < B; ++b)
            for (Index h = 0; h < H; ++h)
                for (Index t = 0; t < T; ++t)
                    for (Index d = 0; d < D; ++d)
                        dest[part]->at({b, h, t, d}) = qkv.at({b, t, part * C + h * D + d});
    for (Tensord* t : dest) t->requires_grad_();
    return parts;
}

}  // namespace

// ---- gradient checks ---------------------------------------------------------------------------

TEST_CASE("self_attention gradient matches finite differences", "[ops]") {
    Rng rng(101);
    Tensord qkv = grad_input({2, 4, 18}, rng);  // B 2, T 4, C 6, 2 heads of D 3
    for (bool causal : {false, true}) {
        INFO("causal " << causal);
        CHECK_GRADCHECK(gradcheck([causal](const std::vector<Tensord>& in) {
            return seemoe::self_attention(in[0], 2, causal);
        }, {qkv}));
    }
}

TEST_CASE("scaled_dot_product_attention gradient matches finite differences", "[ops]") {
    Rng rng(102);
    SECTION("T == S") {
        Tensord q = grad_input({2, 2, 4, 3}, rng), k = grad_input({2, 2, 4, 3}, rng),
                v = grad_input({2, 2, 4, 3}, rng);
        for (bool causal : {false, true}) {
            INFO("causal " << causal);
            CHECK_GRADCHECK(gradcheck([causal](const std::vector<Tensord>& in) {
                return seemoe::scaled_dot_product_attention(in[0], in[1], in[2], causal);
            }, {q, k, v}));
        }
    }
    SECTION("T != S and a different value head dim") {
        // 3 new queries after 2 cached keys; v head dim 5 != q/k head dim 4.
        Tensord q = grad_input({1, 2, 3, 4}, rng), k = grad_input({1, 2, 5, 4}, rng),
                v = grad_input({1, 2, 5, 5}, rng);
        for (bool causal : {false, true}) {
            INFO("causal " << causal);
            CHECK_GRADCHECK(gradcheck([causal](const std::vector<Tensord>& in) {
                return seemoe::scaled_dot_product_attention(in[0], in[1], in[2], causal);
            }, {q, k, v}));
        }
    }
    SECTION("q, k and v are one tensor") {
        Tensord x = grad_input({1, 2, 4, 3}, rng);
        CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) {
            return seemoe::scaled_dot_product_attention(in[0], in[0], in[0], true);
        }, {x}));
    }
}

// ---- equivalences ------------------------------------------------------------------------------

TEST_CASE("self_attention equals the naive per-head reference, forward and gradient", "[ops]") {
    const Index B = 2, T = 5, C = 12, H = 3;
    for (bool causal : {false, true}) {
        INFO("causal " << causal);
        Rng rng(causal ? 7 : 8);
        Tensord qkv = grad_input({B, T, 3 * C}, rng);
        const Tensord d_out = Tensord::randn({B, T, C}, rng);
        Tensord out = seemoe::self_attention(qkv, H, causal);
        REQUIRE(out.shape() == seemoe::Shape{B, T, C});
        out.backward(d_out);
        const NaiveResult naive = naive_self_attention(qkv.to_vector(), B, T, C, H, causal, d_out.to_vector());
        double out_err = 0.0, grad_err = 0.0;
        for (Index i = 0; i < out.numel(); ++i) out_err = std::max(out_err, std::fabs(out.data()[i] - naive.out[i]));
        const Tensord grad = qkv.grad();
        for (Index i = 0; i < qkv.numel(); ++i) grad_err = std::max(grad_err, std::fabs(grad.data()[i] - naive.d_qkv[i]));
        CHECK(out_err < 1e-10);
        CHECK(grad_err < 1e-10);
    }
}

TEST_CASE("scaled_dot_product_attention equals self_attention on the same data", "[ops]") {
    const Index B = 2, T = 4, C = 8, H = 2, D = C / H;
    for (bool causal : {false, true}) {
        INFO("causal " << causal);
        Rng rng(causal ? 17 : 18);
        Tensord qkv = grad_input({B, T, 3 * C}, rng);
        const Tensord d_out = Tensord::randn({B, T, C}, rng);
        seemoe::self_attention(qkv, H, causal).backward(d_out);
        const Tensord fused_out = seemoe::self_attention(qkv, H, causal);

        SplitQkv parts = split_heads(qkv, H);
        Tensord out = seemoe::scaled_dot_product_attention(parts.q, parts.k, parts.v, causal);  // (B, H, T, D)
        Tensord d_heads = Tensord::empty({B, H, T, D});
        for (Index b = 0; b < B; ++b)
            for (Index h = 0; h < H; ++h)
                for (Index t = 0; t < T; ++t)
                    for (Index d = 0; d < D; ++d) d_heads.at({b, h, t, d}) = d_out.at({b, t, h * D + d});
        out.backward(d_heads);

        const Tensord grads[3] = {parts.q.grad(), parts.k.grad(), parts.v.grad()};
        const Tensord fused_grad = qkv.grad();
        double out_err = 0.0, grad_err = 0.0;
        for (Index b = 0; b < B; ++b)
            for (Index h = 0; h < H; ++h)
                for (Index t = 0; t < T; ++t)
                    for (Index d = 0; d < D; ++d) {
                        out_err = std::max(out_err, std::fabs(out.at({b, h, t, d}) - fused_out.at({b, t, h * D + d})));
                        for (Index part = 0; part < 3; ++part)
                            grad_err = std::max(grad_err, std::fabs(grads[part].at({b, h, t, d}) -
                                                                    fused_grad.at({b, t, part * C + h * D + d})));
                    }
        CHECK(out_err < 1e-12);
        CHECK(grad_err < 1e-12);
    }
}

TEST_CASE("self_attention in float agrees with double", "[ops]") {
    Rng rng(55);
    const Tensord qkv = Tensord::randn({3, 6, 3 * 16}, rng);
    Tensorf qkv_f = Tensorf::empty(qkv.shape());
    for (Index i = 0; i < qkv.numel(); ++i) qkv_f.data()[i] = static_cast<float>(qkv.data()[i]);
    const Tensord y = seemoe::self_attention(qkv, 4, true);
    const Tensorf y_f = seemoe::self_attention(qkv_f, 4, true);
    for (Index i = 0; i < y.numel(); ++i) CHECK(y_f.data()[i] == Approx(y.data()[i]).margin(1e-5));
}

// ---- known values ------------------------------------------------------------------------------

TEST_CASE("causal attention: the first query sees only the first key", "[ops]") {
    Rng rng(3);
    const Tensord q = Tensord::randn({1, 1, 3, 2}, rng), k = Tensord::randn({1, 1, 3, 2}, rng),
                  v = Tensord::randn({1, 1, 3, 2}, rng);
    const Tensord y = seemoe::scaled_dot_product_attention(q, k, v, true);
    CHECK(y.at({0, 0, 0, 0}) == v.at({0, 0, 0, 0}));
    CHECK(y.at({0, 0, 0, 1}) == v.at({0, 0, 0, 1}));
    // The last query sees every key, as without the mask.
    const Tensord full = seemoe::scaled_dot_product_attention(q, k, v, false);
    CHECK(y.at({0, 0, 2, 1}) == Approx(full.at({0, 0, 2, 1})).epsilon(1e-14));
    CHECK(y.at({0, 0, 1, 1}) != Approx(full.at({0, 0, 1, 1})).epsilon(1e-6));
}

TEST_CASE("causal mask is aligned to the end: cached queries see all earlier keys", "[ops]") {
    Rng rng(4);
    const Tensord q = Tensord::randn({2, 2, 5, 4}, rng), k = Tensord::randn({2, 2, 5, 4}, rng),
                  v = Tensord::randn({2, 2, 5, 4}, rng);
    const Tensord full = seemoe::scaled_dot_product_attention(q, k, v, true);
    // The last two queries alone against all five keys (a KV cache of three) give the same rows.
    Tensord q_last = Tensord::empty({2, 2, 2, 4});
    for (Index b = 0; b < 2; ++b)
        for (Index h = 0; h < 2; ++h)
            for (Index t = 0; t < 2; ++t)
                for (Index d = 0; d < 4; ++d) q_last.at({b, h, t, d}) = q.at({b, h, 3 + t, d});
    const Tensord cached = seemoe::scaled_dot_product_attention(q_last, k, v, true);
    for (Index b = 0; b < 2; ++b)
        for (Index h = 0; h < 2; ++h)
            for (Index t = 0; t < 2; ++t)
                for (Index d = 0; d < 4; ++d)
                    CHECK(cached.at({b, h, t, d}) == Approx(full.at({b, h, 3 + t, d})).epsilon(1e-13));
}

TEST_CASE("equal scores average the values, scale is 1/sqrt(head dim)", "[ops]") {
    // Identical keys: every query weighs the values equally.
    const Tensord q = Tensord::from_vector({1, 1, 1, 2}, {0.3, -0.7});
    const Tensord k = Tensord::from_vector({1, 1, 2, 2}, {1, 2, 1, 2});
    const Tensord v = Tensord::from_vector({1, 1, 2, 2}, {1, 10, 3, 20});
    const Tensord y = seemoe::scaled_dot_product_attention(q, k, v, false);
    CHECK(y.at({0, 0, 0, 0}) == Approx(2.0).epsilon(1e-14));
    CHECK(y.at({0, 0, 0, 1}) == Approx(15.0).epsilon(1e-14));
    // Scores q.k = 4 and 0 with D = 4: p = softmax([4/2, 0]) = [e^2, 1] / (e^2 + 1).
    const Tensord q4 = Tensord::from_vector({1, 1, 1, 4}, {1, 1, 1, 1});
    const Tensord k4 = Tensord::from_vector({1, 1, 2, 4}, {1, 1, 1, 1, 0, 0, 0, 0});
    const Tensord v4 = Tensord::from_vector({1, 1, 2, 1}, {1, 0});
    const double e2 = std::exp(2.0);
    CHECK(seemoe::scaled_dot_product_attention(q4, k4, v4, false).item() == Approx(e2 / (e2 + 1)).epsilon(1e-14));
}

// ---- bad inputs --------------------------------------------------------------------------------

TEST_CASE("scaled_dot_product_attention rejects mismatched shapes", "[ops]") {
    const Tensord q = Tensord::zeros({2, 2, 3, 4});
    const Tensord k = Tensord::zeros({2, 2, 5, 4});
    const Tensord v = Tensord::zeros({2, 2, 5, 4});
    using seemoe::scaled_dot_product_attention;
    CHECK_THROWS_WITH(scaled_dot_product_attention(Tensord::zeros({2, 3, 4}), k, v, false),
                      Catch::Contains("[scaled_dot_product_attention]") && Catch::Contains("(2, 3, 4)"));
    CHECK_THROWS_WITH(scaled_dot_product_attention(q, Tensord::zeros({2, 3, 5, 4}), v, false),
                      Catch::Contains("[scaled_dot_product_attention]") && Catch::Contains("(2, 3, 5, 4)"));
    CHECK_THROWS_WITH(scaled_dot_product_attention(q, k, Tensord::zeros({2, 2, 4, 4}), false),
                      Catch::Contains("[scaled_dot_product_attention]") && Catch::Contains("(2, 2, 4, 4)"));
    CHECK_THROWS_WITH(scaled_dot_product_attention(q, Tensord::zeros({2, 2, 5, 3}), v, false),
                      Catch::Contains("[scaled_dot_product_attention]") && Catch::Contains("(2, 2, 5, 3)"));
    // Causal with more queries than keys would leave the first queries with nothing to see.
    CHECK_THROWS_WITH(scaled_dot_product_attention(k, q, q, true),
                      Catch::Contains("[scaled_dot_product_attention]") && Catch::Contains("causal"));
}

TEST_CASE("self_attention rejects shapes that do not split into heads", "[ops]") {
    using seemoe::self_attention;
    CHECK_THROWS_WITH(self_attention(Tensord::zeros({2, 3, 10}), 1, false),
                      Catch::Contains("[self_attention]") && Catch::Contains("(2, 3, 10)"));
    CHECK_THROWS_WITH(self_attention(Tensord::zeros({2, 12}), 2, false),
                      Catch::Contains("[self_attention]") && Catch::Contains("(2, 12)"));
    CHECK_THROWS_WITH(self_attention(Tensord::zeros({2, 3, 12}), 3, false),
                      Catch::Contains("[self_attention]") && Catch::Contains("(2, 3, 12)"));
    CHECK_THROWS_WITH(self_attention(Tensord::zeros({2, 3, 12}), 0, false),
                      Catch::Contains("[self_attention]") && Catch::Contains("0 heads"));
}

TEST_CASE("cached_self_attention: feeding a sequence in pieces equals causal self_attention", "[ops]") {
    Rng rng(21);
    const Index B = 2, T = 5, H = 2, C = 6;
    const Tensord qkv = Tensord::randn({B, T, 3 * C}, rng);
    const Tensord full = seemoe::self_attention(qkv, H, true);  // (B, T, C)
    seemoe::KVCache<double> cache;
    cache.reset(B, H, C / H, T);
    // Three positions at once (a prompt), then one at a time (generation).
    Index done = 0;
    for (Index piece : {3, 1, 1}) {
        Tensord rows = Tensord::empty({B, piece, 3 * C});
        for (Index b = 0; b < B; ++b)
            for (Index t = 0; t < piece; ++t)
                for (Index c = 0; c < 3 * C; ++c) rows.at({b, t, c}) = qkv.at({b, done + t, c});
        const Tensord out = seemoe::cached_self_attention(rows, H, cache);  // (B, piece, C)
        REQUIRE(out.shape() == seemoe::Shape{B, piece, C});
        for (Index b = 0; b < B; ++b)
            for (Index t = 0; t < piece; ++t)
                for (Index c = 0; c < C; ++c)
                    CHECK(out.at({b, t, c}) == Approx(full.at({b, done + t, c})).epsilon(1e-12));
        done += piece;
        CHECK(cache.length == done);
    }
    CHECK_THROWS_WITH(seemoe::cached_self_attention(Tensord::zeros({B, 1, 3 * C}), H, cache),
                      Catch::Contains("KV cache full"));
    seemoe::KVCache<double> unset;
    CHECK_THROWS_WITH(seemoe::cached_self_attention(Tensord::zeros({B, 1, 3 * C}), H, unset),
                      Catch::Contains("was not reset"));
    cache.reset(B + 1, H, C / H, T);
    CHECK_THROWS_WITH(seemoe::cached_self_attention(Tensord::zeros({B, 1, 3 * C}), H, cache),
                      Catch::Contains("does not match"));
}
