// Tests for core/: Rng, Tensor factories and accessors, and the autograd engine.
//
// The autograd tests build graphs from three tiny ops defined here (test_add, test_mul,
// test_add_scaled) with detail::make_op_result / set_backward, exactly as the ops/ headers do, so
// the engine is tested without depending on them.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <memory>
#include <seemoe/core/tensor.hpp>
#include <vector>

using namespace seemoe;

namespace {

// out = a + b (same shapes).
template <typename T>
Tensor<T> test_add(const Tensor<T>& a, const Tensor<T>& b) {
    Tensor<T> out = detail::make_op_result<T>(a.shape(), "test_add", {&a, &b});
    out.vector() = a.vector() + b.vector();
    detail::set_backward(out,
                         [a_node = detail::grad_target(a), b_node = detail::grad_target(b)](Node<T>& self) {
                             const Index n = self.numel();
                             ConstVectorMap<T> g(self.grad->data(), n);
                             if (a_node) VectorMap<T>(a_node->grad_data(), n) += g;
                             if (b_node) VectorMap<T>(b_node->grad_data(), n) += g;
                         });
    return out;
}

// out = a * b, elementwise (same shapes); backward needs both inputs' values.
template <typename T>
Tensor<T> test_mul(const Tensor<T>& a, const Tensor<T>& b) {
    Tensor<T> out = detail::make_op_result<T>(a.shape(), "test_mul", {&a, &b});
    out.vector() = a.vector().cwiseProduct(b.vector());
    detail::set_backward(out, [a_node = detail::grad_target(a), b_node = detail::grad_target(b),
                               a_values = a.storage(), b_values = b.storage()](Node<T>& self) {
        const Index n = self.numel();
        ConstVectorMap<T> g(self.grad->data(), n);
        if (a_node)
            VectorMap<T>(a_node->grad_data(), n) += g.cwiseProduct(ConstVectorMap<T>(b_values->data(), n));
        if (b_node)
            VectorMap<T>(b_node->grad_data(), n) += g.cwiseProduct(ConstVectorMap<T>(a_values->data(), n));
    });
    return out;
}

Tensord leaf(const Shape& shape, const std::vector<double>& values) {
    Tensord t = Tensord::from_vector(shape, values);
    t.requires_grad_();
    return t;
}

std::vector<double> grad_of(const Tensord& t) {
    return t.grad().to_vector();
}

}  // namespace

// ---- Rng -----------------------------------------------------------------------------------------

TEST_CASE("Rng: pinned first outputs of xoshiro256** seeded by splitmix64", "[core]") {
    // From a reference implementation of splitmix64 + xoshiro256** (Blackman & Vigna). Seed 0's
    // first state word is splitmix64's published first output 0xe220a8397b1dcdaf.
    Rng zero(0);
    CHECK(zero.state().words[0] == 0xe220a8397b1dcdafULL);
    CHECK(zero.state().words[1] == 0x6e789e6aa1b965f4ULL);
    CHECK(zero.next_u64() == 0x99ec5f36cb75f2b4ULL);
    CHECK(zero.next_u64() == 0xbf6e1f784956452aULL);
    CHECK(zero.next_u64() == 0x1a5f849d4933e6e0ULL);

    Rng rng(42);
    CHECK(rng.next_u64() == 0x15780b2e0c2ec716ULL);
    CHECK(rng.next_u64() == 0x6104d9866d113a7eULL);
    CHECK(rng.next_u64() == 0xae17533239e499a1ULL);

    // uniform() = (first u64 >> 11) * 2^-53.
    Rng u(42);
    CHECK(u.uniform() == 0.08386297105988216);
    // Box–Muller on the first two uniforms u1, u2: sqrt(-2 ln u1) * (cos, sin)(2 pi u2).
    Rng n(42);
    CHECK(n.normal() == Approx(-1.6132237513849161).epsilon(0).margin(1e-14));
    CHECK(n.normal() == Approx(1.5344873235334195).epsilon(0).margin(1e-14));
}

