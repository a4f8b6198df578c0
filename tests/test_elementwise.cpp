// tests/test_elementwise.cpp — broadcasting arithmetic, scalar forms, pointwise functions and
// masked_fill: gradient checks in double, hand-computed values, a naive broadcasting reference,
// and the errors bad shapes must raise.
#include <catch2/catch.hpp>

#include <seemoe/ops/elementwise.hpp>
#include <seemoe/ops/reduce.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gradcheck.hpp"

using namespace seemoe;
using seemoe::testing::grad_input;
using seemoe::testing::gradcheck;
using Catch::Contains;

namespace {

using BinaryFn = std::function<Tensord(const Tensord&, const Tensord&)>;

struct NamedBinary {
    const char* name;
    BinaryFn op;
    std::function<double(double, double)> reference;
};

const std::vector<NamedBinary>& binary_ops() {
    static const std::vector<NamedBinary> ops = {
        {"add", [](const Tensord& a, const Tensord& b) { return add(a, b); }, [](double x, double z) { return x + z; }},
        {"sub", [](const Tensord& a, const Tensord& b) { return sub(a, b); }, [](double x, double z) { return x - z; }},
        {"mul", [](const Tensord& a, const Tensord& b) { return mul(a, b); }, [](double x, double z) { return x * z; }},
        {"div", [](const Tensord& a, const Tensord& b) { return div(a, b); }, [](double x, double z) { return x / z; }},
    };
    return ops;
}

// Shape pairs covering every path: equal shapes, a bias-like suffix, one value per row, a
// one-element tensor, an outer-product pair, and layouts that need the strided walk, each in
// both orders.
const std::vector<std::pair<Shape, Shape>>& broadcast_pairs() {
    static const std::vector<std::pair<Shape, Shape>> pairs = {
        {{2, 3, 4}, {2, 3, 4}}, {{2, 3, 4}, {4}},       {{4}, {2, 3, 4}},       {{2, 3, 4}, {1, 3, 4}},
        {{2, 3, 4}, {2, 3, 1}}, {{2, 3, 1}, {2, 3, 4}}, {{2, 1, 4}, {3, 1}},    {{3, 1}, {2, 1, 4}},
        {{2, 3}, {}},           {{}, {2, 3}},           {{3, 1}, {1, 4}},       {{1, 3, 1}, {2, 1, 4}},
        {{2, 3, 4}, {3, 1}},    {{}, {}},               {{5}, {1}},
    };
    return pairs;
}

// Values in +-[0.5, 2.5): safe as divisors and for log/sqrt after fabs.
Tensord away_from_zero(const Shape& shape, Rng& rng) {
    Tensord t = Tensord::empty(shape);
    for (Index i = 0; i < t.numel(); ++i) {
        const double magnitude = rng.uniform(0.5, 2.5);
        t.data()[i] = rng.uniform() < 0.5 ? -magnitude : magnitude;
    }
    t.requires_grad_();
    return t;
}

Tensord positive(const Shape& shape, Rng& rng) {
    Tensord t = Tensord::rand(shape, rng, 0.5, 3.0);
    t.requires_grad_();
    return t;
}

// The element of `t` that output element `k` of shape `out` reads under numpy broadcasting,
// computed the slow, obvious way.
double broadcast_read(const Tensord& t, const Shape& out, Index k) {
    const Shape& s = t.shape();
    std::vector<Index> index(out.size());
    for (Index d = static_cast<Index>(out.size()) - 1; d >= 0; --d) {
        index[d] = k % out[d];
        k /= out[d];
    }
    Index flat = 0;
    const std::size_t offset = out.size() - s.size();
    for (std::size_t d = 0; d < s.size(); ++d) flat = flat * s[d] + (s[d] == 1 ? 0 : index[d + offset]);
    return t.data()[flat];
}

Tensord unary_input(const Shape& shape, Rng& rng, double scale = 1.0) { return grad_input(shape, rng, scale); }

}  // namespace

