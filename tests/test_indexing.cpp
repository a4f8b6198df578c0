// Tests for ops/indexing.hpp: embedding, index_select, index_add, gather, topk.
#include <catch2/catch.hpp>

#include <seemoe/ops/indexing.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "gradcheck.hpp"

using namespace seemoe;
using seemoe::testing::grad_input;
using seemoe::testing::gradcheck;

TEST_CASE("embedding: known rows, any ids shape", "[ops]") {
    const Tensord table = Tensord::from_vector({3, 2}, {0, 1, 10, 11, 20, 21});  // (V, C)
    const Tensord e = embedding(table, {2, 0, 2, 1}, {2, 2});
    CHECK(e.shape() == Shape{2, 2, 2});
    CHECK(e.to_vector() == std::vector<double>{20, 21, 0, 1, 20, 21, 10, 11});
    CHECK(embedding(table, {1}, {}).shape() == Shape{2});
    CHECK(embedding(table, {}, {0}).shape() == Shape{0, 2});
}

TEST_CASE("embedding: gradient with repeated ids scatter-adds rows", "[ops]") {
    Rng rng(1);
    Tensord table = grad_input({5, 3}, rng);
    const std::vector<Index> ids{4, 1, 4, 0, 4, 1};  // 4 three times, 1 twice, 2 and 3 unused
    CHECK_GRADCHECK(gradcheck(
        [&ids](const std::vector<Tensord>& in) { return embedding(in[0], ids, {2, 3}); }, {table}));

    table.reset_grad();
    embedding(table, ids, {2, 3}).backward(Tensord::ones({2, 3, 3}));
    const Tensord g = table.grad();
    CHECK(g.to_vector() == std::vector<double>{1, 1, 1, 2, 2, 2, 0, 0, 0, 0, 0, 0, 3, 3, 3});
}

TEST_CASE("index_select: known values along each axis, repeats allowed", "[ops]") {
    const Tensord a = Tensord::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
    const Tensord cols = index_select(a, 1, {2, 0, 2});
    CHECK(cols.shape() == Shape{2, 3});
    CHECK(cols.to_vector() == std::vector<double>{3, 1, 3, 6, 4, 6});
    const Tensord rows = index_select(a, 0, {1, 1});
    CHECK(rows.to_vector() == std::vector<double>{4, 5, 6, 4, 5, 6});
    CHECK(index_select(a, -1, {1}).to_vector() == std::vector<double>{2, 5});
}

TEST_CASE("index_select: gradient with repeats along a middle axis", "[ops]") {
    Rng rng(2);
    Tensord a = grad_input({2, 4, 3}, rng);
    const std::vector<Index> idx{3, 0, 3, 3, 1};
    CHECK_GRADCHECK(gradcheck([&idx](const std::vector<Tensord>& in) { return index_select(in[0], 1, idx); }, {a}));
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return index_select(in[0], 0, {1, 1, 0}); }, {a}));
}

TEST_CASE("index_add: known values, out of place, repeats accumulate", "[ops]") {
    const Tensord a = Tensord::from_vector({3, 2}, {1, 1, 2, 2, 3, 3});
    const Tensord src = Tensord::from_vector({3, 2}, {10, 20, 30, 40, 50, 60});
    const Tensord out = index_add(a, 0, {2, 0, 2}, src);
    CHECK(out.to_vector() == std::vector<double>{31, 41, 2, 2, 63, 83});
    CHECK(a.to_vector() == std::vector<double>{1, 1, 2, 2, 3, 3});  // a itself untouched
    const Tensord along_cols = index_add(a, 1, {1}, Tensord::from_vector({3, 1}, {5, 6, 7}));
    CHECK(along_cols.to_vector() == std::vector<double>{1, 6, 2, 8, 3, 10});
}