TEST_CASE("Rng: same seed same sequence, other seed other sequence, state round trip", "[core]") {
    Rng a(123), b(123), c(124);
    bool all_equal_c = true;
    for (int i = 0; i < 100; ++i) {
        const std::uint64_t x = a.next_u64();
        CHECK(x == b.next_u64());
        if (x != c.next_u64()) all_equal_c = false;
    }
    CHECK_FALSE(all_equal_c);

    // Re-seeding restarts the sequence and drops a cached normal.
    Rng r(5);
    const double first = r.normal();
    r.normal();
    r.normal();  // leaves a spare normal cached
    r.seed(5);
    CHECK(r.normal() == first);

    // state()/set_state() capture everything, including the cached second normal.
    Rng s(9);
    s.normal();  // the spare is now cached
    const Rng::State saved = s.state();
    const double next_normal = s.normal();
    const std::uint64_t next_bits = s.next_u64();
    Rng t(1);
    t.set_state(saved);
    CHECK(t.normal() == next_normal);
    CHECK(t.next_u64() == next_bits);
}

TEST_CASE("Rng: normal and uniform moments over 100k samples", "[core]") {
    Rng rng(2024);
    const int n = 100000;
    double sum = 0, sum_sq = 0;
    for (int i = 0; i < n; ++i) {
        const double x = rng.normal();
        sum += x;
        sum_sq += x * x;
    }
    const double mean = sum / n, var = sum_sq / n - mean * mean;
    // Standard errors: mean 1/sqrt(n) = 0.0032, variance sqrt(2/n) = 0.0045; 4-5 sigma bounds.
    CHECK(std::fabs(mean) < 0.015);
    CHECK(std::fabs(var - 1.0) < 0.02);

    double shifted = 0;
    for (int i = 0; i < n; ++i) shifted += rng.normal(3.0, 0.5);
    CHECK(std::fabs(shifted / n - 3.0) < 0.008);

    double usum = 0, umin = 1, umax = 0;
    for (int i = 0; i < n; ++i) {
        const double x = rng.uniform();
        usum += x;
        umin = std::min(umin, x);
        umax = std::max(umax, x);
    }
    CHECK(std::fabs(usum / n - 0.5) < 0.005);  // std error 0.0009
    CHECK(umin >= 0.0);
    CHECK(umax < 1.0);
    CHECK(umin < 0.001);
    CHECK(umax > 0.999);
}

TEST_CASE("Rng: randint stays in range and is roughly unbiased", "[core]") {
    Rng rng(77);
    const Index lo = -3, hi = 4;  // 7 values
    std::vector<int> counts(7, 0);
    const int n = 70000;
    for (int i = 0; i < n; ++i) {
        const Index x = rng.randint(lo, hi);
        if (x < lo || x >= hi) FAIL("randint(" << lo << ", " << hi << ") returned " << x);
        ++counts[static_cast<std::size_t>(x - lo)];
    }
    // Expected 10000 each, standard deviation ~93; 5% is over 5 sigma.
    for (int c : counts) CHECK(std::abs(c - 10000) < 500);

    // A range that does not divide 2^64 evenly, where plain modulo would be visibly biased:
    // with 3 * 2^61 values, 2^64 = 5 1/3 ranges, so r % range would hit the lower third of the
    // range 6 times out of 16 (37.5%) instead of 1/3.
    const Index big = static_cast<Index>(3) << 61;
    int lower_third = 0;
    for (int i = 0; i < 30000; ++i) lower_third += rng.randint(0, big) < big / 3 ? 1 : 0;
    CHECK(std::abs(lower_third - 10000) < 400);  // std error ~82

    CHECK(rng.randint(5, 6) == 5);
    CHECK_THROWS_WITH(rng.randint(3, 3), Catch::Contains("[Rng::randint]"));
}

// ---- Tensor factories and accessors --------------------------------------------------------------

