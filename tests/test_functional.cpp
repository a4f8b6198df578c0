// Tests for ops/functional.hpp: softmax, log_softmax, cross_entropy, layer_norm, dropout.
// Gradient checks in double, hand-computed values, and the bad inputs each op must reject.
#include <catch2/catch.hpp>

#include <seemoe/ops/functional.hpp>

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

Tensord values(const seemoe::Shape& shape, const std::vector<double>& v) {
    return Tensord::from_vector(shape, v);
}

}  // namespace

// ---- softmax / log_softmax ---------------------------------------------------------------------

TEST_CASE("softmax of [1, 2, 3] matches the hand-computed values", "[ops]") {
    const Tensord y = seemoe::softmax(values({3}, {1, 2, 3}));
    // e^k / (e + e^2 + e^3)
    CHECK(y.data()[0] == Approx(0.09003057317038046).epsilon(1e-12));
    CHECK(y.data()[1] == Approx(0.24472847105479767).epsilon(1e-12));
    CHECK(y.data()[2] == Approx(0.66524095577481880).epsilon(1e-12));
}

TEST_CASE("softmax is shift invariant and does not overflow on large logits", "[ops]") {
    const Tensord small = seemoe::softmax(values({2, 3}, {1, 2, 3, -1, 0, 1}));
    const Tensorf large = seemoe::softmax(Tensorf::from_vector({1, 3}, {1001.f, 1002.f, 1003.f}));
    for (int i = 0; i < 3; ++i) {
        CHECK(small.data()[i] == Approx(small.data()[3 + i]).epsilon(1e-12));
        CHECK(std::isfinite(large.data()[i]));
        CHECK(large.data()[i] == Approx(small.data()[i]).epsilon(1e-6));
    }
}

TEST_CASE("log_softmax of [1, 2, 3] is x - logsumexp(x)", "[ops]") {
    const Tensord y = seemoe::log_softmax(values({3}, {1, 2, 3}));
    const double lse = 3.40760596444438;  // log(e + e^2 + e^3)
    for (int i = 0; i < 3; ++i) CHECK(y.data()[i] == Approx(i + 1 - lse).epsilon(1e-12));
    // And -1000 stays finite where log(softmax) would underflow to -inf.
    const Tensord far = seemoe::log_softmax(values({2}, {0, -1000}));
    CHECK(far.data()[1] == Approx(-1000.0).epsilon(1e-12));
}

TEST_CASE("softmax along an inner axis equals softmax of the transposed data", "[ops]") {
    Rng rng(3);
    const Tensord x = Tensord::randn({2, 4, 3}, rng);  // softmax over the axis of size 4
    const Tensord y = seemoe::softmax(x, 1);
    const Tensord ly = seemoe::log_softmax(x, -2);
    for (Index b = 0; b < 2; ++b) {
        for (Index c = 0; c < 3; ++c) {
            Tensord column = Tensord::empty({4});
            for (Index i = 0; i < 4; ++i) column.data()[i] = x.at({b, i, c});
            const Tensord expected = seemoe::softmax(column);
            for (Index i = 0; i < 4; ++i) {
                CHECK(y.at({b, i, c}) == Approx(expected.data()[i]).epsilon(1e-12));
                CHECK(ly.at({b, i, c}) == Approx(std::log(expected.data()[i])).epsilon(1e-12));
            }
        }
    }
}

TEST_CASE("softmax and log_softmax gradients match finite differences", "[ops]") {
    Rng rng(11);
    for (Index axis : {Index(-1), Index(1), Index(0)}) {
        INFO("axis " << axis);
        Tensord x = grad_input({3, 4, 5}, rng);
        CHECK_GRADCHECK(gradcheck([axis](const std::vector<Tensord>& in) {
            return seemoe::softmax(in[0], axis);
        }, {x}));
        CHECK_GRADCHECK(gradcheck([axis](const std::vector<Tensord>& in) {
            return seemoe::log_softmax(in[0], axis);
        }, {x}));
    }
}