TEST_CASE("broadcast plans take the fast path for the common layouts", "[ops]") {
    using detail::Cover;
    auto plan = [](const Shape& a, const Shape& b) { return detail::plan_broadcast(a, b, "test"); };

    auto same = plan({2, 3, 4}, {2, 3, 4});
    CHECK_FALSE(same.strided);
    CHECK(same.rows == 1);
    CHECK(same.cols == 24);

    auto bias = plan({2, 3, 4}, {4});  // (B, T, C) + (C)
    CHECK_FALSE(bias.strided);
    CHECK(bias.a == Cover::Full);
    CHECK(bias.b == Cover::Row);
    CHECK(bias.rows == 6);
    CHECK(bias.cols == 4);

    auto bias_first = plan({1, 4}, {2, 3, 4});
    CHECK(bias_first.a == Cover::Row);
    CHECK(bias_first.out == Shape{2, 3, 4});

    auto per_row = plan({2, 3, 4}, {2, 3, 1});  // (B, T, C) * (B, T, 1)
    CHECK_FALSE(per_row.strided);
    CHECK(per_row.b == Cover::Col);
    CHECK(per_row.rows == 6);

    auto one = plan({}, {2, 3});
    CHECK_FALSE(one.strided);
    CHECK(one.a == Cover::One);
    CHECK(one.out == Shape{2, 3});

    auto outer = plan({3, 1}, {1, 4});
    CHECK_FALSE(outer.strided);
    CHECK(outer.a == Cover::Col);
    CHECK(outer.b == Cover::Row);
    CHECK(outer.out == Shape{3, 4});

    auto general = plan({2, 1, 4}, {3, 1});
    CHECK(general.strided);
    CHECK(general.out == Shape{2, 3, 4});
    CHECK(general.a_strides == std::vector<Index>{4, 0, 1});
    CHECK(general.b_strides == std::vector<Index>{0, 1, 0});

    CHECK(plan({0, 3}, {3}).out == Shape{0, 3});
}

TEST_CASE("binary ops match a naive broadcasting reference", "[ops]") {
    Rng rng(1);
    for (const auto& op : binary_ops()) {
        for (const auto& [sa, sb] : broadcast_pairs()) {
            const Tensord a = away_from_zero(sa, rng), b = away_from_zero(sb, rng);
            const Tensord y = op.op(a, b);
            INFO(op.name << " " << shape_str(sa) << " with " << shape_str(sb));
            for (Index k = 0; k < y.numel(); ++k) {
                const double expected = op.reference(broadcast_read(a, y.shape(), k), broadcast_read(b, y.shape(), k));
                CHECK(y.data()[k] == Approx(expected).epsilon(1e-15));
            }
        }
    }
}

TEST_CASE("binary ops know their values and shapes", "[ops]") {
    const Tensord a = Tensord::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
    const Tensord bias = Tensord::from_vector({3}, {10, 20, 30});
    const Tensord col = Tensord::from_vector({2, 1}, {2, 4});

    CHECK(add(a, bias).to_vector() == std::vector<double>{11, 22, 33, 14, 25, 36});
    CHECK(sub(bias, a).to_vector() == std::vector<double>{9, 18, 27, 6, 15, 24});
    CHECK(mul(a, col).to_vector() == std::vector<double>{2, 4, 6, 16, 20, 24});
    CHECK(div(a, col).to_vector() == std::vector<double>{0.5, 1, 1.5, 1, 1.25, 1.5});

    const Tensord outer = mul(Tensord::from_vector({3, 1}, {1, 2, 3}), Tensord::from_vector({1, 2}, {10, 100}));
    CHECK(outer.shape() == Shape{3, 2});
    CHECK(outer.to_vector() == std::vector<double>{10, 100, 20, 200, 30, 300});

    CHECK(add(Tensord::ones({2, 1, 4}), Tensord::ones({3, 1})).shape() == Shape{2, 3, 4});
    CHECK(add(Tensord::scalar(2), Tensord::scalar(3)).shape() == Shape{});
    CHECK(add(Tensord::scalar(2), Tensord::scalar(3)).item() == 5);
    CHECK(mul(Tensord::zeros({0, 3}), Tensord::ones({3})).shape() == Shape{0, 3});

    // The operators are the same ops.
    CHECK((a + bias).to_vector() == add(a, bias).to_vector());
    CHECK((a - col).to_vector() == sub(a, col).to_vector());
    CHECK((a * col).to_vector() == mul(a, col).to_vector());
    CHECK((a / bias).to_vector() == div(a, bias).to_vector());
    CHECK(std::string((a * col).op()) == "mul");
}