TEST_CASE("Tensor factories: zeros, ones, full, scalar, arange, from_vector", "[core]") {
    const Tensord z = Tensord::zeros({2, 3});
    CHECK(z.shape() == Shape{2, 3});
    CHECK(z.numel() == 6);
    CHECK(z.dim() == 2);
    CHECK(z.to_vector() == std::vector<double>(6, 0.0));
    CHECK(Tensorf::ones({4}).to_vector() == std::vector<float>(4, 1.0f));
    CHECK(Tensord::full({3, 1}, 2.5).to_vector() == std::vector<double>(3, 2.5));
    CHECK_FALSE(z.requires_grad());
    CHECK(z.is_leaf());

    const Tensord s = Tensord::scalar(7.0);
    CHECK(s.shape().empty());
    CHECK(s.numel() == 1);
    CHECK(s.item() == 7.0);

    CHECK(Tensord::arange(4).to_vector() == std::vector<double>{0, 1, 2, 3});
    CHECK(Tensord::arange(2, 10, 3).to_vector() == std::vector<double>{2, 5, 8});
    CHECK(Tensord::arange(5, 0, -2).to_vector() == std::vector<double>{5, 3, 1});
    CHECK(Tensord::arange(3, 3).numel() == 0);

    Tensord v = Tensord::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
    CHECK(v.size(0) == 2);
    CHECK(v.size(-1) == 3);
    // Row-major: (i, j) is element i*3 + j.
    CHECK(v.at({0, 0}) == 1);
    CHECK(v.at({0, 2}) == 3);
    CHECK(v.at({1, 0}) == 4);
    CHECK(v.at({1, 2}) == 6);
    v.at({1, 1}) = 50;
    CHECK(v.data()[4] == 50);
    const Tensord& cv = v;
    CHECK(cv.at({1, 1}) == 50);
    CHECK(v.matrix(2, 3)(1, 2) == 6);

    const Tensord e = Tensord::empty({0, 5});
    CHECK(e.numel() == 0);
}

TEST_CASE("Tensor random factories draw from the Rng in order", "[core]") {
    Rng rng(11), reference(11);
    const Tensord n = Tensord::randn({3, 4}, rng, 1.0, 2.0);
    CHECK(n.shape() == Shape{3, 4});
    for (Index i = 0; i < n.numel(); ++i) CHECK(n.data()[i] == reference.normal(1.0, 2.0));

    const Tensord u = Tensord::rand({1000}, rng, -2.0, 3.0);
    CHECK(u.vector().minCoeff() >= -2.0);
    CHECK(u.vector().maxCoeff() < 3.0);
    CHECK(u.vector().maxCoeff() > 2.9);
    CHECK(u.vector().minCoeff() < -1.9);

    const Tensorf r = Tensorf::randint({500}, 2, 6, rng);
    std::vector<int> seen(4, 0);
    for (Index i = 0; i < r.numel(); ++i) {
        const float x = r.data()[i];
        if (x != std::floor(x) || x < 2 || x >= 6) FAIL("randint gave " << x << " at " << i);
        ++seen[static_cast<std::size_t>(x - 2)];
    }
    for (int c : seen) CHECK(c > 50);

    // Same seed, same tensor.
    Rng again(11);
    CHECK(Tensord::randn({3, 4}, again, 1.0, 2.0).to_vector() == n.to_vector());
}

TEST_CASE("Tensor: item, to_string, detach, clone", "[core]") {
    Tensord t = Tensord::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
    CHECK(Tensord::from_vector({1, 1}, {4.5}).item() == 4.5);
    CHECK_THROWS_WITH(t.item(), Catch::Contains("[item]") && Catch::Contains("(2, 3)"));

    CHECK_THAT(t.to_string(), Catch::Contains("(2, 3)"));
    CHECK_THAT(Tensord::zeros({5}).to_string(), Catch::Contains("(5,)"));
    CHECK_THAT(Tensord::zeros({100}).to_string(), Catch::Contains("..."));
    t.requires_grad_();
    CHECK_THAT(t.to_string(), Catch::Contains("requires_grad"));

    // detach: same values (shared), no grad, a fresh leaf.
    Tensord d = t.detach();
    CHECK_FALSE(d.requires_grad());
    CHECK(d.is_leaf());
    CHECK_FALSE(d.same_node(t));
    CHECK(d.storage() == t.storage());
    d.data()[0] = 100;
    CHECK(t.data()[0] == 100);

    // clone: own copy of the values, a leaf without grad.
    Tensord c = t.clone();
    CHECK(c.to_vector() == t.to_vector());
    CHECK_FALSE(c.requires_grad());
    c.data()[1] = -1;
    CHECK(t.data()[1] == 2);

    // Copies of the handle share the node.
    Tensord alias = t;
    CHECK(alias.same_node(t));
    alias.data()[2] = 33;
    CHECK(t.data()[2] == 33);
}