TEST_CASE("softmax on many rows (several parallel blocks) equals row-by-row softmax", "[ops]") {
    Rng rng(5);
    const Index rows = 700, cols = 64;  // 44800 values: more than one row block
    Tensord x = grad_input({rows, cols}, rng);
    Tensord y = seemoe::log_softmax(x);
    const Tensord seed = Tensord::randn({rows, cols}, rng);
    y.backward(seed);
    for (Index r : {Index(0), Index(255), Index(256), Index(699)}) {
        Tensord row = grad_input({cols}, rng);
        std::copy_n(x.data() + r * cols, cols, row.data());
        Tensord row_y = seemoe::log_softmax(row);
        row_y.backward(Tensord::from_vector({cols}, std::vector<double>(seed.data() + r * cols,
                                                                         seed.data() + (r + 1) * cols)));
        for (Index c = 0; c < cols; ++c) {
            CHECK(y.data()[r * cols + c] == Approx(row_y.data()[c]).epsilon(1e-12));
            CHECK(x.grad().data()[r * cols + c] == Approx(row.grad().data()[c]).epsilon(1e-12));
        }
    }
}

TEST_CASE("softmax rejects bad axes", "[ops]") {
    const Tensord x = Tensord::zeros({2, 3});
    CHECK_THROWS_WITH(seemoe::softmax(x, 2), Catch::Contains("[softmax]") && Catch::Contains("(2, 3)"));
    CHECK_THROWS_WITH(seemoe::log_softmax(x, -3), Catch::Contains("[log_softmax]") && Catch::Contains("(2, 3)"));
    CHECK_THROWS_WITH(seemoe::softmax(Tensord::scalar(1.0)), Catch::Contains("[softmax]"));
}

// ---- cross_entropy -----------------------------------------------------------------------------

TEST_CASE("cross_entropy of uniform logits is ln V", "[ops]") {
    const Index V = 7;
    const Tensord logits = Tensord::full({2, 3, V}, 0.25);
    const Tensord loss = seemoe::cross_entropy(logits, {0, 6, 3, 2, 1, 5});
    CHECK(loss.shape().empty());
    CHECK(loss.item() == Approx(std::log(7.0)).epsilon(1e-12));
    const Tensorf logits_f = Tensorf::full({4, V}, -3.0f);
    CHECK(seemoe::cross_entropy(logits_f, {0, 1, 2, 3}).item() == Approx(std::log(7.0)).epsilon(1e-6));
}

TEST_CASE("cross_entropy known values, gradient and ignored targets", "[ops]") {
    // Row 0: -log softmax([1,2,3])[2] = logsumexp - 3; row 1 is ignored; row 2: -log(1/2).
    Tensord logits = values({3, 3}, {1, 2, 3, 9, 9, 9, 0, 0, -1e9});
    logits.requires_grad_();
    const Tensord loss = seemoe::cross_entropy(logits, {2, -100, 1});
    const double row0 = 3.40760596444438 - 3.0, row2 = std::log(2.0);
    CHECK(loss.item() == Approx((row0 + row2) / 2).epsilon(1e-12));
    loss.backward();
    const Tensord g = logits.grad();
    // (softmax - one_hot) / 2 for counted rows; zero for the ignored row.
    CHECK(g.at({0, 0}) == Approx(0.09003057317038046 / 2).epsilon(1e-10));
    CHECK(g.at({0, 2}) == Approx((0.66524095577481880 - 1) / 2).epsilon(1e-10));
    for (Index c = 0; c < 3; ++c) CHECK(g.at({1, c}) == 0.0);
    CHECK(g.at({2, 0}) == Approx(0.25).epsilon(1e-12));
    CHECK(g.at({2, 1}) == Approx(-0.25).epsilon(1e-12));
}

TEST_CASE("cross_entropy with every target ignored is 0 with zero gradient", "[ops]") {
    Tensord logits = values({2, 2}, {1, 2, 3, 4});
    logits.requires_grad_();
    const Tensord loss = seemoe::cross_entropy(logits, {-1, -1}, /*ignore_index=*/-1);
    CHECK(loss.item() == 0.0);
    loss.backward();
    for (double g : logits.grad().to_vector()) CHECK(g == 0.0);
}

TEST_CASE("cross_entropy gradient matches finite differences, with ignored targets", "[ops]") {
    Rng rng(21);
    Tensord logits = grad_input({2, 3, 5}, rng, 2.0);
    const std::vector<Index> targets{4, -100, 0, 2, -100, 3};
    CHECK_GRADCHECK(gradcheck([&](const std::vector<Tensord>& in) {
        return seemoe::cross_entropy(in[0], targets);
    }, {logits}));
}

