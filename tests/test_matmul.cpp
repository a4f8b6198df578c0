// Tests for ops/matmul.hpp: matmul (every transpose combination, batched, shared b) and linear.
#include <catch2/catch.hpp>

#include <seemoe/ops/matmul.hpp>

#include <algorithm>
#include <cmath>
#include <functional>

#include "gradcheck.hpp"

using namespace seemoe;
using seemoe::testing::grad_input;
using seemoe::testing::gradcheck;

namespace {

// The stored shape of an operand whose product shape is (rows, cols), with optional batch axes.
Shape stored(Shape batch, Index rows, Index cols, bool transposed) {
    batch.push_back(transposed ? cols : rows);
    batch.push_back(transposed ? rows : cols);
    return batch;
}

// Element (i, j) of the product-view of a stored matrix that may be transposed.
double element(const Tensord& t, Index offset, Index rows, Index cols, bool transposed, Index i, Index j) {
    // stored (rows, cols) if not transposed, else (cols, rows)
    return transposed ? t.data()[offset + j * rows + i] : t.data()[offset + i * cols + j];
}

}  // namespace

TEST_CASE("matmul: 2x2 by hand, plain and transposed", "[ops]") {
    const Tensord a = Tensord::from_vector({2, 2}, {1, 2, 3, 4});
    const Tensord b = Tensord::from_vector({2, 2}, {5, 6, 7, 8});
    CHECK(matmul(a, b).to_vector() == std::vector<double>{19, 22, 43, 50});
    // a b^T = [[1*5+2*6, 1*7+2*8], [3*5+4*6, 3*7+4*8]]
    CHECK(matmul(a, b, false, true).to_vector() == std::vector<double>{17, 23, 39, 53});
    // a^T b = [[1*5+3*7, 1*6+3*8], [2*5+4*7, 2*6+4*8]]
    CHECK(matmul(a, b, true, false).to_vector() == std::vector<double>{26, 30, 38, 44});
    // a^T b^T = (b a)^T; b a = [[23, 34], [31, 46]]
    CHECK(matmul(a, b, true, true).to_vector() == std::vector<double>{23, 31, 34, 46});
}

TEST_CASE("matmul: non-square shapes and an empty inner dimension", "[ops]") {
    const Tensord a = Tensord::from_vector({1, 3}, {1, 2, 3});
    const Tensord b = Tensord::from_vector({3, 2}, {1, 0, 0, 1, 2, -1});
    const Tensord c = matmul(a, b);
    CHECK(c.shape() == Shape{1, 2});
    CHECK(c.to_vector() == std::vector<double>{7, -1});

    const Tensord empty_a = Tensord::zeros({2, 0});
    const Tensord empty_b = Tensord::zeros({0, 3});
    const Tensord z = matmul(empty_a, empty_b);
    CHECK(z.shape() == Shape{2, 3});
    CHECK(z.to_vector() == std::vector<double>(6, 0.0));
}

TEST_CASE("matmul: gradient, 2-D, every transpose combination", "[ops]") {
    const Index M = 3, K = 4, N = 2;
    for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
            DYNAMIC_SECTION("transpose_a=" << ta << " transpose_b=" << tb) {
                Rng rng(7);
                Tensord a = grad_input(stored({}, M, K, ta), rng);
                Tensord b = grad_input(stored({}, K, N, tb), rng);
                const Tensord c = matmul(a, b, ta, tb);
                CHECK(c.shape() == Shape{M, N});
                CHECK_GRADCHECK(gradcheck(
                    [ta, tb](const std::vector<Tensord>& in) { return matmul(in[0], in[1], ta, tb); }, {a, b}));
            }
        }
    }
}