TEST_CASE("Tensor: factory and accessor errors name the op", "[core]") {
    CHECK_THROWS_AS(Tensord::from_vector({2, 2}, {1, 2, 3}), Error);
    CHECK_THROWS_WITH(Tensord::from_vector({2, 2}, {1, 2, 3}),
                      Catch::Contains("[from_vector]") && Catch::Contains("(2, 2)"));
    CHECK_THROWS_WITH(Tensord::zeros({2, -1}), Catch::Contains("[Tensor]") && Catch::Contains("negative") &&
                                                   Catch::Contains("(2, -1)"));
    CHECK_THROWS_WITH(Tensord::empty({-3}), Catch::Contains("[Tensor]"));
    CHECK_THROWS_WITH(Tensord::arange(0, 5, 0), Catch::Contains("[arange]"));

    Tensord t = Tensord::zeros({2, 3});
    CHECK_THROWS_WITH(t.at({2, 0}), Catch::Contains("[at]") && Catch::Contains("(2, 3)"));
    CHECK_THROWS_WITH(t.at({0, 3}), Catch::Contains("[at]"));
    CHECK_THROWS_WITH(t.at({0, -1}), Catch::Contains("[at]"));
    CHECK_THROWS_WITH(t.at({0}), Catch::Contains("[at]"));
    CHECK_THROWS_WITH(t.size(2), Catch::Contains("[size]"));
    CHECK_THROWS_WITH(t.matrix(4, 2), Catch::Contains("[matrix]"));
    CHECK_THROWS_WITH(Tensord().shape(), Catch::Contains("[Tensor]") && Catch::Contains("undefined"));
    CHECK_FALSE(Tensord().defined());
}

// ---- autograd -----------------------------------------------------------------------------------

TEST_CASE("autograd: a diamond graph accumulates both paths", "[core][autograd]") {
    // b = a + a; c = b * b  =>  c = 4 a^2, dc/da = 8 a (b's grad 2b reaches a twice).
    Tensord a = leaf({3}, {1.0, -2.0, 0.5});
    Tensord b = test_add(a, a);
    Tensord c = test_mul(b, b);
    CHECK(c.requires_grad());
    CHECK_FALSE(c.is_leaf());
    CHECK(std::string(c.op()) == "test_mul");
    CHECK(c.to_vector() == std::vector<double>{4.0, 16.0, 1.0});
    c.backward(Tensord::ones({3}));
    CHECK(grad_of(a) == std::vector<double>{8.0, -16.0, 4.0});

    // Same on a scalar, with backward() seeding 1.
    Tensord x = leaf({}, {3.0});
    Tensord y = test_mul(test_add(x, x), test_add(x, x));
    y.backward();
    CHECK(x.grad().item() == 24.0);
}

TEST_CASE("autograd: a 100,000-node chain runs backward without stack overflow", "[core][autograd]") {
    // y_0 = a, y_{k+1} = y_k + a: y_N = (N + 1) a, and a's grad collects N + 1 contributions.
    const int n = 100000;
    Tensord a = leaf({1}, {0.5});
    Tensord y = a;
    for (int k = 0; k < n; ++k) y = test_add(y, a);
    CHECK(y.item() == 0.5 * (n + 1));
    y.backward();
    CHECK(a.grad().item() == n + 1);

    // Dropping an unused 100,000-node graph must not recurse either.
    {
        Tensord z = a;
        for (int k = 0; k < n; ++k) z = test_add(z, a);
    }
    // Neither y's released graph nor the dropped chain still holds the leaf.
    CHECK(a.node().use_count() == 1);
}

