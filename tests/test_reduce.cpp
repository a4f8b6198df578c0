// tests/test_reduce.cpp — sum, mean and max: hand-computed values on every axis, gradient checks
// in double, the first-argmax rule for ties, and errors for bad axes and empty reductions.
#include <catch2/catch.hpp>

#include <seemoe/ops/reduce.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "gradcheck.hpp"

using namespace seemoe;
using seemoe::testing::grad_input;
using seemoe::testing::gradcheck;
using Catch::Contains;

namespace {
// (2, 3, 4) holding 0, 1, ..., 23.
Tensord counting_234() {
    Tensord t = Tensord::empty({2, 3, 4});
    for (Index i = 0; i < 24; ++i) t.data()[i] = static_cast<double>(i);
    return t;
}
}  // namespace

TEST_CASE("sum and mean over everything", "[ops]") {
    const Tensord x = counting_234();
    const Tensord s = sum(x);
    CHECK(s.shape() == Shape{});
    CHECK(s.item() == 276.0);  // 0 + 1 + ... + 23
    CHECK(mean(x).shape() == Shape{});
    CHECK(mean(x).item() == 11.5);
    CHECK(sum(Tensord::zeros({0, 3})).item() == 0.0);
    CHECK(sum(Tensord::scalar(4.5)).item() == 4.5);

    Tensord v = Tensord::from_vector({2, 2}, {1, 2, 3, 4}).requires_grad_();
    mean(v).backward();
    CHECK(v.grad().to_vector() == std::vector<double>(4, 0.25));
    sum(v).backward();  // leaves accumulate
    CHECK(v.grad().to_vector() == std::vector<double>(4, 1.25));
}

TEST_CASE("sum and mean along an axis, with and without keepdim", "[ops]") {
    const Tensord x = counting_234();
    const Tensord s0 = sum(x, 0);
    CHECK(s0.shape() == Shape{3, 4});
    CHECK(s0.at({0, 0}) == 12.0);  // 0 + 12
    CHECK(s0.at({2, 3}) == 34.0);  // 11 + 23
    const Tensord s1 = sum(x, 1, true);
    CHECK(s1.shape() == Shape{2, 1, 4});
    CHECK(s1.at({0, 0, 0}) == 12.0);  // 0 + 4 + 8
    CHECK(s1.at({1, 0, 3}) == 57.0);  // 15 + 19 + 23
    const Tensord s2 = sum(x, -1);
    CHECK(s2.shape() == Shape{2, 3});
    CHECK(s2.to_vector() == std::vector<double>{6, 22, 38, 54, 70, 86});
    CHECK(sum(x, 2, true).shape() == Shape{2, 3, 1});
    CHECK(sum(x, -3).to_vector() == s0.to_vector());

    const Tensord m1 = mean(x, 1);
    CHECK(m1.shape() == Shape{2, 4});
    CHECK(m1.to_vector() == std::vector<double>{4, 5, 6, 7, 16, 17, 18, 19});
    CHECK(mean(x, -1, true).shape() == Shape{2, 3, 1});
    CHECK(mean(x, -1).to_vector() == std::vector<double>{1.5, 5.5, 9.5, 13.5, 17.5, 21.5});

    // An empty axis sums to zeros; a 1-D tensor reduces to shape ().
    const Tensord empty_axis = sum(Tensord::ones({2, 0, 3}), 1);
    CHECK(empty_axis.shape() == Shape{2, 3});
    CHECK(empty_axis.to_vector() == std::vector<double>(6, 0.0));
    CHECK(sum(Tensord::from_vector({3}, {1, 2, 3}), 0).shape() == Shape{});
    CHECK(sum(Tensord::from_vector({3}, {1, 2, 3}), 0).item() == 6.0);

    // Gradient of sum along an axis: every element of a reduced group gets that group's seed.
    Tensord v = Tensord::from_vector({2, 3}, {1, 2, 3, 4, 5, 6}).requires_grad_();
    sum(v, 0).backward(Tensord::from_vector({3}, {10, 20, 30}));
    CHECK(v.grad().to_vector() == std::vector<double>{10, 20, 30, 10, 20, 30});
    v.zero_grad();
    mean(v, 1).backward(Tensord::from_vector({2}, {3, 6}));
    CHECK(v.grad().to_vector() == std::vector<double>{1, 1, 1, 2, 2, 2});
}