TEST_CASE("matmul: gradient, batched over two leading axes, every transpose combination", "[ops]") {
    const Index M = 3, K = 2, N = 4;
    for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
            DYNAMIC_SECTION("transpose_a=" << ta << " transpose_b=" << tb) {
                Rng rng(11);
                Tensord a = grad_input(stored({2, 3}, M, K, ta), rng);
                Tensord b = grad_input(stored({2, 3}, K, N, tb), rng);
                CHECK(matmul(a, b, ta, tb).shape() == Shape{2, 3, M, N});
                CHECK_GRADCHECK(gradcheck(
                    [ta, tb](const std::vector<Tensord>& in) { return matmul(in[0], in[1], ta, tb); }, {a, b}));
            }
        }
    }
}

TEST_CASE("matmul: gradient, 2-D b shared over the batch, every transpose combination", "[ops]") {
    const Index M = 3, K = 4, N = 2;
    for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
            DYNAMIC_SECTION("transpose_a=" << ta << " transpose_b=" << tb) {
                Rng rng(13);
                Tensord a = grad_input(stored({3}, M, K, ta), rng);
                Tensord b = grad_input(stored({}, K, N, tb), rng);
                CHECK(matmul(a, b, ta, tb).shape() == Shape{3, M, N});
                CHECK_GRADCHECK(gradcheck(
                    [ta, tb](const std::vector<Tensord>& in) { return matmul(in[0], in[1], ta, tb); }, {a, b}));
            }
        }
    }
}

TEST_CASE("matmul: one tensor as both operands receives both gradients", "[ops]") {
    Rng rng(9);
    Tensord a = grad_input({2, 3, 4}, rng);
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return matmul(in[0], in[0], false, true); }, {a}));
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return matmul(in[0], in[0], true, false); }, {a}));
    Tensord w = grad_input({4, 4}, rng);
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return linear(in[0], in[0]); }, {w}));
}

// Backward adds into existing gradients instead of overwriting them: a second backward pass
// through a fresh graph doubles every gradient.
static void check_accumulates(const std::function<Tensord(const std::vector<Tensord>&)>& fn,
                              std::vector<Tensord> inputs) {
    Rng rng(8);
    const Tensord seed = Tensord::randn(fn(inputs).shape(), rng);
    for (auto& in : inputs) in.reset_grad();
    fn(inputs).backward(seed);
    std::vector<std::vector<double>> once;
    for (const auto& in : inputs) once.push_back(in.grad().to_vector());
    fn(inputs).backward(seed);
    for (std::size_t k = 0; k < inputs.size(); ++k) {
        const std::vector<double> twice = inputs[k].grad().to_vector();
        double worst = 0;
        for (std::size_t i = 0; i < twice.size(); ++i) worst = std::max(worst, std::fabs(twice[i] - 2 * once[k][i]));
        INFO("input " << k);
        CHECK(worst < 1e-12);
    }
}

TEST_CASE("matmul and linear: gradients accumulate across backward passes", "[ops]") {
    Rng rng(10);
    for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
            auto product = [ta, tb](const std::vector<Tensord>& in) { return matmul(in[0], in[1], ta, tb); };
            check_accumulates(product, {grad_input(stored({2}, 3, 4, ta), rng), grad_input(stored({2}, 4, 5, tb), rng)});
            check_accumulates(product, {grad_input(stored({2}, 3, 4, ta), rng), grad_input(stored({}, 4, 5, tb), rng)});
        }
    }
    check_accumulates([](const std::vector<Tensord>& in) { return linear(in[0], in[1], in[2]); },
                      {grad_input({2, 3, 4}, rng), grad_input({5, 4}, rng), grad_input({5}, rng)});
}

TEST_CASE("matmul: gradient reaches only the operand that requires it", "[ops]") {
    Rng rng(3);
    Tensord a = grad_input({2, 3}, rng);
    const Tensord b = Tensord::randn({3, 4}, rng);
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return matmul(in[0], in[1]); }, {a, b}));
    CHECK_FALSE(b.has_grad());
}

