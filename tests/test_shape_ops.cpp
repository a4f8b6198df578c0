// Tests for ops/shape_ops.hpp: views (reshape, flatten, unsqueeze, squeeze) and copies (permute,
// transpose, concat, slice, narrow, select, patchify).
#include <catch2/catch.hpp>

#include <seemoe/ops/shape_ops.hpp>

#include "gradcheck.hpp"

using namespace seemoe;
using seemoe::testing::grad_input;
using seemoe::testing::gradcheck;

TEST_CASE("reshape: shares the value buffer both ways", "[ops]") {
    Tensord a = Tensord::arange(6);
    Tensord r = reshape(a, {2, 3});
    CHECK(r.shape() == Shape{2, 3});
    CHECK(r.storage() == a.storage());
    r.at({1, 1}) = 42;
    CHECK(a.data()[4] == 42);
    a.data()[0] = -7;
    CHECK(r.at({0, 0}) == -7);
    CHECK(std::string(r.op()) == "reshape");
}

TEST_CASE("reshape: infers one -1 and handles scalars and empty tensors", "[ops]") {
    const Tensord a = Tensord::arange(24);
    CHECK(reshape(a, {2, -1, 4}).shape() == Shape{2, 3, 4});
    CHECK(reshape(a, {-1}).shape() == Shape{24});
    CHECK(reshape(Tensord::scalar(3.0), {1, 1}).shape() == Shape{1, 1});
    CHECK(reshape(Tensord::ones({1}), {}).item() == 1.0);
    CHECK(reshape(Tensord::zeros({0, 3}), {3, 0}).shape() == Shape{3, 0});
}

TEST_CASE("reshape: gradient passes through unchanged and accumulates", "[ops]") {
    Rng rng(1);
    Tensord a = grad_input({2, 3, 2}, rng);
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return reshape(in[0], {3, -1}); }, {a}));
    // The same input reshaped twice: both gradients add up.
    a.reset_grad();
    const Tensord seed = Tensord::arange(12);
    reshape(a, {12}).backward(seed);
    reshape(a, {4, 3}).backward(Tensord::ones({4, 3}));
    for (Index i = 0; i < 12; ++i) CHECK(a.grad().data()[i] == static_cast<double>(i) + 1.0);
}

TEST_CASE("flatten, unsqueeze, squeeze: shapes, shared buffers, gradients", "[ops]") {
    Rng rng(2);
    Tensord a = grad_input({2, 3, 4, 5}, rng);
    CHECK(flatten(a).shape() == Shape{120});
    CHECK(flatten(a, 1).shape() == Shape{2, 60});
    CHECK(flatten(a, 1, 2).shape() == Shape{2, 12, 5});
    CHECK(flatten(a, -2, -1).shape() == Shape{2, 3, 20});
    CHECK(flatten(a, 2, 2).shape() == Shape{2, 3, 4, 5});
    CHECK(flatten(Tensord::scalar(2.0)).shape() == Shape{1});
    CHECK(flatten(a, 1, 2).storage() == a.storage());

    CHECK(unsqueeze(a, 0).shape() == Shape{1, 2, 3, 4, 5});
    CHECK(unsqueeze(a, 4).shape() == Shape{2, 3, 4, 5, 1});
    CHECK(unsqueeze(a, -1).shape() == Shape{2, 3, 4, 5, 1});
    CHECK(unsqueeze(a, 2).shape() == Shape{2, 3, 1, 4, 5});
    CHECK(unsqueeze(a, 2).storage() == a.storage());
    CHECK(unsqueeze(Tensord::scalar(1.0), 0).shape() == Shape{1});

    const Tensord u = unsqueeze(a, 1);
    CHECK(squeeze(u, 1).shape() == a.shape());
    CHECK(squeeze(u, -4).shape() == a.shape());
    CHECK(squeeze(u, 1).storage() == a.storage());

    Tensord small = grad_input({2, 3}, rng);
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return flatten(unsqueeze(in[0], 1)); }, {small}));
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return squeeze(unsqueeze(in[0], -1), 2); }, {small}));
}