TEST_CASE("binary ops pass gradient checks with broadcasting both ways", "[ops]") {
    Rng rng(2);
    for (const auto& op : binary_ops()) {
        for (const auto& [sa, sb] : broadcast_pairs()) {
            INFO(op.name << " " << shape_str(sa) << " with " << shape_str(sb));
            const Tensord a = away_from_zero(sa, rng), b = away_from_zero(sb, rng);
            const BinaryFn fn = op.op;
            CHECK_GRADCHECK(gradcheck([fn](const std::vector<Tensord>& in) { return fn(in[0], in[1]); }, {a, b}));
        }
    }
}

TEST_CASE("binary op gradients: reductions over repeats, shared inputs, one-sided grads", "[ops]") {
    // d/d bias of sum(x + bias) over (2, 3, 4) is the number of rows each bias value met: 6.
    Tensord x = Tensord::ones({2, 3, 4}).requires_grad_();
    Tensord bias = Tensord::zeros({4}).requires_grad_();
    add(x, bias).backward(Tensord::ones({2, 3, 4}));
    CHECK(bias.grad().to_vector() == std::vector<double>(4, 6.0));
    CHECK(x.grad().to_vector() == std::vector<double>(24, 1.0));

    // x * x: both operands are the same node; the gradient is 2x.
    Tensord v = Tensord::from_vector({3}, {1, -2, 3}).requires_grad_();
    mul(v, v).backward(Tensord::ones({3}));
    CHECK(v.grad().to_vector() == std::vector<double>{2, -4, 6});

    // Only b needs grad: a gets none, b gets -a/b^2 summed over the repeats.
    const Tensord a = Tensord::from_vector({2, 2}, {1, 2, 3, 4});
    Tensord b = Tensord::from_vector({2, 1}, {2, 4}).requires_grad_();
    div(a, b).backward(Tensord::ones({2, 2}));
    CHECK_FALSE(a.has_grad());
    CHECK(b.grad().to_vector() == std::vector<double>{-3.0 / 4, -7.0 / 16});

    // Empty tensors broadcast too, and their repeated inputs get zero gradient.
    Tensord empty_rows = Tensord::zeros({0, 3}).requires_grad_();
    Tensord row = Tensord::ones({3}).requires_grad_();
    const Tensord empty_out = mul(empty_rows, row);
    CHECK(empty_out.shape() == Shape{0, 3});
    empty_out.backward(Tensord::zeros({0, 3}));
    CHECK(row.grad().to_vector() == std::vector<double>(3, 0.0));

    // Under NoGradGuard no graph is built.
    NoGradGuard no_grad;
    CHECK_FALSE(add(x, bias).requires_grad());
}