TEST_CASE("sum and mean pass gradient checks on every axis", "[ops]") {
    Rng rng(7);
    using In = const std::vector<Tensord>&;
    const Tensord x = grad_input({2, 3, 4}, rng);
    CHECK_GRADCHECK(gradcheck([](In in) { return sum(in[0]); }, {x}));
    CHECK_GRADCHECK(gradcheck([](In in) { return mean(in[0]); }, {x}));
    for (Index axis = -3; axis < 3; ++axis) {
        for (bool keepdim : {false, true}) {
            INFO("axis " << axis << " keepdim " << keepdim);
            CHECK_GRADCHECK(gradcheck([axis, keepdim](In in) { return sum(in[0], axis, keepdim); }, {x}));
            CHECK_GRADCHECK(gradcheck([axis, keepdim](In in) { return mean(in[0], axis, keepdim); }, {x}));
        }
    }
}

TEST_CASE("max along an axis: values, first argmax for ties, gradient", "[ops]") {
    const Tensord x = Tensord::from_vector({2, 3}, {1, 5, 2, 7, -1, 7});
    const Tensord m = max(x);
    CHECK(m.shape() == Shape{2});
    CHECK(m.to_vector() == std::vector<double>{5, 7});
    const Tensord m0 = max(x, 0, true);
    CHECK(m0.shape() == Shape{1, 3});
    CHECK(m0.to_vector() == std::vector<double>{7, 5, 7});

    // Row 1 has two 7s: the gradient goes only to the first.
    Tensord v = x.clone().requires_grad_();
    max(v, -1).backward(Tensord::from_vector({2}, {1, 2}));
    CHECK(v.grad().to_vector() == std::vector<double>{0, 1, 0, 2, 0, 0});
    v.zero_grad();
    Tensord ties = Tensord::from_vector({3, 2}, {4, 4, 4, 1, 0, 4}).requires_grad_();
    max(ties, 0).backward(Tensord::ones({2}));
    CHECK(ties.grad().to_vector() == std::vector<double>{1, 1, 0, 0, 0, 0});

    // Negative values everywhere and a NaN, which wins as in torch.
    const double nan = std::numeric_limits<double>::quiet_NaN();
    CHECK(max(Tensord::from_vector({3}, {-3, -1, -2})).item() == -1.0);
    CHECK(std::isnan(max(Tensord::from_vector({3}, {1, nan, 5})).item()));
    CHECK(std::isnan(max(Tensord::from_vector({3}, {nan, 1, 5})).item()));

    Rng rng(8);
    using In = const std::vector<Tensord>&;
    const Tensord g = grad_input({2, 3, 4}, rng);  // distinct values: no ties to straddle
    for (Index axis = -3; axis < 3; ++axis) {
        for (bool keepdim : {false, true}) {
            INFO("axis " << axis << " keepdim " << keepdim);
            const Tensord y = max(g, axis, keepdim);
            CHECK(y.dim() == (keepdim ? 3 : 2));
            CHECK_GRADCHECK(gradcheck([axis, keepdim](In in) { return max(in[0], axis, keepdim); }, {g}));
        }
    }
}

TEST_CASE("reductions reject bad axes and empty reductions", "[ops]") {
    const Tensord x = Tensord::ones({2, 3});
    CHECK_THROWS_AS(sum(x, 2), Error);
    CHECK_THROWS_WITH(sum(x, 2), Contains("[sum]") && Contains("axis 2") && Contains("(2, 3)"));
    CHECK_THROWS_WITH(sum(x, -3, true), Contains("[sum]") && Contains("(2, 3)"));
    CHECK_THROWS_WITH(mean(x, 5), Contains("[mean]") && Contains("(2, 3)"));
    CHECK_THROWS_WITH(max(x, -3), Contains("[max]") && Contains("(2, 3)"));
    CHECK_THROWS_WITH(max(Tensord::scalar(1.0)), Contains("[max]") && Contains("()"));
    CHECK_THROWS_WITH(max(Tensord::ones({2, 0}), 1), Contains("[max]") && Contains("(2, 0)"));
    CHECK_THROWS_WITH(mean(Tensord::ones({0, 3})), Contains("[mean]") && Contains("(0, 3)"));
    CHECK_THROWS_WITH(mean(Tensord::ones({3, 0}), 1), Contains("[mean]") && Contains("(3, 0)"));
}