TEST_CASE("permute and transpose: known values", "[ops]") {
    const Tensord m = Tensord::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
    const Tensord t = transpose(m, 0, 1);
    CHECK(t.shape() == Shape{3, 2});
    CHECK(t.to_vector() == std::vector<double>{1, 4, 2, 5, 3, 6});
    CHECK(t.storage() != m.storage());

    // (2, 3, 4) -> (4, 2, 3): out[k, i, j] = a[i, j, k]
    const Tensord a = Tensord::arange(24);
    const Tensord p = permute(reshape(a, {2, 3, 4}), {2, 0, 1});
    CHECK(p.shape() == Shape{4, 2, 3});
    bool all_match = true;
    for (Index i = 0; i < 2; ++i)
        for (Index j = 0; j < 3; ++j)
            for (Index k = 0; k < 4; ++k) all_match = all_match && p.at({k, i, j}) == double(i * 12 + j * 4 + k);
    CHECK(all_match);
    // Negative axes count from the end.
    CHECK(permute(reshape(a, {2, 3, 4}), {-1, 0, 1}).to_vector() == p.to_vector());
    CHECK(transpose(reshape(a, {2, 3, 4}), -1, 0).shape() == Shape{4, 3, 2});
}

TEST_CASE("permute: moving only size-1 axes keeps the order and shares the buffer", "[ops]") {
    const Tensord a = Tensord::arange(6);
    const Tensord v = reshape(a, {2, 1, 3});
    const Tensord p = permute(v, {1, 0, 2});  // (1, 2, 3)
    CHECK(p.shape() == Shape{1, 2, 3});
    CHECK(p.storage() == a.storage());
    CHECK(permute(v, {0, 1, 2}).storage() == a.storage());
    CHECK(permute(v, {2, 1, 0}).storage() != a.storage());  // a real reorder copies
}

TEST_CASE("permute and transpose: gradients", "[ops]") {
    Rng rng(3);
    Tensord a = grad_input({2, 3, 4}, rng);
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return permute(in[0], {2, 0, 1}); }, {a}));
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return permute(in[0], {1, 2, 0}); }, {a}));
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return transpose(in[0], 1, 2); }, {a}));
    Tensord b = grad_input({2, 1, 3, 2}, rng);
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return permute(in[0], {1, 3, 0, 2}); }, {b}));
}

TEST_CASE("shape ops: gradients accumulate when one input feeds several copies", "[ops]") {
    Rng rng(6);
    Tensord a = grad_input({2, 3, 4}, rng);
    CHECK_GRADCHECK(gradcheck(
        [](const std::vector<Tensord>& in) {
            const Tensord& x = in[0];
            return concat({flatten(permute(x, {2, 0, 1})), flatten(transpose(x, 0, 1)), flatten(slice(x, 1, 0, 2)),
                           flatten(narrow(x, 2, 1, 3)), flatten(select(x, 0, 1)), flatten(concat({x, x}, 1)),
                           reshape(x, {-1})},
                          0);
        },
        {a}));
}

// Large enough to split over threads: forward and backward against direct index arithmetic.
TEST_CASE("permute: a large permute matches index arithmetic, forward and backward", "[ops]") {
    const Index A = 8, B = 32, C = 24, D = 9;  // 55,296 elements
    Tensord a = Tensord::arange(A * B * C * D);
    a.requires_grad_();
    const Tensord x = reshape(a, {A, B, C, D});
    const Tensord p = permute(x, {2, 0, 3, 1});  // (C, A, D, B)
    CHECK(p.shape() == Shape{C, A, D, B});
    const Tensord seed = reshape(Tensord::arange(p.numel()), p.shape());
    p.backward(seed);
    const Tensord g = a.grad();
    bool forward_ok = true, backward_ok = true;
    for (Index i = 0; i < A; ++i)
        for (Index j = 0; j < B; ++j)
            for (Index k = 0; k < C; ++k)
                for (Index l = 0; l < D; ++l) {
                    const Index in_at = ((i * B + j) * C + k) * D + l;
                    const Index out_at = ((k * A + i) * D + l) * B + j;
                    forward_ok = forward_ok && p.data()[out_at] == double(in_at);
                    backward_ok = backward_ok && g.data()[in_at] == double(out_at);
                }
    CHECK(forward_ok);
    CHECK(backward_ok);
}