TEST_CASE("scalar forms and operators", "[ops]") {
    const Tensord a = Tensord::from_vector({2, 2}, {1, 2, 4, 8});
    CHECK(add(a, 1.5).to_vector() == std::vector<double>{2.5, 3.5, 5.5, 9.5});
    CHECK(add(1.5, a).to_vector() == add(a, 1.5).to_vector());
    CHECK(sub(a, 1).to_vector() == std::vector<double>{0, 1, 3, 7});
    CHECK(sub(10, a).to_vector() == std::vector<double>{9, 8, 6, 2});
    CHECK(mul(a, 3).to_vector() == std::vector<double>{3, 6, 12, 24});
    CHECK(mul(0.5, a).to_vector() == std::vector<double>{0.5, 1, 2, 4});
    CHECK(div(a, 2).to_vector() == std::vector<double>{0.5, 1, 2, 4});
    CHECK(div(8, a).to_vector() == std::vector<double>{8, 4, 2, 1});
    CHECK((a + 1).to_vector() == add(a, 1).to_vector());
    CHECK((1 + a).to_vector() == add(a, 1).to_vector());
    CHECK((a - 1).to_vector() == sub(a, 1).to_vector());
    CHECK((1 - a).to_vector() == sub(1, a).to_vector());
    CHECK((a * 2).to_vector() == mul(a, 2).to_vector());
    CHECK((2 * a).to_vector() == mul(a, 2).to_vector());
    CHECK((a / 2).to_vector() == div(a, 2).to_vector());
    CHECK((2 / a).to_vector() == div(2, a).to_vector());
    CHECK((-a).to_vector() == std::vector<double>{-1, -2, -4, -8});
    CHECK(neg(a).to_vector() == (-a).to_vector());
    CHECK(((a + 1) * 2 - a / 4).to_vector() == std::vector<double>{3.75, 5.5, 9, 16});

    // The float path takes float, double and int scalars alike.
    const Tensorf f = Tensorf::from_vector({2}, {1.f, 2.f});
    CHECK(mul(f, 2.0f).to_vector() == std::vector<float>{2.f, 4.f});
    CHECK((f * 2).to_vector() == std::vector<float>{2.f, 4.f});
    CHECK((f + 0.5).to_vector() == std::vector<float>{1.5f, 2.5f});

    Rng rng(3);
    const Tensord x = away_from_zero({2, 3}, rng);
    using In = const std::vector<Tensord>&;
    CHECK_GRADCHECK(gradcheck([](In in) { return add(in[0], 0.7); }, {x}));
    CHECK_GRADCHECK(gradcheck([](In in) { return add(0.7, in[0]); }, {x}));
    CHECK_GRADCHECK(gradcheck([](In in) { return sub(in[0], 0.7); }, {x}));
    CHECK_GRADCHECK(gradcheck([](In in) { return sub(0.7, in[0]); }, {x}));
    CHECK_GRADCHECK(gradcheck([](In in) { return mul(in[0], -1.3); }, {x}));
    CHECK_GRADCHECK(gradcheck([](In in) { return mul(-1.3, in[0]); }, {x}));
    CHECK_GRADCHECK(gradcheck([](In in) { return div(in[0], 1.7); }, {x}));
    CHECK_GRADCHECK(gradcheck([](In in) { return div(1.7, in[0]); }, {x}));
    CHECK_GRADCHECK(gradcheck([](In in) { return neg(in[0]); }, {x}));
    CHECK_GRADCHECK(gradcheck([](In in) { return (2 - in[0]) * (in[0] / 3 + 1) - in[0]; }, {x}));
}