TEST_CASE("cross_entropy over many rows equals the mean of per-row losses", "[ops]") {
    Rng rng(8);
    const Index rows = 600, V = 50;  // 30000 values: several row blocks
    const Tensord logits = Tensord::randn({rows, V}, rng);
    std::vector<Index> targets(rows);
    double expected = 0.0;
    Index counted = 0;
    for (Index r = 0; r < rows; ++r) {
        targets[r] = r % 7 == 0 ? -100 : rng.randint(0, V);
        if (targets[r] < 0) continue;
        double lse = 0.0;
        for (Index c = 0; c < V; ++c) lse += std::exp(logits.at({r, c}));
        expected += std::log(lse) - logits.at({r, targets[r]});
        ++counted;
    }
    CHECK(seemoe::cross_entropy(logits, targets).item() == Approx(expected / counted).epsilon(1e-12));
}

TEST_CASE("cross_entropy with label smoothing: closed form and gradient", "[ops]") {
    // Against the smoothed target q = (1-e) one_hot + e/V: loss = -sum_j q_j log softmax(x)_j per
    // counted row, d loss / dx = (softmax(x) - q) / rows counted.
    const double e = 0.1;
    Tensord logits = values({3, 4}, {1, 2, 3, -1, 5, 5, 5, 5, 2, -0.5, 0.25, 1});
    logits.requires_grad_();
    const std::vector<Index> targets{2, -100, 0};
    const Tensord loss = seemoe::cross_entropy(logits, targets, seemoe::kIgnoreIndex, e);
    double expected = 0.0;
    std::vector<std::vector<double>> grad(3, std::vector<double>(4, 0.0));
    for (Index r : {0, 2}) {
        double sum = 0.0;
        for (Index c = 0; c < 4; ++c) sum += std::exp(logits.at({r, c}));
        for (Index c = 0; c < 4; ++c) {
            const double p = std::exp(logits.at({r, c})) / sum;
            const double q = (c == targets[r] ? 1.0 - e : 0.0) + e / 4.0;
            expected -= q * std::log(p);
            grad[r][c] = (p - q) / 2.0;
        }
    }
    CHECK(loss.item() == Approx(expected / 2.0).epsilon(1e-12));
    loss.backward();
    for (Index r = 0; r < 3; ++r)
        for (Index c = 0; c < 4; ++c) CHECK(logits.grad().at({r, c}) == Approx(grad[r][c]).margin(1e-14));
    // e = 0 is the plain loss, bit for bit.
    CHECK(seemoe::cross_entropy(logits.detach(), targets, seemoe::kIgnoreIndex, 0.0).item() ==
          seemoe::cross_entropy(logits.detach(), targets).item());
    // The loss is smallest where softmax equals q, not at an infinitely confident logit.
    const Tensord at_q = values({1, 2}, {std::log(1 - e / 2), std::log(e / 2)});
    const Tensord sharper = values({1, 2}, {std::log(1 - e / 4), std::log(e / 4)});
    CHECK(seemoe::cross_entropy(at_q, {0}, seemoe::kIgnoreIndex, e).item() <
          seemoe::cross_entropy(sharper, {0}, seemoe::kIgnoreIndex, e).item());
}
TEST_CASE("cross_entropy with label smoothing: gradient matches finite differences", "[ops]") {
    Rng rng(33);
    Tensord logits = grad_input({2, 3, 6}, rng, 2.0);
    const std::vector<Index> targets{5, -100, 0, 2, 1, -100};
    for (double e : {0.05, 0.3}) {
        CHECK_GRADCHECK(gradcheck([&](const std::vector<Tensord>& in) {
            return seemoe::cross_entropy(in[0], targets, seemoe::kIgnoreIndex, e);
        }, {logits}));
    }
}
TEST_CASE("cross_entropy rejects bad targets", "[ops]") {
    const Tensord logits = Tensord::zeros({2, 4});
    CHECK_THROWS_WITH(seemoe::cross_entropy(logits, {1, 2, 3}),
                      Catch::Contains("[cross_entropy]") && Catch::Contains("(2, 4)"));
    CHECK_THROWS_WITH(seemoe::cross_entropy(logits, {1, 4}),
                      Catch::Contains("[cross_entropy]") && Catch::Contains("target 4"));
    CHECK_THROWS_WITH(seemoe::cross_entropy(logits, {-1, 0}),
                      Catch::Contains("[cross_entropy]") && Catch::Contains("target -1"));
    CHECK_THROWS_WITH(seemoe::cross_entropy(Tensord::zeros({2, 0}), {}),
                      Catch::Contains("[cross_entropy]") && Catch::Contains("(2, 0)"));
    CHECK_THROWS_WITH(seemoe::cross_entropy(logits, {1, 2}, seemoe::kIgnoreIndex, 1.0),
                      Catch::Contains("[cross_entropy]") && Catch::Contains("label_smoothing"));
}