TEST_CASE("concat: known values along each axis", "[ops]") {
    const Tensord a = Tensord::from_vector({2, 2}, {1, 2, 3, 4});
    const Tensord b = Tensord::from_vector({2, 1}, {5, 6});
    const Tensord c1 = concat({a, b}, 1);
    CHECK(c1.shape() == Shape{2, 3});
    CHECK(c1.to_vector() == std::vector<double>{1, 2, 5, 3, 4, 6});
    const Tensord c0 = concat({a, transpose(b, 0, 1)}, 0);
    CHECK(c0.shape() == Shape{3, 2});
    CHECK(c0.to_vector() == std::vector<double>{1, 2, 3, 4, 5, 6});
    CHECK(concat({a, b}, -1).to_vector() == c1.to_vector());
    // An input of size 0 along the axis contributes nothing.
    CHECK(concat({a, Tensord::zeros({2, 0})}, 1).to_vector() == a.to_vector());
}

TEST_CASE("concat: gradient along a middle axis, one input frozen, one used twice", "[ops]") {
    Rng rng(4);
    Tensord a = grad_input({2, 1, 3}, rng);
    Tensord b = grad_input({2, 3, 3}, rng);
    const Tensord frozen = Tensord::randn({2, 2, 3}, rng);
    CHECK_GRADCHECK(gradcheck(
        [](const std::vector<Tensord>& in) { return concat({in[0], in[1], in[2], in[0]}, 1); },
        {a, b, frozen}));
    CHECK(concat({a, b, frozen}, 1).shape() == Shape{2, 6, 3});
    CHECK_FALSE(frozen.has_grad());
}

TEST_CASE("slice, narrow, select: known values", "[ops]") {
    const Tensord a = reshape(Tensord::arange(12), {3, 4});
    const Tensord s = slice(a, 1, 1, 3);
    CHECK(s.shape() == Shape{3, 2});
    CHECK(s.to_vector() == std::vector<double>{1, 2, 5, 6, 9, 10});
    CHECK(slice(a, 0, -2, 3).to_vector() == std::vector<double>{4, 5, 6, 7, 8, 9, 10, 11});
    CHECK(slice(a, -1, 0, -1).shape() == Shape{3, 3});
    CHECK(slice(a, 1, 2, 2).shape() == Shape{3, 0});
    CHECK(narrow(a, 1, 1, 2).to_vector() == s.to_vector());
    const Tensord row = select(a, 0, 1);
    CHECK(row.shape() == Shape{4});
    CHECK(row.to_vector() == std::vector<double>{4, 5, 6, 7});
    const Tensord col = select(a, 1, -1);
    CHECK(col.shape() == Shape{3});
    CHECK(col.to_vector() == std::vector<double>{3, 7, 11});
}

TEST_CASE("slice, narrow, select: gradients", "[ops]") {
    Rng rng(5);
    Tensord a = grad_input({2, 5, 3}, rng);
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return slice(in[0], 1, 1, 4); }, {a}));
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return slice(in[0], -1, 0, 2); }, {a}));
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return narrow(in[0], 0, 1, 1); }, {a}));
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return select(in[0], 1, 3); }, {a}));
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return select(in[0], 2, 0); }, {a}));
}