TEST_CASE("unary functions know their values", "[ops]") {
    auto at = [](Tensord (*f)(const Tensord&), double x) { return f(Tensord::scalar(x)).item(); };
    const double e = std::exp(1.0);
    CHECK(at(exp, 0.0) == 1.0);
    CHECK(at(exp, 1.0) == Approx(e).epsilon(1e-15));
    CHECK(at(log, 1.0) == 0.0);
    CHECK(at(log, e) == Approx(1.0).epsilon(1e-15));
    CHECK(at(sqrt, 4.0) == 2.0);
    CHECK(at(square, -3.0) == 9.0);
    CHECK(at(tanh, 0.5) == Approx(0.46211715726000974).epsilon(1e-15));
    CHECK(at(sigmoid, 0.0) == 0.5);
    CHECK(at(sigmoid, 2.0) == Approx(0.8807970779778823).epsilon(1e-15));
    CHECK(at(relu, -1.0) == 0.0);
    CHECK(at(relu, 2.5) == 2.5);
    CHECK(at(gelu, 0.0) == 0.0);
    CHECK(at(gelu, 1.0) == Approx(0.8413447460685429).epsilon(1e-15));
    CHECK(at(gelu, -1.0) == Approx(-0.15865525393145707).epsilon(1e-15));
    CHECK(at(gelu, 2.0) == Approx(1.9544997361036416).epsilon(1e-15));
    CHECK(at(softplus, 0.0) == Approx(std::log(2.0)).epsilon(1e-15));
    CHECK(at(softplus, 1.0) == Approx(1.3132616875182228).epsilon(1e-15));
    CHECK(at(softplus, -50.0) == Approx(1.9287498479639178e-22).epsilon(1e-14));
    CHECK(at(softplus, 30.0) == 30.0);  // above the threshold: x itself

    CHECK(pow(Tensord::scalar(2.0), 3).item() == Approx(8.0).epsilon(1e-15));
    CHECK(pow(Tensord::scalar(4.0), 0.5).item() == Approx(2.0).epsilon(1e-15));
    CHECK(pow(Tensord::scalar(-2.0), 3).item() == Approx(-8.0).epsilon(1e-15));

    // The shape is kept and the op is named.
    const Tensord t = gelu(Tensord::zeros({2, 3, 4}));
    CHECK(t.shape() == Shape{2, 3, 4});
    CHECK(std::string(t.op()) == "gelu");
}

TEST_CASE("unary functions pass gradient checks", "[ops]") {
    Rng rng(4);
    using In = const std::vector<Tensord>&;
    const Shape shape{3, 5};
    CHECK_GRADCHECK(gradcheck([](In in) { return exp(in[0]); }, {unary_input(shape, rng)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return log(in[0]); }, {positive(shape, rng)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return sqrt(in[0]); }, {positive(shape, rng)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return pow(in[0], 2.5); }, {positive(shape, rng)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return pow(in[0], -1.5); }, {positive(shape, rng)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return pow(in[0], 3); }, {unary_input(shape, rng)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return square(in[0]); }, {unary_input(shape, rng)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return tanh(in[0]); }, {unary_input(shape, rng, 2.0)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return sigmoid(in[0]); }, {unary_input(shape, rng, 3.0)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return relu(in[0]); }, {away_from_zero(shape, rng)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return gelu(in[0]); }, {unary_input(shape, rng, 2.0)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return softplus(in[0]); }, {unary_input(shape, rng, 3.0)}));
    CHECK_GRADCHECK(gradcheck([](In in) { return neg(in[0]); }, {unary_input(shape, rng)}));

    // softplus on both sides of its threshold and far into the negative tail.
    Tensord wide = Tensord::from_vector({6}, {-40, -5, 0.3, 19.5, 20.5, 35}).requires_grad_();
    CHECK_GRADCHECK(gradcheck([](In in) { return softplus(in[0]); }, {wide}));
    wide.reset_grad();  // gradcheck left its own seed's gradient here
    softplus(wide).backward(Tensord::ones({6}));
    CHECK(wide.grad().data()[5] == 1.0);  // exactly 1 above the threshold, as F.softplus

    // relu: gradient 1 where x > 0, else 0; pow(x, 0) is constant, so its gradient is 0.
    Tensord r = Tensord::from_vector({4}, {-2, -0.5, 0.5, 2}).requires_grad_();
    relu(r).backward(Tensord::ones({4}));
    CHECK(r.grad().to_vector() == std::vector<double>{0, 0, 1, 1});
    Tensord p0 = Tensord::from_vector({3}, {0, 2, -1}).requires_grad_();
    const Tensord ones = pow(p0, 0);
    CHECK(ones.to_vector() == std::vector<double>{1, 1, 1});
    ones.backward(Tensord::ones({3}));
    CHECK(p0.grad().to_vector() == std::vector<double>{0, 0, 0});
}