// Batched matmul, forward and backward, against naive sums (b batched, or 2-D and shared).
static void check_against_naive_sums(Index batch, Index M, Index K, Index N, bool shared, bool ta, bool tb) {
    Rng rng(5);
    Tensord a = grad_input(stored({batch}, M, K, ta), rng);
    Tensord b = grad_input(stored(shared ? Shape{} : Shape{batch}, K, N, tb), rng);
    const Tensord c = matmul(a, b, ta, tb);
    const Tensord seed = Tensord::randn(c.shape(), rng);
    c.backward(seed);
    const Tensord da = a.grad(), db = b.grad();

    double worst_c = 0, worst_da = 0, worst_db = 0;
    std::vector<double> expect_db(static_cast<std::size_t>(b.numel()), 0.0);
    for (Index i = 0; i < batch; ++i) {
        const Index ao = i * M * K, bo = shared ? 0 : i * K * N, co = i * M * N;
        for (Index m = 0; m < M; ++m) {
            for (Index n = 0; n < N; ++n) {
                double sum = 0;
                for (Index k = 0; k < K; ++k)
                    sum += element(a, ao, M, K, ta, m, k) * element(b, bo, K, N, tb, k, n);
                worst_c = std::max(worst_c, std::fabs(sum - c.data()[co + m * N + n]));
            }
            for (Index k = 0; k < K; ++k) {
                double sum = 0;  // dA[m, k] = sum_n seed[m, n] B[k, n]
                for (Index n = 0; n < N; ++n) sum += seed.data()[co + m * N + n] * element(b, bo, K, N, tb, k, n);
                const Index at = ao + (ta ? k * M + m : m * K + k);
                worst_da = std::max(worst_da, std::fabs(sum - da.data()[at]));
            }
        }
        for (Index k = 0; k < K; ++k) {
            for (Index n = 0; n < N; ++n) {
                double sum = 0;  // dB[k, n] = sum_m A[m, k] seed[m, n]
                for (Index m = 0; m < M; ++m) sum += element(a, ao, M, K, ta, m, k) * seed.data()[co + m * N + n];
                expect_db[static_cast<std::size_t>(bo + (tb ? n * K + k : k * N + n))] += sum;
            }
        }
    }
    for (Index j = 0; j < b.numel(); ++j)
        worst_db = std::max(worst_db, std::fabs(expect_db[static_cast<std::size_t>(j)] - db.data()[j]));
    CHECK(worst_c < 1e-10);
    CHECK(worst_da < 1e-10);
    CHECK(worst_db < 1e-10);
}

// Two regimes of the batched loop: GEMMs big enough to run one at a time (Eigen may thread
// each), and many small GEMMs spread over the threads.
TEST_CASE("matmul: batched products match naive sums, forward and backward", "[ops]") {
    for (bool shared : {false, true}) {
        for (bool ta : {false, true}) {
            const bool tb = !shared;
            DYNAMIC_SECTION("large GEMMs, shared=" << shared << " transpose_a=" << ta) {
                check_against_naive_sums(3, 48, 64, 50, shared, ta, tb);  // 153,600 multiply-adds each
            }
            DYNAMIC_SECTION("many small GEMMs, shared=" << shared << " transpose_a=" << ta) {
                check_against_naive_sums(64, 8, 12, 10, shared, ta, tb);  // 960 each, 61,440 in all
            }
        }
    }
}

TEST_CASE("matmul: no graph under NoGradGuard", "[ops]") {
    Rng rng(1);
    Tensord a = grad_input({2, 2}, rng);
    Tensord b = grad_input({2, 2}, rng);
    NoGradGuard no_grad;
    const Tensord c = matmul(a, b);
    CHECK_FALSE(c.requires_grad());
    CHECK(c.is_leaf());
}

TEST_CASE("matmul: bad inputs throw naming the op and the shapes", "[ops]") {
    const Tensord a = Tensord::zeros({4, 8});
    const Tensord b = Tensord::zeros({7, 3});
    CHECK_THROWS_AS(matmul(a, b), Error);
    CHECK_THROWS_WITH(matmul(a, b), "[matmul] inner dimensions differ: (4, 8) x (7, 3)");
    CHECK_THROWS_WITH(matmul(a, Tensord::zeros({3, 8}), true, false),
                      Catch::Contains("[matmul] inner dimensions differ: (4, 8) x (3, 8) (transpose_a=true"));
    CHECK_THROWS_WITH(matmul(Tensord::zeros({8}), b), Catch::Contains("[matmul]") && Catch::Contains("(8,)"));
    CHECK_THROWS_WITH(matmul(Tensord::zeros({2, 4, 8}), Tensord::zeros({3, 8, 3})),
                      Catch::Contains("[matmul] batch dimensions differ: (2, 4, 8) x (3, 8, 3)"));
    CHECK_THROWS_WITH(matmul(Tensord::zeros({4, 8}), Tensord::zeros({2, 8, 3})),
                      Catch::Contains("[matmul] batch dimensions differ"));
}