TEST_CASE("shape ops: bad inputs throw naming the op and the shapes", "[ops]") {
    const Tensord a = Tensord::zeros({2, 3, 4});
    CHECK_THROWS_AS(reshape(a, {5, 5}), Error);
    CHECK_THROWS_WITH(reshape(a, {5, 5}),
                      "[reshape] cannot reshape (2, 3, 4) (24 elements) into (5, 5) (25 elements)");
    CHECK_THROWS_WITH(reshape(a, {-1, 5}), Catch::Contains("[reshape] cannot infer the -1 in (-1, 5)"));
    CHECK_THROWS_WITH(reshape(a, {-1, -1}), Catch::Contains("[reshape] only one size may be -1"));
    CHECK_THROWS_WITH(permute(a, {0, 0, 1}),
                      "[permute] dims (0, 0, 1) are not a permutation of the 3 axes of shape (2, 3, 4)");
    CHECK_THROWS_WITH(permute(a, {1, 0}), Catch::Contains("[permute] dims (1, 0)"));
    CHECK_THROWS_WITH(permute(a, {0, 1, 3}), Catch::Contains("[permute]"));
    CHECK_THROWS_WITH(transpose(a, 0, 3), Catch::Contains("[transpose] axis 3 is out of range"));
    CHECK_THROWS_WITH(concat({a, Tensord::zeros({2, 4, 4})}, 2),
                      Catch::Contains("[concat] tensor 1 has shape (2, 4, 4) but tensor 0 has (2, 3, 4)"));
    CHECK_THROWS_WITH(concat({a, Tensord::zeros({2, 3})}, 0), Catch::Contains("[concat]"));
    CHECK_THROWS_WITH(concat(std::vector<Tensord>{}, 0), Catch::Contains("[concat] needs at least one tensor"));
    CHECK_THROWS_WITH(slice(a, 1, 2, 5),
                      "[slice] range [2, 5) is out of bounds for axis 1 of size 3 in shape (2, 3, 4)");
    CHECK_THROWS_WITH(slice(a, 1, 2, 1), Catch::Contains("[slice] range [2, 1)"));
    CHECK_THROWS_WITH(narrow(a, 2, 3, 2), Catch::Contains("[narrow] start 3 length 2"));
    CHECK_THROWS_WITH(select(a, 0, 2), Catch::Contains("[select] index 2 is out of range for axis 0 of size 2"));
    CHECK_THROWS_WITH(squeeze(a, 1), Catch::Contains("[squeeze] axis 1 has size 3, not 1, in shape (2, 3, 4)"));
    CHECK_THROWS_WITH(unsqueeze(a, 4), Catch::Contains("[unsqueeze] axis 4 is out of range"));
    CHECK_THROWS_WITH(flatten(a, 2, 1), Catch::Contains("[flatten] start_axis 2 comes after end_axis 1"));
}

TEST_CASE("patchify: known layout, gradient scatters back, bad sizes rejected", "[ops]") {
    // One 2-channel 4x4 image, patch 2: pixel (c, y, x) holds c*100 + y*10 + x.
    Tensord image = Tensord::empty({1, 2, 4, 4});
    for (Index c = 0; c < 2; ++c)
        for (Index y = 0; y < 4; ++y)
            for (Index x = 0; x < 4; ++x) image.at({0, c, y, x}) = c * 100 + y * 10 + x;
    const Tensord patches = patchify(image, 2);  // (1, 4, 8)
    REQUIRE(patches.shape() == Shape{1, 4, 8});
    // Patch 1 is grid row 0, column 1 (pixels x = 2..3, y = 0..1), in (channel, row, column) order.
    const std::vector<double> expected = {2, 3, 12, 13, 102, 103, 112, 113};
    for (Index i = 0; i < 8; ++i) CHECK(patches.at({0, 1, i}) == expected[static_cast<std::size_t>(i)]);
    // Patch 2 is grid row 1, column 0.
    CHECK(patches.at({0, 2, 0}) == 20);
    CHECK(patches.at({0, 2, 7}) == 131);
    CHECK(std::string(patches.op()) == "patchify");

    Rng rng(11);
    Tensord images = grad_input({2, 3, 6, 6}, rng);
    CHECK_GRADCHECK(gradcheck([](const std::vector<Tensord>& in) { return patchify(in[0], 3); }, {images}));

    CHECK_THROWS_WITH(patchify(Tensord::zeros({1, 3, 6, 4}), 2), Catch::Contains("[patchify]"));
    CHECK_THROWS_WITH(patchify(Tensord::zeros({1, 3, 6, 6}), 4), Catch::Contains("not a multiple"));
    CHECK_THROWS_WITH(patchify(Tensord::zeros({3, 6, 6}), 2), Catch::Contains("[patchify]"));
}