TEST_CASE("the float path agrees with double and stays finite at the extremes", "[ops]") {
    Rng rng(5);
    const Tensord xd = Tensord::randn({257}, rng, 0.0, 4.0);  // odd length: vector tail too
    Tensorf xf = Tensorf::empty({257});
    for (Index i = 0; i < 257; ++i) xf.data()[i] = static_cast<float>(xd.data()[i]);
    auto compare = [&](Tensord (*fd)(const Tensord&), Tensorf (*ff)(const Tensorf&), const char* name) {
        const Tensord yd = fd(xd);
        const Tensorf yf = ff(xf);
        double worst = 0;
        for (Index i = 0; i < 257; ++i)
            worst = std::max(worst, std::fabs(yf.data()[i] - yd.data()[i]) / std::max(1.0, std::fabs(yd.data()[i])));
        INFO(name << " worst error " << worst);
        CHECK(worst < 1e-5);
    };
    compare(gelu, gelu, "gelu");
    compare(tanh, tanh, "tanh");
    compare(sigmoid, sigmoid, "sigmoid");
    compare(softplus, softplus, "softplus");
    compare(relu, relu, "relu");

    const Tensorf extreme = Tensorf::from_vector({4}, {-200.f, -100.f, 100.f, 200.f});
    const auto s = sigmoid(extreme).to_vector();
    CHECK(s == std::vector<float>{0.f, 0.f, 1.f, 1.f});
    const auto sp = softplus(extreme).to_vector();
    CHECK(sp[0] >= 0.f);
    CHECK(sp[0] < 1e-30f);
    CHECK(sp[2] == 100.f);
    CHECK(sp[3] == 200.f);
    const auto g = gelu(extreme).to_vector();
    CHECK(g == std::vector<float>{-0.f, -0.f, 100.f, 200.f});
}

TEST_CASE("masked_fill replaces masked elements and blocks their gradient", "[ops]") {
    const Tensord a = Tensord::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
    const double inf = std::numeric_limits<double>::infinity();
    CHECK(masked_fill(a, Tensord::from_vector({2, 3}, {0, 1, 0, 1, 0, 0}), -1.0).to_vector() ==
          std::vector<double>{1, -1, 3, -1, 5, 6});
    // A causal-style row mask (3) broadcast over rows, a per-row mask (2, 1), a scalar mask.
    CHECK(masked_fill(a, Tensord::from_vector({3}, {0, 0, 1}), -inf).to_vector() ==
          std::vector<double>{1, 2, -inf, 4, 5, -inf});
    CHECK(masked_fill(a, Tensord::from_vector({2, 1}, {1, 0}), 0.0).to_vector() ==
          std::vector<double>{0, 0, 0, 4, 5, 6});
    CHECK(masked_fill(a, Tensord::scalar(1), 7.0).to_vector() == std::vector<double>(6, 7.0));
    CHECK(masked_fill(a, Tensord::scalar(0), 7.0).to_vector() == a.to_vector());

    // (2, 3, 4) with a (2, 1, 4) mask needs the strided walk.
    Rng rng(6);
    const Tensord mask = Tensord::randint({2, 1, 4}, 0, 2, rng);
    const Tensord x = grad_input({2, 3, 4}, rng);
    const Tensord y = masked_fill(x, mask, 9.0);
    for (Index i = 0; i < 2; ++i)
        for (Index j = 0; j < 3; ++j)
            for (Index k = 0; k < 4; ++k)
                CHECK(y.at({i, j, k}) == (mask.at({i, 0, k}) != 0 ? 9.0 : x.at({i, j, k})));

    using In = const std::vector<Tensord>&;
    for (const Shape& mask_shape : std::vector<Shape>{{2, 3, 4}, {4}, {3, 4}, {2, 3, 1}, {}, {2, 1, 4}, {1, 3, 1}}) {
        INFO("mask " << shape_str(mask_shape));
        const Tensord m = Tensord::randint(mask_shape, 0, 2, rng);
        CHECK_GRADCHECK(gradcheck([m](In in) { return masked_fill(in[0], m, -3.0); }, {grad_input({2, 3, 4}, rng)}));
    }

    Tensord v = Tensord::from_vector({4}, {1, 2, 3, 4}).requires_grad_();
    masked_fill(v, Tensord::from_vector({4}, {1, 0, 0, 1}), 0.0).backward(Tensord::ones({4}));
    CHECK(v.grad().to_vector() == std::vector<double>{0, 1, 1, 0});
}