TEST_CASE("autograd: every intermediate node is freed with the loss", "[core][autograd]") {
    Tensord a = leaf({2}, {1.0, 2.0});
    std::weak_ptr<Node<double>> b_node, c_node;

    SECTION("after backward") {
        {
            Tensord b = test_add(a, a);
            Tensord c = test_mul(b, b);
            b_node = b.node();
            c_node = c.node();
            c.backward(Tensord::ones({2}));
            // backward cut the graph, so nothing outside this scope keeps b or c alive.
        }
        CHECK(b_node.expired());
        CHECK(c_node.expired());
    }
    SECTION("backward releases intermediates while the loss is still alive") {
        Tensord c;
        {
            Tensord b = test_add(a, a);
            c = test_mul(b, b);
            b_node = b.node();
        }
        CHECK_FALSE(b_node.expired());  // held by c's graph edges and closure
        c.backward(Tensord::ones({2}));
        CHECK(b_node.expired());
        CHECK(c.defined());
    }
    SECTION("without backward") {
        {
            Tensord b = test_add(a, a);
            Tensord c = test_mul(b, b);
            b_node = b.node();
            c_node = c.node();
        }
        CHECK(b_node.expired());
        CHECK(c_node.expired());
    }
    // The leaf is referenced by nothing but its own handle: no closure kept it alive.
    CHECK(a.node().use_count() == 1);
}

TEST_CASE("autograd: retain_graph allows a second backward that accumulates", "[core][autograd]") {
    Tensord a = leaf({2}, {1.0, -3.0});
    Tensord b = test_add(a, a);
    Tensord c = test_mul(b, b);  // c = 4 a^2, dc/da = 8 a = [8, -24]
    const std::weak_ptr<Node<double>> b_node = b.node();
    b = Tensord();
    c.backward(Tensord::ones({2}), /*retain_graph=*/true);
    CHECK(grad_of(a) == std::vector<double>{8.0, -24.0});
    CHECK_FALSE(b_node.expired());  // the graph is still there
    c.backward(Tensord::ones({2}));
    CHECK(grad_of(a) == std::vector<double>{16.0, -48.0});
    CHECK(b_node.expired());  // the second backward released it

    // A retain_grad() intermediate sums its gradient over the two passes, and each pass still
    // sends only its own gradient further down.
    Tensord x = leaf({1}, {2.0});
    Tensord u = test_add(x, x);  // u = 2x = 4
    u.retain_grad();
    Tensord v = test_mul(u, u);  // dv/du = 2u = 8, dv/dx = 8x = 16
    v.backward(/*retain_graph=*/true);
    CHECK(u.grad().item() == 8.0);
    CHECK(x.grad().item() == 16.0);
    v.backward();
    CHECK(u.grad().item() == 16.0);
    CHECK(x.grad().item() == 32.0);
}

TEST_CASE("autograd: leaf grads accumulate across backward calls until zero_grad", "[core][autograd]") {
    Tensord a = leaf({2}, {2.0, 5.0});
    Tensord w = leaf({2}, {3.0, -1.0});
    for (int call = 1; call <= 2; ++call) {
        Tensord y = test_mul(a, w);  // dy/da = w, dy/dw = a
        y.backward(Tensord::ones({2}));
        CHECK(grad_of(a) == std::vector<double>{3.0 * call, -1.0 * call});
        CHECK(grad_of(w) == std::vector<double>{2.0 * call, 5.0 * call});
    }
    a.zero_grad();
    CHECK(a.has_grad());
    CHECK(grad_of(a) == std::vector<double>{0.0, 0.0});
    CHECK(grad_of(w) == std::vector<double>{4.0, 10.0});  // untouched
    w.reset_grad();
    CHECK_FALSE(w.has_grad());

    // An input without requires_grad gets no gradient.
    Tensord constant = Tensord::from_vector({2}, {7.0, 7.0});
    Tensord y = test_mul(a, constant);
    y.backward(Tensord::ones({2}));
    CHECK(grad_of(a) == std::vector<double>{7.0, 7.0});
    CHECK_FALSE(constant.has_grad());

    // retain_grad keeps an intermediate's gradient; others are freed.
    Tensord b = test_add(a, a);
    Tensord b2 = test_add(a, a);
    b.retain_grad();
    Tensord c = test_mul(b, b2);
    c.backward(Tensord::ones({2}));
    CHECK(b.has_grad());
    CHECK(grad_of(b) == b2.to_vector());
    CHECK_FALSE(b2.has_grad());
}