TEST_CASE("linear: known values, with and without bias", "[ops]") {
    const Tensord x = Tensord::from_vector({2, 2}, {1, 2, -1, 0.5});
    const Tensord w = Tensord::from_vector({3, 2}, {1, 0, 0, 1, 1, 1});  // (out, in)
    const Tensord b = Tensord::from_vector({3}, {0.5, -1, 2});
    const Tensord y = linear(x, w, b);
    CHECK(y.shape() == Shape{2, 3});
    CHECK(y.to_vector() == std::vector<double>{1.5, 1, 5, -0.5, -0.5, 1.5});
    CHECK(linear(x, w).to_vector() == std::vector<double>{1, 2, 3, -1, 0.5, -0.5});
    // A 1-D input is a single row.
    const Tensord v = linear(Tensord::from_vector({2}, {1, 2}), w, b);
    CHECK(v.shape() == Shape{3});
    CHECK(v.to_vector() == std::vector<double>{1.5, 1, 5});
}

TEST_CASE("linear: gradient over a 3-D input, with and without bias", "[ops]") {
    Rng rng(21);
    Tensord x = grad_input({2, 3, 4}, rng);  // (B, T, C_in)
    Tensord w = grad_input({5, 4}, rng);     // (C_out, C_in)
    Tensord b = grad_input({5}, rng);
    SECTION("with bias") {
        const Tensord y = linear(x, w, b);
        CHECK(y.shape() == Shape{2, 3, 5});
        CHECK_GRADCHECK(gradcheck(
            [](const std::vector<Tensord>& in) { return linear(in[0], in[1], in[2]); }, {x, w, b}));
    }
    SECTION("without bias") {
        CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return linear(in[0], in[1]); }, {x, w}));
    }
    SECTION("only the weight requires grad (a frozen input)") {
        const Tensord frozen = x.detach();
        CHECK_GRADCHECK(gradcheck(
            [](const std::vector<Tensord>& in) { return linear(in[0], in[1], in[2]); }, {frozen, w, b}));
    }
}

TEST_CASE("linear: equals matmul with a transposed weight plus the bias", "[ops]") {
    Rng rng(4);
    const Tensord x = Tensord::randn({2, 3, 6}, rng);
    const Tensord w = Tensord::randn({4, 6}, rng);
    const Tensord b = Tensord::randn({4}, rng);
    const Tensord y = linear(x, w, b);
    const Tensord z = matmul(x, w, false, true);
    for (Index i = 0; i < y.numel(); ++i)
        CHECK(y.data()[i] == Approx(z.data()[i] + b.data()[i % 4]).epsilon(1e-12));
}

TEST_CASE("linear: bad inputs throw naming the op and the shapes", "[ops]") {
    const Tensord x = Tensord::zeros({2, 4});
    CHECK_THROWS_WITH(linear(x, Tensord::zeros({3, 5})),
                      "[linear] input features differ: x (2, 4) vs weight (out, in) (3, 5)");
    CHECK_THROWS_WITH(linear(x, Tensord::zeros({3, 4}), Tensord::zeros({4})),
                      Catch::Contains("[linear] bias (4,)"));
    CHECK_THROWS_WITH(linear(x, Tensord::zeros({4})), Catch::Contains("[linear] weight must be 2-D"));
    CHECK_THROWS_WITH(linear(Tensord::scalar(1.0), Tensord::zeros({3, 1})), Catch::Contains("[linear]"));
}