TEST_CASE("bad shapes raise errors naming the op and the shapes", "[ops]") {
    const Tensord a = Tensord::ones({2, 3});
    const Tensord b = Tensord::ones({4});
    CHECK_THROWS_AS(add(a, b), Error);
    CHECK_THROWS_WITH(add(a, b), Contains("[add]") && Contains("(2, 3)") && Contains("(4,)"));
    CHECK_THROWS_WITH(sub(Tensord::ones({2, 3, 4}), Tensord::ones({3, 2})),
                      Contains("[sub]") && Contains("(2, 3, 4)") && Contains("(3, 2)"));
    CHECK_THROWS_WITH(mul(Tensord::ones({5, 1}), Tensord::ones({2, 4, 3})), Contains("[mul]"));
    CHECK_THROWS_WITH(div(Tensord::ones({0}), Tensord::ones({2})), Contains("[div]") && Contains("(0,)"));
    CHECK_THROWS_WITH(a + b, Contains("[add]"));
    CHECK_THROWS_WITH(a * b, Contains("[mul]"));

    // The mask must broadcast to a's own shape: not enlarge it, not clash with it.
    CHECK_THROWS_WITH(masked_fill(a, Tensord::ones({2, 2, 3}), 0.0),
                      Contains("[masked_fill]") && Contains("(2, 2, 3)") && Contains("(2, 3)"));
    CHECK_THROWS_WITH(masked_fill(a, Tensord::ones({2}), 0.0), Contains("[masked_fill]") && Contains("(2,)"));
    CHECK_THROWS_WITH(masked_fill(Tensord::ones({3, 1}), Tensord::ones({3, 4}), 0.0), Contains("[masked_fill]"));

    // An undefined tensor is reported, not dereferenced.
    CHECK_THROWS_AS(exp(Tensord()), Error);
}

TEST_CASE("ops whose backward reads only dL/dy free their output while the graph lives", "[ops]") {
    Rng rng(31);
    Tensord x = grad_input({3, 4}, rng);
    // x + s, x - s, s - x, x * s, x / s and -x keep nothing: once no handle reaches their output,
    // its values go, yet backward still gives the right gradient.
    std::vector<std::function<Tensord(const Tensord&)>> ops = {
        [](const Tensord& a) { return add(a, 2.0); }, [](const Tensord& a) { return sub(a, 2.0); },
        [](const Tensord& a) { return sub(2.0, a); }, [](const Tensord& a) { return mul(a, 3.0); },
        [](const Tensord& a) { return div(a, 4.0); }, [](const Tensord& a) { return neg(a); }};
    const std::vector<double> slope = {1, 1, -1, 3, 0.25, -1};
    for (std::size_t i = 0; i < ops.size(); ++i) {
        x.zero_grad();
        std::weak_ptr<Storage<double>> values;
        Tensord loss;
        {
            Tensord y = ops[i](x);
            values = y.storage();
            loss = sum(mul(y, 2.0));
        }
        CHECK(values.expired());
        loss.backward();
        for (Index k = 0; k < x.numel(); ++k) CHECK(x.grad().data()[k] == Approx(2.0 * slope[i]));
    }
    // exp reads its output in backward, so the output stays while the graph lives.
    std::weak_ptr<Storage<double>> kept;
    Tensord loss;
    {
        Tensord y = exp(x);
        kept = y.storage();
        loss = sum(mul(y, 2.0));
    }
    CHECK(!kept.expired());
    loss.backward();
    CHECK(kept.expired());
}