// ---- layer_norm --------------------------------------------------------------------------------

TEST_CASE("layer_norm of [1, 2, 3, 4] matches the hand-computed values", "[ops]") {
    // mean 2.5, biased variance 1.25.
    const Tensord x = values({1, 4}, {1, 2, 3, 4});
    const Tensord plain = seemoe::layer_norm(x, Tensord(), Tensord());
    const Tensord affine = seemoe::layer_norm(x, values({4}, {1, 2, 3, 4}), values({4}, {0, 0, 1, -1}));
    const double rstd = 1.0 / std::sqrt(1.25 + 1e-5);
    const double expected_plain[4] = {-1.5 * rstd, -0.5 * rstd, 0.5 * rstd, 1.5 * rstd};
    const double expected_affine[4] = {-1.5 * rstd, -1.0 * rstd, 1.5 * rstd + 1, 6.0 * rstd - 1};
    for (int i = 0; i < 4; ++i) {
        CHECK(plain.data()[i] == Approx(expected_plain[i]).epsilon(1e-12));
        CHECK(affine.data()[i] == Approx(expected_affine[i]).epsilon(1e-12));
    }
}

TEST_CASE("layer_norm output rows have mean 0 and variance 1", "[ops]") {
    Rng rng(4);
    const Tensorf x = Tensorf::randn({6, 32}, rng, 5.0f, 3.0f);  // far from mean 0 / variance 1
    const Tensorf y = seemoe::layer_norm(x, Tensorf(), Tensorf(), 1e-5);
    for (Index r = 0; r < 6; ++r) {
        double mean = 0.0, var = 0.0;
        for (Index c = 0; c < 32; ++c) mean += y.at({r, c}) / 32.0;
        for (Index c = 0; c < 32; ++c) var += (y.at({r, c}) - mean) * (y.at({r, c}) - mean) / 32.0;
        CHECK(std::fabs(mean) < 1e-5);
        CHECK(var == Approx(1.0).epsilon(1e-4));
    }
}

TEST_CASE("layer_norm gradients match finite differences, with and without affine", "[ops]") {
    Rng rng(31);
    Tensord x = grad_input({2, 3, 6}, rng);
    Tensord weight = grad_input({6}, rng);
    Tensord bias = grad_input({6}, rng);
    SECTION("weight and bias") {
        CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) {
            return seemoe::layer_norm(in[0], in[1], in[2]);
        }, {x, weight, bias}));
    }
    SECTION("no affine") {
        CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) {
            return seemoe::layer_norm(in[0], Tensord(), Tensord());
        }, {x}));
    }
    SECTION("weight only, bias only") {
        CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) {
            return seemoe::layer_norm(in[0], in[1], Tensord());
        }, {x, weight}));
        CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) {
            return seemoe::layer_norm(in[0], Tensord(), in[1]);
        }, {x, bias}));
    }
    SECTION("weight needs no grad") {
        Tensord frozen = weight.detach();
        CHECK_GRADCHECK(gradcheck([&](const std::vector<Tensord>& in) {
            return seemoe::layer_norm(in[0], frozen, in[1]);
        }, {x, bias}));
    }
}

TEST_CASE("layer_norm weight gradient sums over all row blocks", "[ops]") {
    Rng rng(9);
    const Index rows = 300, C = 128;  // 38400 values: several row blocks
    Tensord x = Tensord::randn({rows, C}, rng);
    Tensord weight = grad_input({C}, rng);
    Tensord bias = grad_input({C}, rng);
    const Tensord seed = Tensord::randn({rows, C}, rng);
    seemoe::layer_norm(x, weight, bias).backward(seed);
    // Reference: dweight = sum over rows of dy * xhat, dbias = sum of dy, by plain loops.
    for (Index c : {Index(0), Index(77), Index(127)}) {
        double dw = 0.0, db = 0.0;
        for (Index r = 0; r < rows; ++r) {
            double mean = 0.0, var = 0.0;
            for (Index j = 0; j < C; ++j) mean += x.at({r, j}) / C;
            for (Index j = 0; j < C; ++j) var += (x.at({r, j}) - mean) * (x.at({r, j}) - mean) / C;
            dw += seed.at({r, c}) * (x.at({r, c}) - mean) / std::sqrt(var + 1e-5);
            db += seed.at({r, c});
        }
        CHECK(weight.grad().data()[c] == Approx(dw).epsilon(1e-10));
        CHECK(bias.grad().data()[c] == Approx(db).epsilon(1e-10));
    }
}