TEST_CASE("index_add: gradient wrt a and src with repeated indices", "[ops]") {
    Rng rng(3);
    Tensord a = grad_input({2, 4, 3}, rng);
    Tensord src = grad_input({2, 5, 3}, rng);
    const std::vector<Index> idx{1, 3, 1, 0, 1};
    CHECK_GRADCHECK(gradcheck(
        [&idx](const std::vector<Tensord>& in) { return index_add(in[0], 1, idx, in[1]); }, {a, src}));
    // Only src requires grad.
    const Tensord frozen = a.detach();
    CHECK_GRADCHECK(gradcheck(
        [&idx](const std::vector<Tensord>& in) { return index_add(in[0], 1, idx, in[1]); }, {frozen, src}));
}

TEST_CASE("gather: known values and gradient", "[ops]") {
    const Tensord a = Tensord::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
    const Tensord g = gather(a, {2, 2, 0, 1, 0, 1}, 3);
    CHECK(g.shape() == Shape{2, 3});
    CHECK(g.to_vector() == std::vector<double>{3, 3, 1, 5, 4, 5});
    CHECK(gather(a, {1, 0}, 1).to_vector() == std::vector<double>{2, 4});

    Rng rng(4);
    Tensord x = grad_input({2, 2, 5}, rng);
    const std::vector<Index> idx{4, 0, 4, 1, 1, 2, 3, 3, 0, 2, 2, 1};  // 4 rows x 3, repeats within rows
    CHECK_GRADCHECK(gradcheck([&idx](const std::vector<Tensord>& in) { return gather(in[0], idx, 3); }, {x}));
}

TEST_CASE("topk: sorted descending, ties to the lower index", "[ops]") {
    const Tensord a = Tensord::from_vector({2, 4}, {1, 3, 3, 2, -1, -5, 0, -1});
    const TopK<double> two = topk(a, 2);
    CHECK(two.values.shape() == Shape{2, 2});
    CHECK(two.values.to_vector() == std::vector<double>{3, 3, 0, -1});
    CHECK(two.indices == std::vector<Index>{1, 2, 2, 0});
    const TopK<double> three = topk(a, 3);
    CHECK(three.indices == std::vector<Index>{1, 2, 3, 2, 0, 3});
    const TopK<double> all = topk(a, 4);
    CHECK(all.values.to_vector() == std::vector<double>{3, 3, 2, 1, 0, -1, -1, -5});
    const TopK<double> none = topk(a, 0);
    CHECK(none.values.shape() == Shape{2, 0});
    CHECK(none.indices.empty());

    const double nan = std::numeric_limits<double>::quiet_NaN();
    const TopK<double> with_nan = topk(Tensord::from_vector({3}, {2, nan, 5}), 2);
    CHECK(with_nan.indices == std::vector<Index>{1, 2});
}

TEST_CASE("topk: gradient of the values reaches only the picked entries", "[ops]") {
    Rng rng(5);
    Tensord a = grad_input({2, 3, 6}, rng);
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return topk(in[0], 3).values; }, {a}));

    Tensord b = Tensord::from_vector({1, 4}, {0.5, 2, -1, 1});
    b.requires_grad_();
    topk(b, 2).values.backward(Tensord::from_vector({1, 2}, {10, 20}));
    CHECK(b.grad().to_vector() == std::vector<double>{0, 10, 0, 20});
}