TEST_CASE("autograd: NoGradGuard builds no graph and restores the mode", "[core][autograd]") {
    Tensord a = leaf({2}, {1.0, 2.0});
    CHECK(GradMode::is_enabled());
    {
        NoGradGuard no_grad;
        CHECK_FALSE(GradMode::is_enabled());
        Tensord b = test_mul(a, a);
        CHECK_FALSE(b.requires_grad());
        CHECK(b.node()->parents.empty());
        CHECK(b.is_leaf());
        CHECK(b.to_vector() == std::vector<double>{1.0, 4.0});  // values still computed
        {
            NoGradGuard nested;
            CHECK_FALSE(GradMode::is_enabled());
        }
        CHECK_FALSE(GradMode::is_enabled());  // the inner guard restores "off"
        CHECK_THROWS_WITH(b.backward(Tensord::ones({2})), Catch::Contains("[backward]"));
    }
    CHECK(GradMode::is_enabled());
    Tensord b = test_mul(a, a);
    CHECK(b.requires_grad());
    CHECK(b.node()->parents.size() == 2);
}

TEST_CASE("autograd: backward errors", "[core][autograd]") {
    // A tensor that does not require grad.
    Tensord plain = Tensord::ones({1});
    CHECK_THROWS_AS(plain.backward(), Error);
    CHECK_THROWS_WITH(plain.backward(),
                      Catch::Contains("[backward]") && Catch::Contains("does not require grad"));

    // A non-scalar without a seed, and a seed of the wrong shape.
    Tensord a = leaf({2, 2}, {1, 2, 3, 4});
    Tensord y = test_mul(a, a);
    CHECK_THROWS_WITH(y.backward(), Catch::Contains("[backward]") && Catch::Contains("(2, 2)"));
    CHECK_THROWS_WITH(y.backward(Tensord::ones({4})),
                      Catch::Contains("[backward]") && Catch::Contains("(4,)") && Catch::Contains("(2, 2)"));
    CHECK_FALSE(a.has_grad());  // nothing ran

    // requires_grad_(false) is only for leaves.
    CHECK_THROWS_WITH(y.requires_grad_(false), Catch::Contains("[requires_grad_]"));
}

// GCC 12 with AVX-512 has stored wide constants as a broadcast of their low 8 bytes, so
// {1,1,1,1,0,0,0,0} became eight 1.0s (CMakeLists.txt works around it). A test literal is where it
// showed; this keeps a miscompiling toolchain from passing as a library bug elsewhere.
TEST_CASE("toolchain: wide constant literals survive copying into tensors", "[core]") {
    const Tensord a = Tensord::from_vector({8}, {1, 1, 1, 1, 0, 0, 0, 0});
    CHECK(a.to_vector() == std::vector<double>{1, 1, 1, 1, 0, 0, 0, 0});
    const Tensord b = Tensord::from_vector({4}, {1, 1, 0, 0});
    CHECK(b.to_vector() == std::vector<double>{1, 1, 0, 0});
    const Tensorf c = Tensorf::from_vector({16}, {3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0});
    CHECK(c.at({8}) == 0.0f);
    CHECK(c.at({7}) == 3.0f);
}