TEST_CASE("layer_norm rejects mismatched parameters", "[ops]") {
    const Tensord x = Tensord::zeros({2, 4});
    CHECK_THROWS_WITH(seemoe::layer_norm(x, Tensord::ones({3}), Tensord()),
                      Catch::Contains("[layer_norm]") && Catch::Contains("(3,)") && Catch::Contains("(2, 4)"));
    CHECK_THROWS_WITH(seemoe::layer_norm(x, Tensord(), Tensord::zeros({4, 1})),
                      Catch::Contains("[layer_norm]") && Catch::Contains("(4, 1)"));
    CHECK_THROWS_WITH(seemoe::layer_norm(Tensord::zeros({2, 0}), Tensord(), Tensord()),
                      Catch::Contains("[layer_norm]") && Catch::Contains("(2, 0)"));
    CHECK_THROWS_WITH(seemoe::layer_norm(x, Tensord(), Tensord(), -1.0), Catch::Contains("[layer_norm]"));
}

// ---- dropout -----------------------------------------------------------------------------------

TEST_CASE("dropout in eval mode or with p = 0 is the identity", "[ops]") {
    Rng rng(1);
    const Tensorf x = Tensorf::randn({4, 5}, rng);
    CHECK(seemoe::dropout(x, 0.5, /*training=*/false, rng).same_node(x));
    CHECK(seemoe::dropout(x, 0.0, /*training=*/true, rng).same_node(x));
}

TEST_CASE("dropout in training keeps about 1 - p of the values, scaled by 1/(1-p)", "[ops]") {
    Rng rng(2);
    const Index n = 100000;
    const Tensord x = Tensord::full({n}, 2.0);
    const Tensord y = seemoe::dropout(x, 0.3, true, rng);
    Index kept = 0;
    bool scaled_right = true;
    for (double v : y.to_vector()) {
        if (v == 0.0) continue;
        ++kept;
        scaled_right = scaled_right && std::fabs(v - 2.0 / 0.7) < 1e-12;
    }
    CHECK(scaled_right);
    // Binomial(100000, 0.7): standard deviation ~145, so +-1500 is ~10 sigma.
    CHECK(std::abs(kept - 70000) < 1500);
    CHECK(seemoe::dropout(x, 1.0, true, rng).vector().cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("dropout mask is fixed by the seed and reused by backward", "[ops]") {
    Rng rng(6);
    Tensord x = grad_input({3, 7}, rng);
    Rng first(42), second(42);
    const Tensord a = seemoe::dropout(x, 0.5, true, first);
    const Tensord b = seemoe::dropout(x, 0.5, true, second);
    CHECK(a.to_vector() == b.to_vector());
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) {
        Rng fixed(42);  // re-seeded at every evaluation, so every evaluation uses the same mask
        return seemoe::dropout(in[0], 0.5, true, fixed);
    }, {x}));
    // Gradient is exactly the mask scaled by 2 (p = 0.5), where the output is nonzero.
    Tensord y = seemoe::dropout(x, 0.5, true, first);
    x.reset_grad();
    y.backward(Tensord::ones({3, 7}));
    const Tensord g = x.grad();
    for (Index i = 0; i < 21; ++i) CHECK(g.data()[i] == (y.data()[i] != 0.0 ? 2.0 : 0.0));
}

TEST_CASE("dropout rejects probabilities outside [0, 1]", "[ops]") {
    Rng rng(0);
    const Tensorf x = Tensorf::zeros({2, 3});
    CHECK_THROWS_WITH(seemoe::dropout(x, 1.5, true, rng),
                      Catch::Contains("[dropout]") && Catch::Contains("(2, 3)"));
    CHECK_THROWS_WITH(seemoe::dropout(x, -0.1, false, rng), Catch::Contains("[dropout]"));
}