// Enough rows to split over threads: compared with a full stable sort of every row.
TEST_CASE("topk: many rows match a stable sort", "[ops]") {
    const Index rows = 600, n = 64, k = 5;
    Rng rng(6);
    // Values on a coarse grid so that ties are common.
    Tensord a = Tensord::randint({rows, n}, -20, 20, rng);
    const TopK<double> top = topk(a, k);
    bool all_match = true;
    for (Index r = 0; r < rows; ++r) {
        std::vector<Index> order(static_cast<std::size_t>(n));
        for (Index i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
        const double* row = a.data() + r * n;
        std::stable_sort(order.begin(), order.end(), [row](Index i, Index j) { return row[i] > row[j]; });
        for (Index j = 0; j < k; ++j) {
            all_match = all_match && top.indices[static_cast<std::size_t>(r * k + j)] == order[static_cast<std::size_t>(j)];
            all_match = all_match && top.values.data()[r * k + j] == row[order[static_cast<std::size_t>(j)]];
        }
    }
    CHECK(all_match);
}

// Backward adds into an existing gradient instead of overwriting it: two backward passes
// through fresh graphs give twice the gradient of one (up to rounding, where repeated indices
// sum several terms in a different order).
static void check_accumulates(const std::function<Tensord(const Tensord&)>& fn, Tensord x) {
    Rng rng(8);
    const Tensord seed = Tensord::randn(fn(x).shape(), rng);
    x.reset_grad();
    fn(x).backward(seed);
    const std::vector<double> once = x.grad().to_vector();
    fn(x).backward(seed);
    const std::vector<double> twice = x.grad().to_vector();
    bool doubled = true;
    for (std::size_t i = 0; i < once.size(); ++i)
        doubled = doubled && std::fabs(twice[i] - 2 * once[i]) <= 1e-12 * std::max(1.0, std::fabs(once[i]));
    CHECK(doubled);
}

TEST_CASE("indexing: gradients accumulate across backward passes", "[ops]") {
    Rng rng(7);
    Tensord x = grad_input({3, 4}, rng);
    check_accumulates([](const Tensord& t) { return embedding(t, {2, 0, 2}, {3}); }, x);
    check_accumulates([](const Tensord& t) { return index_select(t, 1, {3, 3, 1}); }, x);
    check_accumulates([](const Tensord& t) { return gather(t, {1, 0, 3}, 1); }, x);
    check_accumulates([](const Tensord& t) { return topk(t, 2).values; }, x);
    check_accumulates([](const Tensord& t) { return index_add(t, 1, {0, 0, 1, 2}, t); }, x);
    // a and src the same tensor: both gradients land in it.
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return index_add(in[0], 1, {0, 0, 1, 2}, in[0]); }, {x}));
}

TEST_CASE("indexing: bad inputs throw naming the op and the shapes", "[ops]") {
    const Tensord table = Tensord::zeros({10, 4});
    CHECK_THROWS_AS(embedding(table, {1, 12}, {2}), Error);
    CHECK_THROWS_WITH(embedding(table, {1, 12}, {2}),
                      "[embedding] id 12 at position 1 is out of range for a table of 10 rows, weight shape (10, 4)");
    CHECK_THROWS_WITH(embedding(table, {-1}, {1}), Catch::Contains("[embedding] id -1"));
    CHECK_THROWS_WITH(embedding(table, {1, 2, 3}, {2}), Catch::Contains("[embedding] 3 ids do not fill ids_shape (2,)"));
    CHECK_THROWS_WITH(embedding(Tensord::zeros({10}), {1}, {1}), Catch::Contains("[embedding] weight must be 2-D"));

    const Tensord a = Tensord::zeros({2, 3});
    CHECK_THROWS_WITH(index_select(a, 1, {0, 3}),
                      "[index_select] index 3 at position 1 is out of range for axis 1 of size 3 in shape (2, 3)");
    CHECK_THROWS_WITH(index_select(a, 2, {0}), Catch::Contains("[index_select] axis 2 is out of range"));
    CHECK_THROWS_WITH(index_add(a, 0, {0, 1}, Tensord::zeros({1, 3})),
                      Catch::Contains("[index_add] src (1, 3) should be (2, 3)"));
    CHECK_THROWS_WITH(index_add(a, 0, {2}, Tensord::zeros({1, 3})), Catch::Contains("[index_add] index 2"));
    CHECK_THROWS_WITH(gather(a, {0, 1, 2}, 2), Catch::Contains("[gather] 3 indices, but shape (2, 3) with k = 2 needs 4"));
    CHECK_THROWS_WITH(gather(a, {0, 3}, 1), Catch::Contains("[gather] index 3 at position 1"));
    CHECK_THROWS_WITH(topk(a, 4), "[topk] k = 4 is out of range for the last axis of size 3 in shape (2, 3)");
    CHECK_THROWS_WITH(topk(a, -1), Catch::Contains("[topk] k = -1"));
    CHECK_THROWS_WITH(topk(Tensord::scalar(1.0), 1), Catch::Contains("[topk]"));
}
